#!/usr/bin/perl

# Consumer budgets shared through Redis (llm_zone redis=): two nginx
# instances, 2 workers each, in front of one backend, with a real
# redis-server on loopback.
# - a burst of 60 requests of one consumer split over both instances is
#   admitted within the consumer's tpm once, not once per instance;
# - both instances' llm_status show the same shared figures;
# - a monthly quota survives a stop and a start of an instance;
# - Redis killed under load: no client error, a warning, the degraded
#   state in llm_status; Redis back: shared again without a restart, and
#   what was spent meanwhile reaches it;
# - a password from a file; no secret and no raw consumer value in Redis,
#   the logs or llm_status.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Socket::INET;
use LLMTest;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;

my $password = 'redis-PASSWORD-secret-42';
my $rport = $ga->start_redis(args => ['--requirepass', $password]);

for my $t ($ga, $gb) {
    open my $fh, '>', $t->dir . '/redis.pass' or die;
    print $fh "$password\n";
    close $fh;
}

my $app = 'app-SECRET-value-7';

sub conf {
    my ($t, $listen) = @_;
    my $dir = $t->dir;
    return <<"END";
    llm_zone llm:1m redis=redis://127.0.0.1:$rport
                    redis_password_file=$dir/redis.pass redis_sync=50ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        add_header X-Estimate \$llm_tokens_estimate always;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=20k;
            proxy_pass http://pool;
        }

        location /month/ {
            llm_route pool;
            llm_limit \$http_x_app quota=5000/month;
            proxy_pass http://pool;
        }

        location /wide/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://pool;
        }

        # two lines of one key, window and period: one consumer
        location /two/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            llm_limit \$http_x_app rpm=3;
            proxy_pass http://pool;
        }

        location /rpm3/ {
            llm_route pool;
            llm_limit \$http_x_app rpm=3;
            proxy_pass http://pool;
        }

        location /rpm6/ {
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

$ga->start_nginx(conf($ga, $pa), ports => [$pa], workers => 2);
$gb->start_nginx(conf($gb, $pb), ports => [$pb], workers => 2);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 800 });

sub redis_state { status_redis($_[0])->{state} // '' }

# every worker connects: a status request lands on either
ok(wait_for(5, sub { redis_state($pa) eq 'connected'
                     && redis_state($pb) eq 'connected' }),
   'both instances connect to Redis, with the password from the file');

###########################################################################
# the burst: 60 at once, 30 on each instance

my ($st, $h) = http_post($pa, "$chat", $body, 'X-App' => 'probe');
is($st, 200, 'a first request passes');
my $est = $h->{'x-estimate'};
ok($est > 700 && $est < 900, "a request is charged $est tokens");
my $exact = int(20000 / $est);

my @raws;
for my $i (1 .. 30) {
    push @raws, "POST $chat HTTP/1.1\r\nHost: localhost\r\nX-App: $app\r\n"
              . "Content-Type: application/json\r\nConnection: close\r\n"
              . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

my (@ra, @rb);
my $pid = fork // die;
if ($pid == 0) {
    my @r = http_parallel($pb, @raws);
    open my $fh, '>', $gb->dir . '/burst' or die;
    print $fh join(' ', map { $_->[0] } @r);
    close $fh;
    POSIX::_exit(0);
}
@ra = map { $_->[0] } http_parallel($pa, @raws);
waitpid $pid, 0;
@rb = split / /, $gb->read_file('burst');

my $ok = grep { $_ == 200 } @ra, @rb;
my $refused = grep { $_ == 429 } @ra, @rb;
my $oka = grep { $_ == 200 } @ra;
diag("admitted $ok of 60 ($oka on one instance), exact answer $exact");
ok($ok <= $exact + 2 && $ok >= $exact - 3,
   "the two instances admit $ok, the consumer's limit allows $exact");
is($ok + $refused, 60, 'every other request is a 429');
ok($oka > 0 && $oka < $ok, 'both instances admitted some');

# what each instance shows of the consumer, once both reported (every
# redis_sync=50ms; a loaded machine may take longer than that)

my $ca;
wait_for(3, sub {
    $ca = status_consumer($pa, $app);
    ($ca->{shared}{tokens}{used} // 0) == $ok * $est });
is($ca->{shared}{tokens}{used}, $ok * $est,
   'instance A shows what both spent');
ok(wait_for(2, sub {
       my $c = status_consumer($pb, $app);
       ($c->{shared}{tokens}{used} // 0) == $ok * $est }),
   'instance B shows the same');
ok($ca->{window_tokens} < $ok * $est, 'A\'s own window holds its part only');

# the same in Prometheus's format
my ($pst, $ph, $prom) = http_get($pa, '/status?format=prometheus');
like($prom, qr/^llm_redis_up\{zone="llm"\} 1$/m, 'llm_redis_up is 1');
like($prom, qr/^llm_consumer_shared_used\{zone="llm",consumer="[0-9a-f]{16}",budget="tokens"\} ${\($ok * $est)}$/m,
     'the shared figure in Prometheus');
SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $fh, '>', $ga->dir . '/metrics.txt' or die;
    print $fh $prom;
    close $fh;
    my $out = `/usr/bin/promtool check metrics < ${\$ga->dir}/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $out;
}

# two lines make one consumer with both limits, shared: rpm=3 over both
# instances

my @two;
for my $port ($pa, $pb, $pa, $pb) {
    my ($s, $h, $b) = http_post($port, "/two$chat", $body, 'X-App' => 'two');
    push @two, $s;
    like($b, qr/call rate limit/, 'the 429 names the request limit')
        if $s == 429;
}
is("@two", '200 200 200 429', 'rpm=3 of the second line holds across both');

# a budget so small that leasing ahead would hand one instance most of
# it: each request is reserved in Redis as it comes, so that one
# instance never refuses while the other holds room it does not use

for my $case (['abba', 3, '200 200 200 429'],
              ['aabb', 3, '200 200 200 429'],
              ['abbbbbba', 6, '200 200 200 200 200 200 429 429'],
              ['bbbbbbba', 6, '200 200 200 200 200 200 429 429']) {
    my ($seq, $rpm, $want) = @$case;
    my @got;
    my $trouble = redis_trouble($pa, $pb);
    for my $x (split //, $seq) {
        my ($s) = http_post($x eq 'a' ? $pa : $pb, "/rpm$rpm$chat", $body,
                            'X-App' => "small-$seq");
        push @got, $s;
    }
    $trouble = redis_trouble($pa, $pb) - $trouble;
    SKIP: {
        skip "rpm=$rpm, $seq: Redis answered late ($trouble admissions "
             . "without it or errors): @got", 1 if $trouble;

        is("@got", $want,
           "rpm=$rpm, requests on $seq: none refused with room");
    }
}

###########################################################################
# a reload: the old workers report and go, the new ones connect; nothing
# lost or counted twice

for (1 .. 3) {
    http_post($pa, "/wide$chat", $body, 'X-App' => 'reload');
}
$ga->reload_nginx;
sleep 0.3;
ok(wait_for(5, sub { redis_state($pa) eq 'connected' }),
   'the new workers connect after a reload');
http_post($pa, "/wide$chat", $body, 'X-App' => 'reload');
ok(wait_for(3, sub {
       my $c = status_consumer($pa, 'reload');
       $c && ($c->{shared}{tokens}{used} // 0) == 4 * $est }),
   'four requests across a reload count four times');
sleep 0.3;
is(status_consumer($pa, 'reload')->{shared}{tokens}{used}, 4 * $est,
   'and stay four');

###########################################################################
# a monthly quota survives a stop and a start

my $m = 0;
for (1 .. 8) {
    my ($s) = http_post($pa, "/month$chat", $body, 'X-App' => 'monthly');
    $m++ if $s == 200;
}
my $mexact = int(5000 / $est);
is($m, $mexact, "the quota admits $mexact requests of $est tokens");

# stopped at once (nginx -s stop), with what the last request spent not
# yet reported
http_post($pa, "/wide$chat", $body, 'X-App' => 'flush-at-exit');
$ga->stop_nginx('TERM');

$ga->start_nginx(conf($ga, $pa), ports => [$pa], workers => 2);
ok(wait_for(5, sub { redis_state($pa) eq 'connected' }),
   'the instance connects again after its start');

($st) = http_post($pa, "/month$chat", $body, 'X-App' => 'monthly');
is($st, 429, 'the quota used before the stop still counts');
($st) = http_post($pb, "/month$chat", $body, 'X-App' => 'monthly');
is($st, 429, 'and the other instance agrees');

http_post($pb, "/wide$chat", $body, 'X-App' => 'flush-at-exit');
ok(wait_for(2, sub {
       my $c = status_consumer($pb, 'flush-at-exit');
       $c && ($c->{shared}{tokens}{used} // 0) == 2 * $est }),
   'what a worker spent just before its stop reached Redis');

###########################################################################
# Redis away under load, then back

my @codes;
my $killed = 0;
my $t0 = time;
for my $i (1 .. 40) {
    if ($i == 10) {
        $ga->stop_redis('KILL');
        $killed = 1;
    }
    my ($s) = http_post($i % 2 ? $pa : $pb, "/wide$chat", $body,
                        'X-App' => 'steady');
    push @codes, $s;
    sleep 0.02;
}
my $bad = grep { $_ != 200 } @codes;
is($bad, 0, 'no client error while Redis goes away (' . scalar(@codes)
            . ' requests)');
ok(wait_for(3, sub { redis_state($pa) eq 'down' }),
   'llm_status says the link is down');
my ($sa) = llm_status($pa);
ok($sa->{consumers}[0]{redis}{degraded_admissions} > 0,
   'and counts admissions made without it');
like($sa->{consumers}[0]{redis}{last_error} // '', qr/\S/,
     'with the cause');
like($ga->error_log,
     qr/\[warn\].*llm: redis 127\.0\.0\.1:$rport\/0 .*fall back/,
     'a warning names Redis and the fallback');

# degraded: the instance's share (50%) of tpm=20k applies
my $d = 0;
for (1 .. 20) {
    my ($s) = http_post($pa, "$chat", $body, 'X-App' => 'degraded');
    $d++ if $s == 200;
}
my $half = int(10000 / $est);
is($d, $half, "without Redis an instance admits its share: $half");

$ga->start_redis(port => $rport, args => ['--requirepass', $password]);
ok(wait_for(5, sub { redis_state($pa) eq 'connected'
                     && redis_state($pb) eq 'connected' }),
   'both instances are back on Redis without a restart');

# what was spent while it was away reaches the new Redis
ok(wait_for(3, sub {
       my $c = status_consumer($pa, 'degraded');
       $c && ($c->{shared}{tokens}{used} // 0) == $d * $est }),
   'what an instance spent without Redis is reported when it returns');

# the other instance has the rest of the limit, not all of it, once the
# first has given back the lease it no longer uses
sleep 1;
my $e = 0;
for (1 .. 20) {
    my ($s) = http_post($pb, "$chat", $body, 'X-App' => 'degraded');
    $e++ if $s == 200;
}
my $rest = int((20000 - $d * $est) / $est);
ok($e <= $rest && $e >= $rest - 1,
   "the other instance admits $e, what is left of the limit: $rest");

###########################################################################
# no secret and no raw value in Redis, the logs or the status

my $keys = $ga->redis_cli($rport, '-a', $password, '--no-auth-warning',
                         'KEYS', "'*'");
like($keys, qr/^llm:llm:[0-9a-f]{64}:t$/m, 'Redis keys are hashes');
unlike($keys, qr/SECRET|monthly|steady/, 'no raw consumer value in a key');
my $dump = '';
for my $k (grep { length } split /\n/, $keys) {
    $dump .= $ga->redis_cli($rport, '-a', $password, '--no-auth-warning',
                           'HGETALL', $k);
}
unlike($dump, qr/SECRET|PASSWORD/, 'nor in a value');

my (undef, $raw) = llm_status($pa);
my $logs = $ga->error_log . $gb->error_log;
unlike($logs . $raw, qr/PASSWORD/, 'no password in the logs or the status');

# nginx's own debug lines show request headers; ours never show the value
$logs = join "\n", grep { !/\[debug\]|^\S+: / } split /\n/, $logs;
unlike($logs . $raw, qr/SECRET/, 'no consumer value in the logs or the status');

###########################################################################
# a worker that exits reports every consumer, more than the link holds at
# once: 600 consumers, no periodic report (redis_sync=10s), then a stop

my $x = LLMTest->new;
my $px = free_port();
my $xdir = $x->dir;
$x->start_nginx(<<"END", ports => [$px]);
    llm_zone x:4m redis=redis://127.0.0.1:$rport
                  redis_password_file=${\ $ga->dir}/redis.pass redis_sync=10s;
    upstream u {
        llm_balance zone=x;
        llm_backend d http://127.0.0.1:$echo tpm=100m;
    }
    server {
        listen 127.0.0.1:$px;
        location / {
            llm_route u;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://u;
        }
        location = /status {
            llm_status;
        }
    }
END
ok(wait_for(5, sub { redis_state($px) eq 'connected' }), 'x connects');
my $served = 0;
for my $i (1 .. 600) {
    my ($s) = http_post($px, $chat, $body, 'X-App' => "many-$i");
    $served++ if $s == 200;
}
is($served, 600, '600 consumers served');
$x->stop_nginx('TERM');
my $xkeys = $ga->redis_cli($rport, '-a', $password, '--no-auth-warning',
                           '--scan', '--pattern', "'llm:x:*:t'");
my @xk = grep { length } split /\n/, $xkeys;
is(scalar @xk, 600 + 1, 'a key for each consumer, and the backend\'s');
# one redis-cli for all the keys (one a key took a third of the file's
# 120 s on a loaded machine): the replies, field and value lines, one
# after the other
my $cmds = $x->dir . '/hgetall';
open my $cfh, '>', $cmds or die "$cmds: $!";
print $cfh map { "HGETALL $_\n" } grep { !/:b:/ } @xk;
close $cfh;
my @f = split /\n/, $ga->redis_cli($rport, '-a', $password,
                                  '--no-auth-warning', '<', $cmds);
my $spent = 0;
for (my $i = 0; $i < @f; $i += 2) {
    $spent += $f[$i + 1] if $f[$i] =~ /^s/;
}
is($spent, 600 * $est, 'what every consumer spent reached Redis at exit');
$x->cleanup;

###########################################################################
# configuration errors say what is wrong, and never the password

my $c = LLMTest->new;
my @bad = (
    [ 'redis=http://127.0.0.1:6379', qr/needs a "redis:\/\/", "rediss:\/\/" or "unix:" URL/ ],
    [ 'redis=redis://user:pw\@127.0.0.1', qr/only ":password@" is supported/ ],
    [ 'redis=redis://:pw-XYZ\@127.0.0.1/abc', qr/invalid database number/ ],
    [ 'redis_sync=5ms redis=redis://127.0.0.1', qr/invalid "redis_sync="/ ],
    [ 'redis_share=0% redis=redis://127.0.0.1', qr/invalid "redis_share="/ ],
    [ 'redis_sync=1s', qr/has Redis options but no "redis="/ ],
    [ 'redis_password_file=/nonexistent redis=redis://127.0.0.1',
      qr/nonexistent/ ],
    [ 'redis_bogus=1', qr/invalid parameter "redis_bogus=1"/ ],
);
for my $case (@bad) {
    my ($opts, $re) = @$case;
    my ($rc, $out) = $c->test_conf(<<"END");
    llm_zone z:1m $opts;
    upstream u {
        llm_balance zone=z;
        llm_backend d http://127.0.0.1:1 tpm=1k;
    }
END
    isnt($rc, 0, "nginx -t refuses $opts");
    like($out, $re, 'and says why');
    unlike($out, qr/pw-XYZ/, 'without the password') if $opts =~ /XYZ/;
}

# a wrong password: the link is down with Redis's own words, requests
# flow on the instance's share
my $pc = free_port();

# an instance on port $pc whose Redis, at $_[0], is given the password $_[1]
sub with_password {
    my ($rp, $password) = @_;
    my $cdir = $c->dir;
    open my $fh, '>', "$cdir/redis.pass" or die;
    print $fh "$password\n";
    close $fh;
    $c->start_nginx(<<"END", ports => [$pc]);
    llm_zone z:1m redis=redis://127.0.0.1:$rp
                  redis_password_file=$cdir/redis.pass;
    upstream u {
        llm_balance zone=z;
        llm_backend d http://127.0.0.1:$echo tpm=1m;
    }
    server {
        listen 127.0.0.1:$pc;
        location / {
            llm_route u;
            llm_limit \$http_x_app tpm=20k;
            proxy_pass http://u;
        }
        location = /status {
            llm_status;
        }
    }
END
}

with_password($rport, 'not-the-password');
ok(wait_for(3, sub { redis_state($pc) eq 'down' }),
   'a wrong password: the link is down');
my ($sc) = llm_status($pc);
like($sc->{consumers}[0]{redis}{last_error}, qr/WRONGPASS|invalid/i,
     'with Redis\'s reason');
($st) = http_post($pc, $chat, $body, 'X-App' => 'w');
is($st, 200, 'and requests pass on the instance\'s share');
like($c->error_log, qr/\[warn\].*refused the connection's set-up/,
     'one warning says so');
unlike($c->error_log, qr/not-the-password/, 'without the password');
$c->stop_nginx;

# a server that repeats AUTH's argument in its error, as Redis does for
# a command it does not know (AUTH renamed, or a proxy in between): the
# password appears neither in llm_status nor in the log
my $fake = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Listen => 8, ReuseAddr => 1) or die;
my $fport = $fake->sockport;
my $cdir = $c->dir;
my $fpid = fork // die;
if ($fpid == 0) {
    local $SIG{ALRM} = sub { exit 0 };
    alarm 20;
    # Redis's own words, then, once the test says so, a proxy's that
    # name the password (the link connects again every second or so)
    while (my $s = $fake->accept) {
        sysread($s, my $in, 4096);
        print $s -e "$cdir/proxy-words"
            ? "-ERR proxy: upstream authentication failed for tenant "
              . "default, password=echoed-secret-pw\r\n"
            : "-ERR unknown command 'AUTH', with args beginning "
              . "with: 'echoed-secret-pw' \r\n";
        close $s;
    }
    exit 0;
}
close $fake;
with_password($fport, 'echoed-secret-pw');
ok(wait_for(3, sub { redis_state($pc) eq 'down' }),
   'a server that repeats the password: the link is down');
($sc) = llm_status($pc);
my $said = $sc->{consumers}[0]{redis}{last_error} // '';
like($said, qr/unknown command/, 'with the server\'s reason')
    or diag $said;
unlike($said, qr/echoed-secret/, 'but not the password it repeated');
# the next connection's error names the password: not shown at all
open my $pw, '>', "$cdir/proxy-words" or die;
close $pw;
ok(wait_for(6, sub { (status_redis($pc)->{last_error} // '')
                     =~ /not shown/ }),
   'an error naming the password is not shown') or diag explain
    status_redis($pc);
my ($sst, $sh, $sraw) = http_get($pc, '/status?format=prometheus');
unlike($sraw // '', qr/echoed-secret/, 'nor in Prometheus\'s text');
$c->stop_nginx;
unlike($c->error_log, qr/echoed-secret/, 'nor in the log');
kill 'TERM', $fpid;
waitpid $fpid, 0;

my ($rc, $out) = $c->test_conf(<<"END");
    llm_zone z:1m redis=unix:/run/redis.sock redis_sync=20ms
                  redis_timeout=200ms redis_share=25%;
    upstream u {
        llm_balance zone=z;
        llm_backend d http://127.0.0.1:1 tpm=1k;
    }
END
is($rc, 0, 'a unix socket and every option pass nginx -t') or diag $out;

$c->cleanup;
$gb->cleanup;
$ga->done;
