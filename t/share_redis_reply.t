#!/usr/bin/perl

# A server in Redis's place that answers with an array of 400 million
# elements (a broken or hostile one, or someone on the path of a plain
# redis:// link): no reply the module asks for has more than a few
# elements, so the reply is refused as it starts, the link goes down and
# the worker goes on.  Before, the parser made room for every element
# (3.2 GB of pointers) and freeing it held the worker's event loop
# at each new connection.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;

my $fake = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Listen => 8, ReuseAddr => 1) or die;
my $fport = $fake->sockport;
my $fpid = fork // die;
if ($fpid == 0) {
    local $SIG{ALRM} = sub { exit 0 };
    alarm 30;
    my @held;
    while (my $s = $fake->accept) {
        sysread($s, my $in, 4096);
        print $s "*400000000\r\n:1\r\n";
        push @held, $s;
    }
    exit 0;
}
close $fake;
push @{ $t->{pids} }, $fpid;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m redis=redis://127.0.0.1:$fport redis_sync=100ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location = /ping {
            return 204;
        }

        location = /status {
            llm_status;
            access_log off;
        }
    }
END

# the worker answers at once throughout, through several connections
my ($worst, $n) = (0, 0);
my $until = time + 3;
while (time < $until) {
    my $t0 = time;
    my ($st) = http_get($listen, '/ping');
    $n++ if $st == 204;
    $worst = time - $t0 if time - $t0 > $worst;
    sleep 0.02;
}
cmp_ok($n, '>', 50, "the worker answered $n requests in 3 s");
cmp_ok($worst, '<', 0.3, sprintf('none waited (the longest %.0f ms)',
                                 1000 * $worst));

my $r = status_redis($listen);
is($r->{state}, 'down', 'the link is down');
like($r->{last_error} // '', qr/not RESP|reply/, 'with the reason')
    or diag explain $r;

$t->done;
