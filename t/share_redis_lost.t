#!/usr/bin/perl

# Reports whose replies are lost: Redis applies a report, but its reply
# comes after redis_timeout=, so nginx gives the connection up and must
# send what it spent again.  Sent again as it was, it would count twice:
# a month's quota would keep the extra for the rest of the month.  Each
# report says which earlier ones of the same budget may have been lost,
# and Redis takes out what it already has.
# - one instance, one worker, reaching a real redis-server through a
#   link whose lag the test sets: 0, then 800 ms (past the 500 ms
#   timeout) while requests are served from the lease, then 0 again;
# - the quota's and the token window's totals in Redis are what the
#   requests were charged, once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;
my $rport = $t->start_redis;

my $lagfile = $t->dir . '/lag';

sub lag {
    open my $fh, '>', $lagfile or die;
    print $fh "$_[0]\n";
    close $fh;
}

lag(0);
my $link = $t->start_lag($rport, $lagfile);

my $port = free_port();
$t->start_nginx(<<"END", ports => [$port], workers => 1);
    llm_zone llm:1m redis=redis://127.0.0.1:$link redis_sync=50ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo;
    }

    server {
        listen 127.0.0.1:$port;

        add_header X-Estimate \$llm_tokens_estimate always;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=10m quota=10m/month;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END

sub redis_state {
    my ($s) = llm_status($port);
    return $s ? $s->{consumers}[0]{redis} // {} : {};
}

ok(wait_for(10, sub { (redis_state()->{state} // '') eq 'connected' }),
   'the instance connects');

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 100 });

# what Redis holds of a budget: the sum of every slot's spending

sub spent_in_redis {
    my ($suffix) = @_;
    my $total = 0;
    for my $key (split /\n/, $t->redis_cli($rport, '--scan', '--pattern',
                                           "'llm:llm:*:$suffix'")) {
        next if $key =~ /:b:/;
        my %h = split /\n/, $t->redis_cli($rport, 'HGETALL', $key);
        $total += $h{$_} for grep { /^s/ } keys %h;
    }
    return $total;
}

my ($st, $h) = http_post($port, $chat, $body, 'X-App' => 'lost');
is($st, 200, 'a first request passes');
my $est = $h->{'x-estimate'};
ok(wait_for(3, sub { spent_in_redis('q:*') == $est }),
   "Redis has its $est tokens");

# the replies held past the timeout: the reports are applied, the
# connection given up; the requests go on from the lease

lag(800);
my $served = 1;
my $until = time + 2;
while (time < $until) {
    my ($s) = http_post($port, $chat, $body, 'X-App' => 'lost');
    $served++ if $s == 200;
    sleep 0.1;
}
ok($served > 5, "$served requests served while replies were late");
ok(redis_state()->{errors} > 0, 'the connection was given up');

lag(0);
ok(wait_for(5, sub { (redis_state()->{state} // '') eq 'connected' }),
   'connected again');
my $lost = redis_state()->{lost_reports};
ok($lost > 0, "llm_status counts $lost reports without a reply");
my (undef, undef, $prom) = http_get($port, '/status?format=prometheus');
like($prom, qr/^llm_redis_lost_reports_total\{zone="llm"\} $lost$/m,
     'and so does Prometheus');
sleep 1;

is(spent_in_redis('q:*'), $served * $est,
   'the quota in Redis counts each request once');
is(spent_in_redis('t'), $served * $est,
   'so does the token window');

$t->allow_log(qr/timed out/);
$t->done;
