#!/usr/bin/perl

# The module's JSON reader builds cJSON's tree itself and leaves to cJSON
# what it declines.  json-diff compares the two on the corpus (every
# "read-" file read, every "declined-" file declined, no tree differs);
# through nginx, one conversation spelt five ways, some read by the
# reader and some by cJSON, counts the same as llm-count (cJSON).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $top = $t->top;
my $enc = vocab_dir();
my $count = "$top/.build/llm-count";
my $diff = "$top/.build/json-diff";

plan skip_all => "no json-diff or vocabularies (build/json.sh, "
    . "build/tokenizer.sh)"
    unless -x $diff && -x $count && -f "$enc/o200k_base.json";

my @files = sort glob "$top/t/json/corpus/*";
my %said = map { (split ' ', $_, 2)[1] => (split ' ', $_)[0] }
    split /\n/, `"$diff" @files`;
is($? >> 8, 0, 'json-diff: no tree differs from cJSON\'s');

for my $f (@files) {
    my ($name) = $f =~ m{([^/]+)$};
    my ($want) = $name =~ /^(read|declined)-/;
    is($said{$f} // '', $want, "$name: $want");
}

my $echo = $t->start_echo;
my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_tokenizer o200k_base $enc/o200k_base.json;

    server {
        listen 127.0.0.1:$listen;
        add_header X-Prompt "[\$llm_prompt_tokens]" always;

        location / {
            llm_route;
            llm_count_cache off;
            proxy_pass http://127.0.0.1:$echo;
        }
    }
END

my $msgs = [
    { role => 'system', content => "You answer in Japanese.\tBriefly." },
    { role => 'user', name => 'taro',
      content => "\x{65e5}\x{672c}\x{306e}\x{9996}\x{90fd}\x{306f}? "
               . "\"quoted\" \\ back\nslash \x{1f600}" },
];
my $body = { model => 'gpt-4o', messages => $msgs, max_tokens => 10,
             temperature => 0.7 };

my $compact = JSON::PP->new->utf8->canonical->encode($body);
my $ascii = JSON::PP->new->ascii->canonical->encode($body);
my $pretty = JSON::PP->new->utf8->canonical->pretty->encode($body);

# cJSON's own readings: a byte order mark; a number JSON does not allow
(my $bom = "\xef\xbb\xbf$ascii");
(my $zero = $ascii) =~ s/"max_tokens":10/"max_tokens":010/ or die;

open my $p, '|-', "\"$count\" --encoding o200k_base --chat >$t->{dir}/n"
    or die;
print $p $compact;
close $p;
my ($want) = $t->read_file('n') =~ /(\d+)/;
ok($want && $want > 20, "llm-count (cJSON): $want tokens");

for my $case ([compact => $compact], [ascii => $ascii],
              [pretty => $pretty], [bom => $bom], [zero => $zero])
{
    my ($name, $text) = @$case;
    my ($st, $h) = http_post($listen, '/chat/completions', $text);
    is($st, 200, "$name: 200");
    is($h->{'x-prompt'}, "[$want]", "$name: $want tokens");
}

my ($st) = http_post($listen, '/chat/completions', substr($ascii, 0, 40));
is($st, 400, 'a truncated body: 400');

$t->done;
