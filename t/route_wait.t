#!/usr/bin/perl

# llm_wait: a request without room waits, first come first served, when
# room is expected within the time allowed, instead of drawing a 429;
# one that would wait too long gets its 429 at once; a full queue too; a
# client that leaves while waiting leaves nothing behind.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my $sp = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'd', port => $sp, host => 'd.example', api_key => 'k',
      deployment => 'gpt-4o', tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 5000, completion_tokens => 2 } ] });
open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format w '\$msec \$request_uri \$status';
    access_log $dir/wait.log w;

    upstream pool {
        # a 3 s window: room comes back 3 s after a charge
        llm_balance zone=llm window=3s;
        llm_backend d http://d.example tpm=2000 rpm=6000
                    key_file=$dir/k.key address=127.0.0.1:$sp;
    }

    server {
        listen 127.0.0.1:$listen;

        location /wait/ {
            llm_route pool;
            llm_wait 5s queue=3;
            rewrite ^/wait(/.*)\$ \$1 break;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /short/ {
            llm_route pool;
            llm_wait 1s;
            rewrite ^/short(/.*)\$ \$1 break;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
sub body { json_encode({ messages => [ { role => 'user',
                                         content => "req $_[0]" } ],
                         max_tokens => 985 }) }

# two requests fill the 2,000 TPM window
my @st = map { (http_post($listen, "/wait$chat?n=$_", body($_)))[0] } 1 .. 2;
is_deeply(\@st, [200, 200], 'window filled');

# one that may wait only 1 s is refused at once: room is ~3 s away
my $t0 = time;
my ($st, $h) = http_post($listen, "/short$chat", body('short'));
is($st, 429, 'llm_wait 1s: 429');
cmp_ok(time - $t0, '<', 0.5, 'at once, not after waiting');

# three that may wait 5 s: queued in order; the window frees 3 s after
# the first charges, ~993 tokens at a time: two get in at ~3 s, the
# third after the next expiry
$t0 = time;
my @raw = map { LLMTest::post_raw("/wait$chat", body("w$_")) } 1 .. 3;
my @socks;
for my $raw (@raw) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$listen") or die;
    print $s $raw;
    push @socks, $s;
    sleep 0.05;
}

# a fourth finds the queue full (queue=3)
($st) = http_post($listen, "/wait$chat", body('full'));
is($st, 429, 'queue full: 429 at once');

my @done;
for my $i (0 .. 2) {
    my $buf = '';
    my $s = $socks[$i];
    while (sysread($s, $buf, 65536, length $buf)) {
        last if LLMTest::response_complete($buf);
    }
    my ($code) = $buf =~ m{^HTTP/1\.1 (\d+)};
    push @done, [$code, time - $t0];
}
is($done[0][0], 200, 'first waiter admitted');
cmp_ok($done[0][1], '>', 2, 'after waiting for room');
is($done[1][0], 200, 'second waiter admitted');
cmp_ok($done[1][1], '>=', $done[0][1] - 0.05, 'in order');
is($done[2][0], 429, 'third: no room within 5 s, 429 at its deadline');
cmp_ok($done[2][1], '>', 4.5, 'after its 5 s');

# a client that leaves while waiting
sleep 3.2;
http_post($listen, "/wait$chat", body('x')) for 1 .. 2;
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$listen") or die;
print $s LLMTest::post_raw("/wait$chat", body('gone'));
sleep 0.3;
close $s;
sleep 3.2;
($st) = http_post($listen, "/wait$chat", body('after'));
is($st, 200, 'after a waiting client left, the queue still works');

$t->done;
