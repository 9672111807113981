#!/usr/bin/perl

# A consumer's quota shared through Redis by two instances: a request
# refused because the quota's room left is held as the other instance's
# lease is told to come back within a lease's life (its room comes back
# then, spent or given back), not at the end of the month; a request
# refused because the quota is spent is told the end of the month.
# Before, both were told the end of the month ("retry after 2074489
# seconds") though room came back a second later.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(floor);
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;
my $rport = $ga->start_redis;

sub conf {
    my ($listen) = @_;
    return <<"END";
    llm_zone llm:1m redis=redis://127.0.0.1:$rport redis_sync=100ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            llm_limit \$http_x_app quota=2000/month;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END
}

my ($pa, $pb) = (free_port(), free_port());
$ga->start_nginx(conf($pa), ports => [$pa]);
$gb->start_nginx(conf($pb), ports => [$pb]);

ok(wait_for(10, sub { (status_redis($pa)->{state} // '') eq 'connected'
                      && (status_redis($pb)->{state} // '') eq 'connected' }),
   'both instances connected');

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 50 });

sub post { http_post($_[0], $chat, $body, 'X-App' => 'app') }

# A spends most of the quota; B serves one and holds a lease of the rest
for (1 .. 25) {
    my ($st) = post($pa);
    last if $st != 200;
}
my ($sb) = post($pb);
is($sb, 200, 'B: a request, and a lease of what is left');

# A goes on until refused: the room left is B's lease
my ($st, $h, $b);
for (1 .. 40) {
    ($st, $h, $b) = post($pa);
    last if $st != 200;
}
is($st, 429, 'A: refused, the rest held by B');
my $ra = $h->{'retry-after'} // 0;
ok($ra >= 1 && $ra <= 2,
   "A: told to come back within a lease's life (Retry-After $ra)");
unlike($b, qr/retry after \d{3,} seconds/, 'A: not at the month\'s end');

# the room comes back: B's lease, unused, lapses or is given back
my $t0 = time;
ok(wait_for(5, sub { (post($pa))[0] == 200 }),
   sprintf('A: room back %.1f s later', time - $t0));

# then, B's lease gone back, everything spent: told the end of the
# month (UTC)
sleep 1.5;
for (1 .. 60) {
    ($st, $h, $b) = post($pa);
    last if $st != 200;
}
my @now = gmtime;
my ($mon, $year) = ($now[4] + 1, $now[5] + 1900);
($mon, $year) = (0, $year + 1) if $mon == 12;
my $end = POSIX::mktime(0, 0, 0, 1, $mon, $year - 1900);
$end -= (POSIX::mktime(gmtime(0)) - 0);    # mktime is local time
my $left = $end - time;
my $got = $h->{'retry-after'} // 0;
ok($st == 429 && abs($got - $left) <= 5,
   "spent: Retry-After $got s, the month's end ($left s)");

$gb->cleanup;
$ga->done;
