#!/usr/bin/perl

# Per-consumer limits (llm_limit): a consumer over its tpm gets a 429 in
# Azure's shape naming the consumer limit, with Retry-After until its
# window has room, while another consumer passes; rpm in a short window;
# an empty key does not apply; two lines (app and user) apply together;
# a reply's usage corrects the consumer's window; a request that was not
# served is refunded; the state survives a reload; the status page shows
# hashed consumers only; a tiny zone evicts the least recently used;
# quotas by the UTC day and month.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex);
use Time::Local qw(timegm);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $echo = $t->start_echo;

my $ctl = free_port();
my $sim = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'sim', port => $sim, host => 'sim.example', api_key => 'k',
      deployment => 'gpt-4o', tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 5000, completion_tokens => 7 } ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $dead = free_port();
my $listen = free_port();

my $conf = <<"END";
    llm_zone llm:1m;
    llm_zone tiny:32k;

    log_format limit '\$llm_consumer|\$llm_throttle|\$status|'
                     '\$llm_tokens_estimate|\$llm_total_tokens|\$request_uri';
    access_log $dir/limit.log limit;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=1m rpm=100000;
    }

    upstream sim {
        llm_balance zone=llm;
        llm_backend s http://sim.example tpm=1m rpm=100000
                    key_file=$dir/k.key address=127.0.0.1:$sim;
    }

    upstream dead {
        llm_balance zone=llm;
        llm_backend x http://127.0.0.1:$dead tpm=1m;
    }

    upstream full {
        llm_balance zone=llm;
        llm_backend f http://127.0.0.1:$echo tpm=700;
    }

    upstream small {
        llm_balance zone=tiny;
        llm_backend d http://127.0.0.1:$echo tpm=1m rpm=100000;
    }

    server {
        listen 127.0.0.1:$listen;

        llm_limit \$http_x_app tpm=1000;

        location / {
            llm_route pool;
            proxy_pass http://pool;
        }

        location /rpm/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1000;
            llm_limit \$http_x_user rpm=2 window=2s;
            proxy_pass http://pool;
        }

        location /sim/ {
            llm_route sim;
            rewrite ^/sim(/.*)\$ \$1 break;
            proxy_pass http://sim;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /dead/ {
            llm_route dead;
            proxy_pass http://dead;
        }

        location /quota/ {
            llm_route pool;
            llm_limit \$http_x_app quota=1000/day;
            proxy_pass http://pool;
        }

        location /month/ {
            llm_route pool;
            llm_limit \$http_x_app quota=500/month;
            proxy_pass http://pool;
        }

        location /simq/ {
            llm_route sim;
            llm_limit \$http_x_app quota=1000/day;
            rewrite ^/simq(/.*)\$ \$1 break;
            proxy_pass http://sim;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        # lines of one key: a quota on the second one, another window
        location /dupq/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1000000;
            llm_limit \$http_x_app quota=1000/day;
            proxy_pass http://pool;
        }

        location /win/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1000 window=1m;
            llm_limit \$http_x_app rpm=100 window=10s;
            proxy_pass http://pool;
        }

        location /full/ {
            llm_route full;
            proxy_pass http://full;
        }

        location /small/ {
            llm_route small;
            proxy_pass http://small;
        }

        # not in limit.log: next_log reads one line a request
        location = /status {
            llm_status consumers=5;
            access_log off;
        }

        location = /status-tiny {
            llm_status;
            access_log off;
        }
    }
END

$t->start_nginx($conf, ports => [$listen], workers => 2);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

sub body {
    my ($text, $max) = @_;
    return json_encode({ messages => [ { role => 'user',
                                         content => $text // 'hi' } ],
                         max_tokens => $max // 400 });
}

sub post {
    my ($uri, %hdr) = @_;
    my $max = delete $hdr{max};
    return http_post($listen, $uri, body('hi', $max), %hdr);
}

sub id { substr sha256_hex("$_[0]\0$_[1]"), 0, 16 }

sub status {
    my ($uri) = @_;
    my ($st, $h, $b) = http_get($listen, $uri // '/status');
    return ($b, $st == 200 ? json_decode($b) : undef);
}

sub consumer {
    my ($json, $id, $zone) = @_;
    my ($z) = grep { $_->{zone} eq ($zone // 'llm') } @{ $json->{consumers} };
    my ($c) = grep { $_->{consumer} eq $id } @{ $z->{top} };
    return $c;
}

# a consumer in llm_status once the last request is settled: next_log
# sees the access log line, which nginx writes before the module settles
# the request in the same log phase, and the status request may reach
# the other worker in between; $settled says when the figure the
# request's end changes is there (else the checks fail after 3 s)
sub settled_consumer {
    my ($uri, $key, $settled) = @_;
    my ($json, $c);
    wait_for(3, sub {
        (undef, $json) = status($uri);
        $c = consumer($json, id('$http_x_app', $key));
        return $c && $settled->($c);
    });
    return ($json, $c);
}

my @f = qw(consumer throttle status estimate total uri);

my $alpha = 'app-alpha-SECRET-1';
my $beta = 'app-beta-SECRET-2';

###########################################################################
# tpm: two requests of ~408 tokens fit in 1000, the third does not

my ($st, $h, $b) = post($chat, 'X-App' => $alpha);
is($st, 200, 'alpha: first request');
my $l = $t->next_log('limit.log', @f);
is($l->{consumer}, id('$http_x_app', $alpha),
   '$llm_consumer is the hashed key');
is($l->{throttle}, 'none', '$llm_throttle none');
my $est = $l->{estimate};
cmp_ok($est, '>', 400, "estimate $est: prompt plus max_tokens");

($st) = post($chat, 'X-App' => $alpha);
is($st, 200, 'alpha: second request');
$t->next_log('limit.log', @f);

my $t0 = time;
($st, $h, $b) = post($chat, 'X-App' => $alpha);
is($st, 429, 'alpha: third request over tpm=1000');
my $err = eval { json_decode($b) } // {};
is($err->{error}{code}, '429', 'Azure error shape, code "429"');
like($err->{error}{message}, qr/token rate limit of "llm_limit \$http_x_app"/,
     'the message names the consumer limit');
like($err->{error}{message}, qr/consumer ${\ id('$http_x_app', $alpha)}/,
     'and the hashed consumer');
unlike($err->{error}{message}, qr/deployments|SECRET/,
       'not a backend, not the raw key');
like($h->{'retry-after'} // '', qr/^\d+$/, 'Retry-After');
cmp_ok($h->{'retry-after'}, '>=', 58, 'until the window has room: ~60 s');
cmp_ok($h->{'retry-after'}, '<=', 61, 'not more than the window');
is($h->{'retry-after'}, int(($h->{'retry-after-ms'} + 999) / 1000),
   'retry-after-ms agrees');
$l = $t->next_log('limit.log', @f);
is($l->{throttle}, 'consumer', '$llm_throttle consumer');
is($l->{consumer}, id('$http_x_app', $alpha), '$llm_consumer logged');
is($l->{status}, 429, 'logged as 429');

($st) = post($chat, 'X-App' => $beta);
is($st, 200, 'beta passes meanwhile');
$t->next_log('limit.log', @f);

($st) = post($chat);
is($st, 200, 'no key: the limit does not apply');
$l = $t->next_log('limit.log', @f);
is($l->{consumer}, '-', 'no $llm_consumer without a key');

# a request bigger than what is left, but not a small one
($st) = post($chat, 'X-App' => $beta, max => 100);
is($st, 200, 'beta: a small request fits what is left');
$t->next_log('limit.log', @f);
($st) = post($chat, 'X-App' => $beta, max => 500);
is($st, 429, 'beta: a big one does not');
$t->next_log('limit.log', @f);

###########################################################################
# rpm in a 2 s window, and two lines at once

my $t1 = time;
($st) = post("/rpm$chat", 'X-App' => 'app-gamma', 'X-User' => 'u1',
             max => 10);
is($st, 200, 'rpm: first');
$t->next_log('limit.log', @f);
($st) = post("/rpm$chat", 'X-App' => 'app-gamma', 'X-User' => 'u1',
             max => 10);
is($st, 200, 'rpm: second');
$t->next_log('limit.log', @f);
($st, $h, $b) = post("/rpm$chat", 'X-App' => 'app-gamma',
                     'X-User' => 'u1', max => 10);
is($st, 429, 'rpm: third in the window refused');
$err = eval { json_decode($b) } // {};
like($err->{error}{message},
     qr/call\ rate\ limit\ of\ "llm_limit\ \$http_x_user"
        \ \(2\ requests\ per\ 2000\ ms\)/x,
     'call rate limit of the user line');
cmp_ok($h->{'retry-after-ms'}, '<=', 2200, 'retry-after-ms within the window');
$l = $t->next_log('limit.log', @f);
is($l->{consumer}, id('$http_x_app', 'app-gamma'),
   '$llm_consumer: the first applying line');
($st) = post("/rpm$chat", 'X-App' => 'app-gamma', 'X-User' => 'u2',
             max => 10);
is($st, 200, 'another user of the same app passes');
$t->next_log('limit.log', @f);
sleep($t1 + 2.4 - time);
($st) = post("/rpm$chat", 'X-App' => 'app-gamma', 'X-User' => 'u1',
             max => 10);
is($st, 200, 'rpm: room again once the window moved on');
$t->next_log('limit.log', @f);

###########################################################################
# usage corrects the window: ~510 estimated, ~15 used, so three fit

my $delta = 'app-delta';
my $used = 0;
for my $i (1 .. 3) {
    ($st) = post("/sim$chat", 'X-App' => $delta, max => 500);
    is($st, 200, "delta $i: admitted, earlier ones corrected to usage");
    $l = $t->next_log('limit.log', @f);
    $used += $l->{total};
}
cmp_ok($used, '<', 100, "usage $used is far below the estimates");
my ($json, $c) = settled_consumer('/status', $delta,
                                  sub { $_[0]{window_tokens} == $used });
is($c->{window_tokens}, $used, 'window holds the real usage');
is($c->{tokens}{completion}, 21, 'completion tokens counted');
is($c->{requests}, 3, 'requests counted');

###########################################################################
# not served: refunded

my $eps = 'app-epsilon';
($st) = post("/dead$chat", 'X-App' => $eps);
cmp_ok($st, '>=', 500, "dead backend: $st");
$t->next_log('limit.log', @f);
($json, $c) = settled_consumer('/status-tiny', $eps,
                               sub { $_[0]{window_requests} == 0 });
is($c->{window_tokens} // -1, 0, 'refunded: no tokens in the window');
is($c->{window_requests} // -1, 0, 'nor a request');

# no backend with room: the consumer gets its charge back at once (the
# backend takes one request of about 400 tokens a minute)
my $eta = 'app-eta';
($st) = post("/full$chat", 'X-App' => $eta);
is($st, 200, 'the first request fills the backend');
$t->next_log('limit.log', @f);
($st, $h, $b) = post("/full$chat", 'X-App' => $eta);
is($st, 429, 'no backend with room: 429');
$l = $t->next_log('limit.log', @f);
is($l->{throttle}, 'local', '$llm_throttle local, not consumer');
like($b, qr/deployments of \\"full\\"/, 'the message names the pool');
(undef, $json) = status('/status-tiny');
$c = consumer($json, id('$http_x_app', $eta));
is($c->{window_tokens} // -1, $est, 'consumer refunded at once');
is($c->{window_requests} // -1, 1, 'its request too');

###########################################################################
# quotas: by the UTC day and month, corrected to usage

for (1 .. 2) {
    post("/quota$chat", 'X-App' => 'app-q');
    $t->next_log('limit.log', @f);
}
($st, $h, $b) = post("/quota$chat", 'X-App' => 'app-q');
is($st, 429, 'day quota: the third request is over 1000');
$err = eval { json_decode($b) } // {};
like($err->{error}{message},
     qr/token\ quota\ of\ "llm_limit\ \$http_x_app"\ \(1000\ tokens\ a\ day\)/x,
     'the message names the quota');
my $now = time;
my $midnight = 86400 - int($now) % 86400;
cmp_ok(abs($h->{'retry-after'} - $midnight), '<=', 2,
       "Retry-After $h->{'retry-after'}: until midnight UTC ($midnight)");
$l = $t->next_log('limit.log', @f);
is($l->{throttle}, 'consumer', 'quota: $llm_throttle consumer');

($st) = post("/month$chat", 'X-App' => 'app-m');
is($st, 200, 'month quota: the first request fits');
$t->next_log('limit.log', @f);
($st, $h) = post("/month$chat", 'X-App' => 'app-m');
is($st, 429, 'month quota: the second does not');
$t->next_log('limit.log', @f);
my @g = gmtime $now;
my ($y, $m) = ($g[5] + 1900, $g[4] + 1);
my $next = $m == 12 ? timegm(0, 0, 0, 1, 0, $y + 1)
                    : timegm(0, 0, 0, 1, $m, $y);
cmp_ok(abs($h->{'retry-after'} - ($next - int $now)), '<=', 2,
       'Retry-After: until the first of next month UTC');

$used = 0;
for my $i (1 .. 3) {
    ($st) = post("/simq$chat", 'X-App' => 'app-qs', max => 500);
    is($st, 200, "quota $i: admitted, earlier ones corrected to usage");
    $l = $t->next_log('limit.log', @f);
    $used += $l->{total};
}
($json, $c) = settled_consumer('/status-tiny', 'app-qs',
                               sub { $_[0]{quota_used} == $used });
is($c->{quota_used}, $used, 'quota_used is the real usage');
cmp_ok($c->{quota_resets_in_s}, '<=', 86400, 'quota_resets_in_s');
$c = consumer($json, id('$http_x_app', 'app-q'));
is($c->{quota_used}, 2 * $est, 'app-q: two estimates in its quota');
$c = consumer($json, id('$http_x_app', $alpha));
is($c->{quota_used}, undef, 'no quota: quota_used null');

###########################################################################
# status: hashed keys only, top N

my $text;
($text, $json) = status();
unlike($text, qr/SECRET|app-alpha|app-beta/, 'no raw key in JSON status');
$c = consumer($json, id('$http_x_app', $alpha));
ok($c, 'alpha in the top consumers');
is($c->{window_tokens}, 2 * $est, 'alpha: two charges in the window');
is($c->{throttled}, 1, 'alpha: one 429');
is($c->{window_ms}, 60000, 'window_ms');
my ($z) = grep { $_->{zone} eq 'llm' } @{ $json->{consumers} };
cmp_ok(scalar @{ $z->{top} }, '<=', 5, 'consumers=5 shown at most');
my @w = map { $_->{window_tokens} } @{ $z->{top} };
ok(!grep({ $w[$_] < $w[$_ + 1] } 0 .. $#w - 1), "most tokens first: @w");
cmp_ok($z->{count}, '>=', 7, "count $z->{count}");

($st, $h, $text) = http_get($listen, '/status-tiny?format=prometheus');
my $aid = id('$http_x_app', $alpha);
like($text, qr/^llm_consumer_window_tokens
                \{zone="llm",consumer="$aid"\}\ \d+$/mx,
     'prometheus: consumer window tokens');
like($text, qr/^llm_consumers\{zone="llm"\} \d+$/m, 'prometheus: count');
like($text, qr/^llm_consumer_tokens_total
                \{zone="llm",consumer="\w+",kind="completion"\}\ 21$/mx,
     'prometheus: tokens by kind');
unlike($text, qr/SECRET|app-alpha/, 'no raw key in Prometheus status');

###########################################################################
# reload keeps the consumers

$t->reload_nginx($conf, workers => 2);
sleep 1.5;
($st) = post($chat, 'X-App' => $alpha);
is($st, 429, 'after reload: alpha still over its limit');
$t->next_log('limit.log', @f);
(undef, $json) = status();
$c = consumer($json, id('$http_x_app', $alpha));
is($c->{window_tokens}, 2 * $est, 'after reload: the window is kept');
is($c->{throttled}, 2, 'after reload: counters kept');
($st) = post("/quota$chat", 'X-App' => 'app-q');
is($st, 429, 'after reload: the quota is kept');
$t->next_log('limit.log', @f);

###########################################################################
# a tiny zone evicts the least recently used consumer

my $zeta = 'app-zeta';
post("/small$chat", 'X-App' => $zeta) for 1 .. 2;
($st) = post("/small$chat", 'X-App' => $zeta);
is($st, 429, 'tiny zone: zeta over its limit');
my $n = 0;
for my $i (1 .. 120) {
    ($st) = post("/small$chat", 'X-App' => "app-$i", max => 1);
    $n++ if $st == 200;
}
is($n, 120, 'many consumers in a tiny zone all admitted');
(undef, $json) = status('/status-tiny');
($z) = grep { $_->{zone} eq 'tiny' } @{ $json->{consumers} };
cmp_ok($z->{count}, '<', 120, "tiny zone holds $z->{count} of 121");
cmp_ok($z->{evicted}, '>', 0, "$z->{evicted} evicted");
is(scalar @{ $z->{top} }, 10, 'llm_status default: top 10');
($st) = post("/small$chat", 'X-App' => $zeta);
is($st, 200, 'zeta was evicted: a fresh window');

###########################################################################
# two lines of one key that differ in window or quota period are two
# consumers: each line's limit holds (once the second line's quota went
# uncharged, and two windows reset the consumer at every request)

my @dupq = map { (post("/dupq$chat", 'X-App' => 'dup-q', max => 400))[0] }
           1 .. 6;
ok((grep { $_ == 429 } @dupq), "a quota on a second line holds: @dupq");
my @win = map { (post("/win$chat", 'X-App' => 'dup-w', max => 400))[0] }
          1 .. 6;
ok((grep { $_ == 429 } @win), "tpm= with a second line's window holds: @win");

###########################################################################
# configuration errors

$t->stop_nginx;
my ($rc, $out) = $t->test_conf(<<"END");
    llm_zone llm:1m;
    server { listen 127.0.0.1:$listen; llm_limit \$http_x_app window=2s; }
END
isnt($rc, 0, 'llm_limit without tpm= or rpm= refused');
like($out, qr/needs "tpm=", "rpm=", "quota=" or "budget="/,
     'with a clear message');
($rc, $out) = $t->test_conf(<<"END");
    llm_zone llm:1m;
    server { listen 127.0.0.1:$listen; llm_limit \$http_x_app tpm=1x; }
END
like($out, qr/invalid parameter "tpm=1x"/, 'invalid tpm= refused');
($rc, $out) = $t->test_conf(<<"END");
    llm_zone llm:1m;
    server { listen 127.0.0.1:$listen;
             llm_limit \$http_x_app tpm=1k quota=1m/week; }
END
like($out, qr/invalid parameter "quota=1m\/week"/, 'quota by day or month');
# test_conf leaves emergencies in the log on purpose
$t->allow_log(qr/llm_limit|invalid parameter/);

$t->done;
