#!/usr/bin/perl

# llm_stream_usage: a stream that asks no usage gets include_usage
# upstream, the usage is accounted as reported, and the client's stream
# is byte for byte what the backend sends a client that did not ask:
# the usage event and every "usage": null are taken out as events pass.
# Not for old api-versions, not when the client sent stream_options, not
# for requests that do not stream.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my $sp = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'd', port => $sp, host => 'd.example', api_key => 'k',
      deployment => 'gpt-4o', tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 500, completion_tokens => 25, fixed_ids => 1 } ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format usage '\$llm_completion_tokens|\$llm_prompt_tokens|'
                     '\$llm_usage_source|\$request_uri';
    access_log $dir/usage.log usage;

    upstream d {
        llm_balance zone=llm;
        llm_backend d http://d.example deployment=gpt-4o tpm=1m
                    key_file=$dir/k.key address=127.0.0.1:$sp;
    }

    server {
        listen 127.0.0.1:$listen;

        location /inject/ {
            llm_route d;
            llm_stream_usage on;
            rewrite ^/inject(/.*)\$ \$1 break;
            proxy_pass http://d;
            proxy_buffering off;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /buffered/ {
            llm_route d;
            llm_stream_usage on;
            rewrite ^/buffered(/.*)\$ \$1 break;
            proxy_pass http://d;
            proxy_buffer_size 1k;
            proxy_buffers 8 512;
            proxy_busy_buffers_size 1k;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /off/ {
            llm_route d;
            rewrite ^/off(/.*)\$ \$1 break;
            proxy_pass http://d;
            proxy_buffering off;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
sub last_log {
    return $t->next_log('usage.log', qw(completion prompt source));
}

sub include_usage { $t->sim_stats->{deployments}{d}{include_usage} }

sub direct {
    my ($uri, $body) = @_;
    my ($st, $h, $b) = LLMTest::post_host($sp, 'd.example', $uri, $body, 'api-key' => 'k');
    return $b;
}

sub through {
    my ($uri, $body, %hdr) = @_;
    my ($st, $h, $b) = http_post($listen, $uri, $body, %hdr);
    return ($st, $b, $h);
}

my $stream = '{"messages":[{"role":"user","content":"count to twenty"}],'
           . '"max_tokens":40,"stream":true}';

my $want = direct($chat, $stream);
like($want, qr/^data: /, 'the simulator streams');
unlike($want, qr/"usage"/, 'a stream that asks no usage has none');

# injected: the backend was asked, the client sees what it would have
my $before = include_usage();
my ($st, $got) = through("/inject$chat", $stream);
is($st, 200, 'injected stream answered');
is(include_usage(), $before + 1, 'the backend got include_usage');
is($got, $want, 'the client stream is byte for byte the direct one');
my $l = last_log();
is($l->{source}, 'reported', 'usage reported, not counted');
is($l->{completion}, 25, 'completion tokens from the usage event');

# without the switch: not asked, counted from the deltas
$before = include_usage();
($st, $got) = through("/off$chat", $stream);
is(include_usage(), $before, 'llm_stream_usage off: not injected');
is($got, $want, 'and the stream is the same');
is(last_log()->{source}, 'counted', 'usage counted from the deltas');

# proxy_buffering on, small buffers: the events cross buffer edges
$before = include_usage();
($st, $got) = through("/buffered$chat", $stream);
is(include_usage(), $before + 1, 'buffered: injected');
is($got, $want, 'buffered: byte for byte the direct stream');
is(last_log()->{source}, 'reported', 'buffered: usage reported');

# a client that asks usage itself gets it, once
my $asks = '{"messages":[{"role":"user","content":"count to twenty"}],'
         . '"max_tokens":40,"stream":true,'
         . '"stream_options":{"include_usage":true}}';
$want = direct($chat, $asks);
($st, $got) = through("/inject$chat", $asks);
is($got, $want, 'client include_usage: its stream untouched');
is(scalar(() = $got =~ /"completion_tokens"/g), 1, 'one usage event');

# include_usage false: the client said no
my $no = $asks =~ s/"include_usage":true/"include_usage":false/r;
$before = include_usage();
($st, $got) = through("/inject$chat", $no);
is(include_usage(), $before, 'include_usage false: left as it is');
unlike($got, qr/"usage"/, 'and no usage reaches the client');

# api-versions before 2024-09-01 refuse stream_options
(my $old = $chat) =~ s/2024-10-21/2024-06-01/;
$before = include_usage();
($st, $got) = through("/inject$old", $stream);
is($st, 200, 'old api-version answered');
is(include_usage(), $before, 'api-version 2024-06-01: not injected');
(my $preview = $chat) =~ s/2024-10-21/2024-09-01-preview/;
$want = direct($preview, $stream);
($st, $got) = through("/inject$preview", $stream);
is($got, $want, '2024-09-01-preview: injected, stream unchanged');

# not streaming: untouched
$before = include_usage();
my $json = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}';
($st, $got) = through("/inject$chat", $json);
is($st, 200, 'JSON reply');
is(include_usage(), $before, 'no stream: nothing added');
like($got, qr/"usage":\{/, 'JSON usage passes');

# the v1 API: "model" replaced by the deployment, stream_options added
my $v1 = '{"model":"my-model","messages":[{"role":"user","content":'
       . '"count to twenty"}],"max_tokens":40,"stream":true}';
(my $v1direct = $v1) =~ s/my-model/gpt-4o/;
$want = direct('/openai/v1/chat/completions', $v1direct);
$before = include_usage();
($st, $got) = through('/inject/openai/v1/chat/completions', $v1);
is($st, 200, 'v1 stream answered');
is(include_usage(), $before + 1, 'v1: injected with the model spliced');
is($got, $want, 'v1: byte for byte the direct stream');

# a chunked client body
my @chunks = unpack '(a17)*', $stream;
my $raw = "POST /inject$chat HTTP/1.1\r\nHost: localhost\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . join('', map { sprintf("%x\r\n%s\r\n", length, $_) } @chunks)
        . "0\r\n\r\n";
$want = direct($chat, $stream);
$before = include_usage();
($st, my $h, $got) = http_request($listen, $raw);
is($st, 200, 'chunked body answered');
is(include_usage(), $before + 1, 'chunked body: injected');
is($got, $want, 'chunked body: stream unchanged');

$t->done;
