#!/usr/bin/perl

# Budgets shared through a Redis far away: each instance reaches a real
# redis-server through a link that holds every reply 300 ms.
# - a first request, which needs its consumer's lease and its backend's,
#   waits one round trip, not two in turn (two would pass the default
#   redis_timeout= of 500 ms and fall back to the instance's share);
# - a budget smaller than a lease worth holding (rpm=3) is reserved in
#   Redis request by request: requests alternating between the
#   instances, with pauses that let leases lapse and come back, are
#   refused only once the limit is spent;
# - a reply that takes 300 ms is not timed out (redis_timeout= 500ms):
#   no error, no admission without Redis.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use LLMTest;

my $lag = 290;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;
my $rport = $ga->start_redis;

sub conf {
    my ($listen, $link) = @_;
    return <<"END";
    llm_zone llm:1m redis=redis://127.0.0.1:$link redis_sync=50ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://pool;
        }

        location /three/ {
            llm_route pool;
            llm_limit \$http_x_app rpm=3;
            proxy_pass http://pool;
        }

        location /six/ {
            llm_route pool;
            llm_limit \$http_x_app rpm=6;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END
}

my $pa = free_port();
my $pb = free_port();

# one worker in A, so that its commands share one connection

$ga->start_nginx(conf($pa, $ga->start_lag($rport, $lag)), ports => [$pa],
                 workers => 1);
$gb->start_nginx(conf($pb, $gb->start_lag($rport, $lag)), ports => [$pb],
                 workers => 2);

ok(wait_for(10, sub { (status_redis($pa)->{state} // '') eq 'connected'
                      && (status_redis($pb)->{state} // '') eq 'connected' }),
   'both instances connect through the slow link');

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 100 });

sub post {
    my ($port, $uri, $app) = @_;
    my $t0 = time;
    my ($s) = http_post($port, "$uri$chat", $body, 'X-App' => $app);
    return ($s, 1000 * (time - $t0));
}

# on a quiet instance, a request, and another 250 ms later: the second's
# command goes out while the first's waits, and its reply comes 540 ms
# after the first command, 290 ms after its own

sleep 1.5;

my @q = map {
    sleep 0.25 if $_ == 2;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $pa)
        or die "connect: $!";
    print $s LLMTest::raw_post('localhost', "$chat", $body, 'X-App' => "quiet-$_");
    $s;
} 1, 2;
my @qs = map { local $/; my $r = <$_>; $r =~ m{^HTTP/1\.1 (\d+)} ? $1 : 0 } @q;
is("@qs", '200 200', 'two requests 250 ms apart pass');
is(status_redis($pa)->{errors}, 0,
   'the second command is not timed out with the first');

# the first request of each instance after a pause, when it holds no
# lease: its consumer's lease and its backend's, both asked at once.
# One after the other, they would take two round trips, past
# redis_timeout=: the request would go on without Redis at 500 ms, which
# the count of degraded admissions below tells.

sleep 1.5;

for my $p ([A => $pa], [B => $pb]) {
    my ($s, $ms) = post($p->[1], '', "first-$p->[0]");
    is($s, 200, "instance $p->[0]: the first request passes");
    ok($ms >= $lag && $ms < 2 * $lag,
       sprintf("instance %s: it waited one round trip (%.0f ms)",
               $p->[0], $ms));
}

# rpm=3, alternating, with pauses longer than a lease stays idle

my @got;
for my $p ($pa, $pb, $pa, $pb) {
    my ($s) = post($p, '/three', 'three');
    push @got, $s;
    sleep 0.6;
}
is("@got", '200 200 200 429', 'rpm=3 across both: refused only when spent');

# steady traffic for two seconds: a report every redis_sync=, each sent
# while earlier ones still wait for their replies

my $until = time + 2;
my %steady;
while (time < $until) {
    for my $p ($pa, $pb) {
        my ($s) = post($p, '', 'steady');
        $steady{$s}++;
    }
}
is(join(' ', keys %steady), '200', 'steady traffic: every request passes');

# rpm=6, reserved request by request: B spends 5, then 10 come to A at
# once.  Each waits for the asks of those before it, one round trip
# each, past redis_timeout= in all for the last ones; Redis answers every
# ask in time, so they are judged by Redis (one more passes), not by A's
# share of the limit (three more would)

for (1 .. 5) {
    my ($s) = post($pb, '/six', 'six');
    is($s, 200, "rpm=6: B's request $_");
}
my $log = length $ga->error_log;
my @burst = http_parallel($pa, (LLMTest::raw_post('localhost', "/six$chat",
                                                  $body, 'X-App' => 'six'))
                               x 10);
is(scalar(grep { $_->[0] == 200 } @burst), 1,
   'rpm=6: of 10 at once on A, one passes');

# while they wait, each looks again each millisecond at first, then
# less often: not a look a millisecond for the whole wait
my $passes = () = substr($ga->error_log, $log) =~ /llm consumers: /g;
cmp_ok($passes, '<', 1500, "rpm=6: $passes admission passes for 10");

# a reply 300 ms away is not late: redis_timeout= counts from each
# command's own start, not from an earlier one's

for my $p ($pa, $pb) {
    my $r = status_redis($p);
    is($r->{errors}, 0, 'no command timed out');
    is($r->{degraded_admissions}, 0, 'no admission went without Redis');
}
unlike($ga->error_log . $gb->error_log, qr/timed out/,
       'no time-out in the logs');

$gb->cleanup;
$ga->done;
