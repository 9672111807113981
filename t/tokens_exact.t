#!/usr/bin/perl

# Exact prompt counts in nginx: llm_tokenizer loads the tiktoken
# vocabularies, the encoding follows the model (or llm_encoding), chat
# framing follows OpenAI's recipe (the cookbook example: 124 tokens with
# o200k_base, 129 with cl100k_base), llm_count estimate guesses, a
# ptu backend is charged the exact count and a Standard one Azure's
# character estimate.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $top = $t->top;
my $enc = vocab_dir();
my $count = "$top/.build/llm-count";

plan skip_all => "no vocabularies in $enc (run build/tokenizer.sh)"
    unless -f "$enc/o200k_base.json" && -x $count;

my $echo = $t->start_echo;
my $ctl = free_port();
my %p = map { $_ => free_port() } qw(ptu std);
$t->start_sim({ control_port => $ctl, deployments => [ map {
    { name => $_, port => $p{$_}, host => "$_.example", api_key => 'k',
      deployment => 'd', tpm => 100000, ttft_ms => [300, 300],
      tokens_per_s => 5000, completion_tokens => 1 } } qw(ptu std) ] });
open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_tokenizer o200k_base $enc/o200k_base.json;
    llm_tokenizer cl100k_base $enc/cl100k_base.json;
    llm_zone llm:1m;

    upstream ptu {
        llm_balance zone=llm;
        llm_backend ptu http://ptu.example tpm=2000 rpm=1000 ptu
                    key_file=$dir/k.key address=127.0.0.1:$p{ptu};
    }

    upstream std {
        llm_balance zone=llm;
        llm_backend std http://std.example tpm=2000 rpm=1000
                    key_file=$dir/k.key address=127.0.0.1:$p{std};
    }

    server {
        listen 127.0.0.1:$listen;
        add_header X-Prompt "[\$llm_prompt_tokens]" always;
        add_header X-Estimate \$llm_tokens_estimate always;

        location /auto/ {
            llm_route;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /cl100k/ {
            llm_route;
            llm_encoding cl100k_base;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /nocache/ {
            llm_route;
            llm_count_cache off;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /estimate/ {
            llm_route;
            llm_count estimate;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /ptu/ {
            llm_route ptu;
            rewrite ^/ptu(/.*)\$ \$1 break;
            proxy_pass http://ptu;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /std/ {
            llm_route std;
            rewrite ^/std(/.*)\$ \$1 break;
            proxy_pass http://std;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }
    }
END

sub slurp {
    open my $f, '<', $_[0] or die "$_[0]: $!";
    local $/;
    return <$f>;
}

sub prompt_tokens {
    my ($uri, $body) = @_;
    my ($st, $h) = http_post($listen, $uri, $body);
    is($st, 200, "$uri answered");
    my ($n) = ($h->{'x-prompt'} // '') =~ /^\[(\d*)\]$/;
    return ($n, $h);
}

my $cookbook = json_decode(slurp("$top/t/tokenizer/chat/cookbook.json"));
my %model = (o200k_base => 'gpt-4o', cl100k_base => 'gpt-4');

$cookbook->{model} = 'gpt-4o';
my ($n, $h) = prompt_tokens('/auto/x', json_encode($cookbook));
is($n, 124, 'gpt-4o: the cookbook example counts 124 (o200k_base)');
is($h->{'x-estimate'}, 124 + 640, '$llm_tokens_estimate: exact + reserve');

# the repeat cache: the same texts again, a hit; without it, the same
my ($again) = prompt_tokens('/auto/x', json_encode($cookbook));
is($again, 124, 'the same body again: 124 (repeat cache)');
($again) = prompt_tokens('/nocache/x', json_encode($cookbook));
is($again, 124, 'llm_count_cache off: 124');

$cookbook->{model} = 'gpt-4-0613';
($n) = prompt_tokens('/auto/x', json_encode($cookbook));
is($n, 129, 'gpt-4: 129 (cl100k_base)');

$cookbook->{model} = 'gpt-4o';
($n) = prompt_tokens('/cl100k/x', json_encode($cookbook));
is($n, 129, 'llm_encoding cl100k_base overrides the model');

($n, $h) = prompt_tokens('/estimate/x', json_encode($cookbook));
ok($n =~ /^\d+$/ && abs($n - 124) <= 124 / 4,
   "llm_count estimate: a guess by script, $n, within 25 % of 124");
isnt($n, 124, 'llm_count estimate: not the tokenizer\'s count');

# the other fixtures equal llm-count (which equals tiktoken, see
# tokenizer_chat.t) for both encodings
for my $f (sort glob "$top/t/tokenizer/chat/*.json") {
    my $j = json_decode(slurp($f));
    for my $e (sort keys %model) {
        $j->{model} = $model{$e};
        my $want = `$count --encoding $e --vocab $enc/$e.json --chat < $f`;
        chomp $want;

        # llm-count counts text only; remote images cost 765, low 85
        for my $m (@{ $j->{messages} }) {
            next unless ref $m->{content} eq 'ARRAY';
            for my $part (@{ $m->{content} }) {
                next unless $part->{image_url};
                $want += ($part->{image_url}{detail} // '') eq 'low'
                         ? 85 : 765;
            }
        }
        ($n) = prompt_tokens('/auto/x', json_encode($j));
        my $name = $f =~ s{.*/}{}r;
        is($n, $want, "$name, $e: as llm-count --chat");
    }
}

# Japanese: Azure's Standard limiter charges ~characters / 4, a PTU the
# real tokens (about 0.8 per character with o200k_base)
my $ja = "\x{65e5}\x{672c}\x{306e}\x{56db}\x{5b63}\x{306b}\x{3064}\x{3044}"
       . "\x{3066}\x{8aac}\x{660e}\x{3057}\x{3066}\x{304f}\x{3060}\x{3055}"
       . "\x{3044}\x{3002}";
my $body = json_encode({ model => 'gpt-4o', max_tokens => 1,
                         messages => [ { role => 'user',
                                         content => $ja x 100 } ] });
($n, $h) = prompt_tokens('/auto/x', $body);
my $chars = 18 * 100 + 4;
my $azure = int(($chars + 3) / 4) + 6;
cmp_ok($n, '>', 1.5 * $azure,
       "Japanese: $n exact tokens, Azure's estimate $azure");

# 2,000 TPM: a ptu backend admits what the exact count allows, a
# Standard one what Azure's character estimate allows
my $uri = '/openai/deployments/d/chat/completions?api-version=2024-10-21';
my $want_ptu = int(2000 / ($n + 1));
my $want_std = int(2000 / ($azure + 1));
ok($want_std > $want_ptu, "the two rules differ: $want_ptu vs $want_std");

# all at once, before any reply could correct a ptu charge to the usage
for my $case (['ptu', $want_ptu], ['std', $want_std]) {
    my ($pool, $want) = @$case;
    my @st = sort map { $_->[0] }
             http_parallel($listen, (post_raw("/$pool$uri", $body))
                                    x ($want + 1));
    is_deeply(\@st, [(200) x $want, 429],
              "$pool: $want admitted, then 429");
}

# tools by OpenAI's published recipe: the cookbook's weather example
# counts 101 prompt tokens for gpt-4o and 105 for gpt-4 (both measured
# against the API in the cookbook)
my $tools = [ { type => 'function', function => {
    name => 'get_current_weather',
    description => 'Get the current weather in a given location',
    parameters => { type => 'object', required => ['location'],
        properties => {
            location => { type => 'string',
                description => 'The city and state, e.g. San Francisco, CA' },
            unit => { type => 'string',
                description => 'The unit of temperature to return',
                enum => ['celsius', 'fahrenheit'] } } } } } ];
my $weather = [
    { role => 'system', content => 'You are a helpful assistant that can '
                                   . 'answer to questions about the weather.' },
    { role => 'user', content => "What's the weather like in San Francisco?" },
];
for my $case (['gpt-4o', 101], ['gpt-4', 105]) {
    my ($m, $want) = @$case;
    ($n) = prompt_tokens('/auto/x', json_encode({ model => $m,
        messages => $weather, tools => $tools }));
    is($n, $want, "tools: the cookbook's example counts $want for $m");
}

# images by the tile rule, sizes read from the data URL's header
use MIME::Base64 qw(encode_base64);
my %img = (
    png => sub { "\x89PNG\r\n\x1a\n" . pack('N', 13) . 'IHDR'
                 . pack('NN', @_) . "\x08\x02\0\0\0" . 'crc!' . ('x' x 64) },
    gif => sub { 'GIF89a' . pack('vv', @_) . "\0\0\0" . ('x' x 64) },
    jpeg => sub { "\xff\xd8\xff\xe0" . pack('n', 16) . ('J' x 14)
                  . "\xff\xc0" . pack('n', 17) . "\x08"
                  . pack('nn', $_[1], $_[0]) . "\x03" . ('x' x 64) },
    webp => sub { 'RIFF' . pack('V', 30) . 'WEBPVP8X' . pack('V', 10)
                  . "\0\0\0\0" . substr(pack('V', $_[0] - 1), 0, 3)
                  . substr(pack('V', $_[1] - 1), 0, 3) . ('x' x 64) },
);

sub with_image {
    my ($model, $url, $detail) = @_;
    my $part = { type => 'image_url',
                 image_url => { url => $url, $detail ? (detail => $detail)
                                                     : () } };
    my $b = json_encode({ model => $model, messages => [ { role => 'user',
        content => [ { type => 'text', text => 'what is this?' }, $part ] } ] });
    my ($n) = prompt_tokens('/auto/x', $b);
    return $n;
}

my $plain = with_image('gpt-4o', 'data:image/png;base64,');
my @cases = (
    # format, w, h, detail, model, tokens (docs/azure.md section 7)
    ['png', 1024, 1024, 'high', 'gpt-4o', 85 + 170 * 4],
    ['png', 1024, 1024, 'low', 'gpt-4o', 85],
    ['png', 2048, 4096, 'high', 'gpt-4o', 85 + 170 * 6],
    ['gif', 512, 512, 'auto', 'gpt-4o', 85 + 170],
    ['jpeg', 3000, 1000, undef, 'gpt-4o', 85 + 170 * 8],
    ['webp', 800, 600, 'high', 'gpt-4o', 85 + 170 * 4],
    ['png', 1024, 1024, 'low', 'gpt-4o-mini', 2833],
    ['png', 512, 512, 'high', 'gpt-4o-mini', 2833 + 5667],
);
for my $c (@cases) {
    my ($fmt, $w, $h, $detail, $model, $want) = @$c;
    my $url = "data:image/$fmt;base64,"
            . encode_base64($img{$fmt}->($w, $h), '');
    my $base = with_image($model, 'data:image/png;base64,');
    my $n = with_image($model, $url, $detail);
    is($n - $base + 765, $want, "$fmt ${w}x$h " . ($detail // 'no detail')
                                . " for $model: $want tokens");
}
my $remote = with_image('gpt-4o', 'https://example.com/cat.png', 'high');
is($remote - $plain, 0, 'a remote image counts llm_image_tokens (765)');

# bad vocabularies are refused with the reason
my ($rc, $out) = $t->test_conf("    llm_tokenizer o200k_base $dir/none.json;");
like($out, qr/cannot load the "o200k_base" vocabulary from "\Q$dir\E\/none.json": /,
     'missing vocabulary: [emerg] with the reason');
($rc, $out) = $t->test_conf(
    "    llm_tokenizer o200k_base $enc/cl100k_base.json;");
like($out, qr/holds the cl100k_base vocabulary, not o200k_base/,
     'wrong vocabulary for the name');

$t->allow_log(qr/\[emerg\].*vocabulary/);
$t->done;
