#!/usr/bin/perl

# Usage from replies as they pass: JSON (chat, embeddings, Responses
# API) and SSE streams with and without include_usage, a stream cut
# short; the access log variables equal the simulator's ground truth;
# a stream is not delayed; a ptu backend's charge is corrected to the
# real usage while a Standard one keeps Azure's arrival charge.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use IO::Select;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(std ptu slow);
my @deployments = map {
    { name => $_, port => $p{$_}, host => "$_.example", api_key => 'k',
      deployment => 'gpt-4o', tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 2000, completion_tokens => 7 }
} qw(std ptu);
push @deployments, { name => 'slow', port => $p{slow},
    host => 'slow.example', api_key => 'k', deployment => 'gpt-4o',
    tpm => 1000000, ttft_ms => [300, 300], tokens_per_s => 20,
    completion_tokens => 3 };
$t->start_sim({ control_port => $ctl, deployments => \@deployments });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $locations = join '', map { <<"END" } qw(std ptu slow);
        location /$_/ {
            llm_route $_;
            rewrite ^/$_(/.*)\$ \$1 break;
            proxy_pass http://$_;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }
END

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format usage '\$llm_backend|\$llm_prompt_tokens|'
                     '\$llm_completion_tokens|\$llm_total_tokens|'
                     '\$llm_cached_tokens|\$llm_reasoning_tokens|'
                     '\$llm_usage_source|\$llm_ttft_ms|\$request_uri';
    access_log $dir/usage.log usage;

    upstream std {
        llm_balance zone=llm;
        llm_backend std http://std.example tpm=2000 rpm=1000
                    key_file=$dir/k.key address=127.0.0.1:$p{std};
    }

    upstream ptu {
        llm_balance zone=llm;
        llm_backend ptu http://ptu.example tpm=2000 rpm=1000 ptu
                    key_file=$dir/k.key address=127.0.0.1:$p{ptu};
    }

    upstream slow {
        llm_balance zone=llm;
        llm_backend slow http://slow.example tpm=1m
                    key_file=$dir/k.key address=127.0.0.1:$p{slow};
    }

    server {
        listen 127.0.0.1:$listen;
$locations
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
# the access log line of the last request
sub last_log {
    return $t->next_log('usage.log', qw(backend prompt completion total
                                         cached reasoning source ttft));
}

sub truth {
    my ($name, $before) = @_;
    my $s = $t->sim_stats->{deployments}{$name};
    return { prompt => $s->{prompt_tokens} - ($before->{prompt} // 0),
             completion => $s->{completion_tokens}
                           - ($before->{completion} // 0),
             all => { prompt => $s->{prompt_tokens},
                      completion => $s->{completion_tokens} } };
}

my $base = {};
my @cases = (
    [ 'chat JSON', $chat, { messages => [ { role => 'user',
          content => 'hello there, how are you?' } ], max_tokens => 50 },
      'reported' ],
    [ 'chat stream with include_usage', $chat,
      { messages => [ { role => 'user', content => 'stream me' } ],
        max_tokens => 50, stream => JSON::PP::true(),
        stream_options => { include_usage => JSON::PP::true() } },
      'reported' ],
    [ 'chat stream without usage', $chat,
      { messages => [ { role => 'user', content => 'count me' } ],
        max_tokens => 50, stream => JSON::PP::true() }, 'counted' ],
    [ 'embeddings', '/openai/deployments/gpt-4o/embeddings'
                    . '?api-version=2024-10-21',
      { input => [ 'one text', 'another text' ] }, 'reported' ],
    [ 'Responses API', '/openai/v1/responses',
      { model => 'gpt-4o', input => 'hello', max_output_tokens => 40 },
      'reported' ],
);

for my $c (@cases) {
    my ($name, $uri, $body, $source) = @$c;
    my ($st, $h, $raw) = http_post($listen, "/std$uri", json_encode($body));
    is($st, 200, "$name: 200") or diag $raw;
    my $log = last_log();
    my $truth = truth('std', $base);
    $base = $truth->{all};
    is($log->{source}, $source, "$name: usage $source");
    is($log->{completion}, $truth->{completion},
       "$name: completion tokens as the backend's ground truth");
    if ($source eq 'reported') {
        is($log->{prompt}, $truth->{prompt},
           "$name: prompt tokens as the backend's ground truth");
        is($log->{total}, $truth->{prompt} + $truth->{completion},
           "$name: total");
    }
    like($log->{ttft}, qr/^\d+$/, "$name: \$llm_ttft_ms");
}

# a stream cut half way: counted from what passed, no crash
my ($st, $h, $raw) = http_post($listen, "/std$chat",
    json_encode({ messages => [ { role => 'user', content => 'cut' } ],
                  max_tokens => 50, stream => JSON::PP::true() }),
    'x-sim-fault' => 'cut');
my $log = last_log();
is($log->{source}, 'counted', 'cut stream: counted');
cmp_ok($log->{completion}, '<', 7, 'cut stream: fewer tokens than a full one');

###########################################################################
# a stream is not delayed: first bytes through nginx as soon as direct

sub first_event_ms {
    my ($port, $uri) = @_;
    my $body = json_encode({ messages => [ { role => 'user',
                                             content => 'hi' } ],
                             max_tokens => 3, stream => JSON::PP::true() });
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die;
    my $t0 = time;
    print $s "POST $uri HTTP/1.1\r\nHost: slow.example\r\napi-key: k\r\n"
           . "Content-Type: application/json\r\nConnection: close\r\n"
           . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(5)) {
        sysread($s, $buf, 65536, length $buf) or last;
        # the first delta with text
        return (time - $t0) * 1000 if $buf =~ /"content":"[^"]/;
    }
    return 99999;
}

my (@direct, @nginx);
for (1 .. 3) {
    push @direct, first_event_ms($p{slow}, $chat);
    push @nginx, first_event_ms($listen, "/slow$chat");
}
@direct = sort { $a <=> $b } @direct;
@nginx = sort { $a <=> $b } @nginx;
diag sprintf "first token: direct %.1f ms, through nginx %.1f ms (medians)",
     $direct[1], $nginx[1];
cmp_ok($nginx[1] - $direct[1], '<', 20, 'the stream is not held back');

###########################################################################
# 2,000 TPM, requests of ~1,510 tokens that use ~20: a ptu backend is
# corrected to the usage, a Standard one keeps the arrival charge

my $big = json_encode({ messages => [ { role => 'user', content => 'x' } ],
                        max_tokens => 1500 });
my @ptu = map { (http_post($listen, "/ptu$chat", $big))[0] } 1 .. 2;
is_deeply(\@ptu, [200, 200], 'ptu: corrected to the usage, room again');
my @std = map { (http_post($listen, "/std$chat", $big))[0] } 1 .. 2;
is_deeply(\@std, [200, 429], 'Standard: the arrival charge stays');

$t->done;
