#!/usr/bin/perl

# Replies that go wrong: a malformed usage object, a stream with an error
# event in the middle, a backend that closes in the middle of an event,
# a gzip reply, usage bigger than the copy buffer, replies that arrive a
# byte at a time.  No crash, usage counted as documented, logged at warn
# (not alert).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        . "Connection: close\r\n\r\n";
my $json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
         . "Connection: close\r\n\r\n";
my $delta = 'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}'
          . "\n\n";

my %reply = (
    '/badusage' => $json . '{"choices":[],"usage":{"prompt_tokens":,}}',
    '/noprompt' => $json . '{"usage":{"completion_tokens":3}}',
    '/error' => $sse . $delta x 3
        . 'data: {"error":{"code":"500","message":"boom"}}' . "\n\n",
    '/cut' => $sse . $delta x 2 . 'data: {"choices":[{"index":0,"del',
    '/gzip' => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        . "Content-Encoding: gzip\r\nConnection: close\r\n\r\n"
        . "\x1f\x8b\x08\x00garbage",
    '/huge' => $json . '{"usage":{"prompt_tokens":5,"completion_tokens":2,'
        . '"x":"' . ('y' x 3000) . '"}}',
    # braces, quotes and backslashes inside strings, before and inside
    # the usage object, sent a byte at a time: every read ends somewhere
    # else in the scanner's states
    '/trickle' => $json . '{"id":"x\\"}{[","choices":[{"message":'
        . '{"content":"a \\\\\\" b {"}}],"usage":{"prompt_tokens":7,'
        . '"note":"}\\"{\\\\","completion_tokens":3,"total_tokens":10,'
        . '"prompt_tokens_details":{"cached_tokens":2}}}',
    '/tricklesse' => $sse . $delta x 2
        . 'data: {"choices":[],"usage":{"prompt_tokens":9,'
        . '"completion_tokens":2,"total_tokens":11}}' . "\n\n"
        . "data: [DONE]\n\n",
    '/crlf' => $sse . "data: {\"choices\":[]}\r\n\r\n"
        . "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,"
        . "\"completion_tokens\":4,\"total_tokens\":15}}\r\n\r\n"
        . "data: [DONE]\r\n\r\n",
);

# a backend that answers each path with its canned bytes, then closes
my $bport = $t->start_canned(\%reply, slow => qr/^\/trickle/);

# usage objects of a stream near the copy's bound, read where they are
# (one write) or copied across reads of 300 bytes
my $usage = sub {
    my ($prompt, $pad) = @_;
    return 'data: {"choices":[],"usage":{"prompt_tokens":' . $prompt
        . ',"completion_tokens":3,"total_tokens":' . ($prompt + 3)
        . ',"note":"' . ('z' x $pad) . '"}}' . "\n\n" . "data: [DONE]\n\n";
};
my %big = (
    '/bigfits' => $sse . $delta x 3 . $usage->(13, 900),
    '/bighuge' => $sse . $delta x 3 . $usage->(14, 2000),
    '/piecesfits' => $sse . $delta x 3 . $usage->(15, 900),
    '/pieceshuge' => $sse . $delta x 3 . $usage->(16, 2000),
);
my $pport = $t->start_canned(\%big, slow => qr/^\/pieces/,
                             piece => sub { 300 }, pause => 0.01);

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format u '\$request_uri|\$status|\$llm_usage_source|'
                 '\$llm_prompt_tokens|\$llm_completion_tokens';
    access_log $dir/u.log u;

    upstream pool {
        llm_balance zone=llm;
        server 127.0.0.1:$bport;
    }

    upstream big {
        llm_balance zone=llm;
        server 127.0.0.1:$pport;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            proxy_pass http://pool;
        }

        # unbuffered: each read reaches the filters as it comes
        location /trickle {
            llm_route pool;
            proxy_pass http://pool;
            proxy_buffering off;
        }

        location /big {
            llm_route big;
            proxy_pass http://big;
        }

        location /pieces {
            llm_route big;
            proxy_pass http://big;
            proxy_buffering off;
        }

        location = /llm/status {
            llm_status;
        }
    }
END

my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 5 });
for my $path (sort(keys %reply), sort(keys %big)) {
    my ($st) = http_post($listen, $path, $body);
    ok($st == 200 || $st == 502, "$path answered ($st)");
}

my ($st, $h, $raw) = http_get($listen, '/llm/status');
is($st, 200, 'status still answers');

$t->stop_nginx;
my %log = map { my @f = split /\|/; ($f[0] => \@f) }
          split /\n/, $t->read_file('u.log');

is($log{'/badusage'}[2], '-', 'malformed usage: no usage');
is($log{'/noprompt'}[2], '-', 'usage without prompt tokens: no usage');
is($log{'/error'}[2], 'counted', 'mid-stream error: counted from deltas');
is($log{'/error'}[4], 3, 'mid-stream error: the three deltas');
is($log{'/cut'}[2], 'counted', 'cut mid-event: counted');
is($log{'/cut'}[4], 2, 'cut mid-event: the two whole deltas');
is($log{'/gzip'}[2], '-', 'gzip: not scanned');
is($log{'/huge'}[2], '-', 'usage longer than the copy buffer: ignored');
is($log{'/trickle'}[2], 'reported', 'a byte at a time: reported');
is($log{'/trickle'}[3], 7, 'a byte at a time: prompt tokens');
is($log{'/trickle'}[4], 3, 'a byte at a time: completion tokens');
is($log{'/tricklesse'}[2], 'reported', 'a stream a byte at a time: reported');
is($log{'/tricklesse'}[3], 9, 'a stream a byte at a time: prompt tokens');
is($log{'/tricklesse'}[4], 2, 'a stream a byte at a time: completion');
is($log{'/crlf'}[2], 'reported', 'CRLF events: reported');
is($log{'/crlf'}[3], 11, 'CRLF events: prompt tokens');
is($log{'/crlf'}[4], 4, 'CRLF events: completion tokens');
is($log{'/bigfits'}[2], 'reported', 'usage of 1000 bytes: reported');
is($log{'/bigfits'}[3], 13, 'usage of 1000 bytes: prompt tokens');
is($log{'/bighuge'}[2], 'counted', 'usage past the bound: from deltas');
is($log{'/bighuge'}[4], 3, 'usage past the bound: the three deltas');
is($log{'/piecesfits'}[2], 'reported',
   'usage of 1000 bytes across reads: reported');
is($log{'/piecesfits'}[3], 15,
   'usage of 1000 bytes across reads: prompt tokens');
is($log{'/pieceshuge'}[2], 'counted',
   'usage past the bound across reads: from deltas');
is($log{'/pieceshuge'}[4], 3,
   'usage past the bound across reads: the three deltas');

my $err = $t->error_log;
my $over = () = $err =~ /\[warn\].*usage object longer than 1024 bytes/g;
is($over, 3, 'each usage past the bound logged once');
like($err, qr/\[warn\].*llm: malformed usage object in the reply/,
     'malformed usage logged at warn');
like($err, qr/\[warn\].*usage object without prompt or input tokens/,
     'usage without prompt logged at warn');
like($err, qr/\[warn\].*usage object longer than 1024 bytes ignored/,
     'oversized usage logged at warn');
like($err, qr/\[info\].*Content-Encoding "gzip" not scanned/,
     'gzip logged at info');

$t->done;
