#!/usr/bin/perl

# Every charge a request makes (the backend's token and request windows,
# its in-flight count, the consumer's window and quota) is settled once
# when the request ends, whatever path it took: refused by an access
# module (deny, auth_basic, auth_request, limit_req), a bad body, a
# local 429, a backend's 401 or 404 (refused before Azure's limiter: no
# charge), a 500, a 500 turned into an error_page, a timeout, a reply
# cut after its header, a client that goes away, a success.  Each path reads llm_status before and after.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my $port = free_port();
my $port2 = free_port();

$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'one', port => $port, host => 'res-one.openai.azure.com',
      api_key => 'key-one', deployment => 'dep-one', tpm => 100000,
      ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 7 },
    { name => 'two', port => $port2, host => 'res-two.openai.azure.com',
      api_key => 'key-one', deployment => 'dep-two', tpm => 100000,
      ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 7 },
] });

for (['one.key', 'key-one'], ['wrong.key', 'not-the-key']) {
    open my $fh, '>', "$dir/$_->[0]" or die;
    print $fh "$_->[1]\n";
    close $fh;
}

open my $pw, '>', "$dir/htpasswd" or die;
print $pw "user:{PLAIN}password\n";
close $pw;

my $listen = free_port();

# a TLS backend that never answers the handshake: the kernel accepts
# the connection, nobody reads it
my $silent_port = free_port();
my $silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                   LocalPort => $silent_port, Listen => 16,
                                   ReuseAddr => 1)
    or die "listen: $!";

my $proxy = <<"END";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_read_timeout 1s;
END

sub backend {
    my ($name, $key, $dep) = @_;
    return "llm_backend one http://res-one.openai.azure.com "
         . "deployment=$dep tpm=8000 key_file=$dir/$key "
         . "address=127.0.0.1:$port;";
}

sub routed {
    my ($prefix, $pool, $extra) = @_;
    $extra //= '';
    return <<"END";
        location /$prefix/ {
            llm_route $pool;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
$extra
            rewrite ^/$prefix(/.*)\$ \$1 break;
            proxy_pass http://$pool;
$proxy
        }
END
}

my $conf = <<"END";
    llm_zone llm:1m;
    limit_req_zone \$binary_remote_addr zone=rl:1m rate=1r/m;

    upstream pool {
        llm_balance zone=llm;
        ${\ backend('one', 'one.key', 'dep-one')}
    }

    upstream badkey {
        llm_balance zone=llm;
        ${\ backend('one', 'wrong.key', 'dep-one')}
    }

    upstream unlimited {
        llm_balance zone=llm;
        llm_backend one http://res-one.openai.azure.com
                    deployment=dep-one key_file=$dir/one.key
                    address=127.0.0.1:$port;
    }

    # a first, b when a fails; b takes one such request a minute
    upstream pair {
        llm_balance zone=llm cooldown_max=300ms;
        llm_backend a http://res-one.openai.azure.com
                    deployment=dep-one tpm=100k priority=1
                    key_file=$dir/one.key address=127.0.0.1:$port;
        llm_backend b http://res-two.openai.azure.com
                    deployment=dep-two tpm=1000 priority=2
                    key_file=$dir/one.key address=127.0.0.1:$port2;
    }

    log_format attempts '\$status|\$upstream_status|\$upstream_addr|'
                        '\$llm_backend|\$llm_throttle|\$llm_attempts';

    upstream silent {
        llm_balance zone=llm;
        llm_backend one https://res-one.openai.azure.com
                    deployment=dep-one tpm=8000 key_file=$dir/one.key
                    address=127.0.0.1:$silent_port;
    }

    # the second deployment, for the cut reply: the first is cooling
    # down by then
    upstream cut {
        llm_balance zone=llm;
        llm_backend two http://res-two.openai.azure.com
                    deployment=dep-two tpm=8000 key_file=$dir/one.key
                    address=127.0.0.1:$port2;
    }

    # a mirror's copy of each request goes here
    upstream shadow {
        llm_balance zone=llm;
        llm_backend two http://res-two.openai.azure.com
                    deployment=dep-two tpm=100k key_file=$dir/one.key
                    address=127.0.0.1:$port2;
    }

    upstream nodep {
        llm_balance zone=llm;
        ${\ backend('one', 'one.key', 'no-such-deployment')}
    }

    server {
        listen 127.0.0.1:$listen;

${\ routed('ok', 'pool')}
${\ routed('deny', 'pool', '            deny all;')}
${\ routed('basic', 'pool',
           "            auth_basic closed;\n"
           . "            auth_basic_user_file $dir/htpasswd;")}
${\ routed('authreq', 'pool', '            auth_request /no;')}
${\ routed('limited', 'pool', '            limit_req zone=rl nodelay;')}
${\ routed('badkey', 'badkey')}
${\ routed('nodep', 'nodep')}
${\ routed('unlimited', 'unlimited')}
${\ routed('cut', 'cut')}

        location /silent/ {
            llm_route silent;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            rewrite ^/silent(/.*)\$ \$1 break;
            proxy_pass https://silent;
            proxy_connect_timeout 5s;
        }
${\ routed('pair', 'pair',
           "            access_log $dir/pair.log attempts;\n"
           . "            proxy_next_upstream error timeout http_429 "
           . "http_500 non_idempotent;")}
${\ routed('intercept', 'pool',
           "            proxy_intercept_errors on;\n"
           . "            error_page 500 502 503 504 = \@down;")}

        # try_files sends the request to a named location after the
        # module admitted it here: the first charge is settled there
        location /tf/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            root $dir;
            try_files /no-such-file \@tf;
        }

        location \@tf {
            llm_route pool;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            rewrite ^/tf(/.*)\$ \$1 break;
            proxy_pass http://pool;
$proxy
        }

        # every request copied to another pool, as shadow traffic
        location /mirrored/ {
            mirror /shadow-copy;
            llm_route cut;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            rewrite ^/mirrored(/.*)\$ \$1 break;
            proxy_pass http://cut;
$proxy
        }

        location = /shadow-copy {
            internal;
            llm_route shadow;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            rewrite ^ /openai/deployments/gpt-4o/chat/completions break;
            proxy_pass http://shadow;
$proxy
        }

        # the same with the v1 API, whose body names the deployment
        location /v1mirrored/ {
            mirror /shadow-v1;
            llm_route cut;
            llm_limit \$http_x_app tpm=1000000 quota=10000000/day;
            rewrite ^/v1mirrored(/.*)\$ \$1 break;
            proxy_pass http://cut;
$proxy
        }

        location = /shadow-v1 {
            internal;
            llm_route shadow;
            rewrite ^ /openai/v1/chat/completions break;
            proxy_pass http://shadow;
$proxy
        }

        location = /no {
            internal;
            return 403;
        }

        location \@down {
            return 503 '{"error":{"code":"down","message":"down"}}';
        }

        location = /status {
            llm_status consumers=50;
            access_log off;
        }
    }
END

$t->start_nginx($conf, ports => [$listen], workers => 2);

my $chat = '/openai/deployments/gpt-4o/chat/completions'
         . '?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 20 });

# what llm_status says of one pool's backend and of all consumers

sub snapshot {
    my ($pool) = @_;
    my ($st, $h, $b) = http_get($listen, '/status');
    die "status: $st" unless $st == 200;
    my $j = json_decode($b);
    my ($p) = grep { $_->{name} eq $pool } @{ $j->{pools} };
    my $be = $p->{backends}[0];
    my %s = map { $_ => $be->{$_} } qw(window_tokens window_requests
                                        in_flight);
    for my $z (@{ $j->{consumers} }) {
        for my $c (@{ $z->{top} }) {
            $s{consumer_tokens} += $c->{window_tokens};
            $s{consumer_requests} += $c->{window_requests};
            $s{quota_used} += $c->{quota_used} // 0;
        }
    }
    $s{$_} //= 0 for qw(consumer_tokens consumer_requests quota_used);
    return \%s;
}

# nginx ends a request (its log phase settles it) just after the last
# byte, maybe after the other worker answered llm_status: wait for
# in_flight to drop, then for two readings 50 ms apart to agree

sub settled {
    my ($pool, $want) = @_;
    my ($s, $last) = (undef, '');
    for (1 .. 60) {
        $s = snapshot($pool);
        my $now = join ',', map { "$_=$s->{$_}" } sort keys %$s;
        return $s if $s->{in_flight} == ($want // 0) && $now eq $last;
        $last = $now;
        sleep 0.05;
    }
    return $s;
}

sub post {
    my ($prefix, %hdr) = @_;
    my $b = delete $hdr{body} // $body;
    return http_post($listen, "/$prefix$chat", $b, 'X-App' => 'app-1', %hdr);
}

sub unchanged {
    my ($pool, $before, $name) = @_;
    my $after = settled($pool);
    is_deeply($after, $before, "$name: nothing charged")
        or diag explain { before => $before, after => $after };
}

###########################################################################
# refused before the module: access modules run first and cost nothing

my $sim_before = $t->sim_stats->{deployments}{one}{requests};
my $before = snapshot('pool');

for (1 .. 12) {
    my ($st) = post('deny');
    is($st, 403, "deny all: 403 ($_)") if $_ == 1 || $_ == 12;
}
unchanged('pool', $before, 'deny all, 12 requests');

my ($st, $h, $raw) = post('basic');
is($st, 401, 'auth_basic without credentials: 401');
($st) = post('basic', Authorization => 'Basic ' . 'dXNlcjp3cm9uZw==');
is($st, 401, 'auth_basic with a wrong password: 401');
unchanged('pool', $before, 'auth_basic');

($st) = post('authreq');
is($st, 403, 'auth_request refusing: 403');
unchanged('pool', $before, 'auth_request');

($st) = post('limited');
is($st, 200, 'limit_req: the first passes');
$before = settled('pool');
($st) = post('limited');
is($st, 503, 'limit_req: the second is refused');
unchanged('pool', $before, 'limit_req');

is($t->sim_stats->{deployments}{one}{requests}, $sim_before + 1,
   'only the one admitted request reached the backend');

###########################################################################
# a request larger than every backend's whole window, or than the
# consumer's: a 400 that says why, nothing charged, never a 429

sub big {
    my (%m) = @_;
    return json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         %m });
}

($st, $h, $raw) = post('ok', body => big(max_tokens => 9000));
is($st, 400, 'larger than the backend window: 400') or diag $raw;
my $err = json_decode($raw)->{error};
is($err->{code}, 'TokenLimitExceeded', 'its code');
like($err->{message}, qr/needs \d+ tokens.*"pool" accept in a minute \(8000/,
     'the message says why');
ok(!exists $h->{'retry-after'}, 'no Retry-After');
unchanged('pool', $before, 'larger than the window');

($st, $h, $raw) = post('ok', body => big(max_tokens => 100000000, n => 43));
is($st, 400, 'a charge above 2^32: 400') or diag $raw;
unchanged('pool', $before, 'a charge above 2^32');

($st, $h, $raw) = post('unlimited', body => big(max_tokens => 2000000));
is($st, 400, 'larger than the consumer window: 400') or diag $raw;
like(json_decode($raw)->{error}{message},
     qr/"llm_limit \$http_x_app" allows consumer [0-9a-f]{16} \(1000000\)/,
     'the message names the limit');

# an unlimited backend takes a charge above 2^32 only clamped, and gives
# it back whole when the backend refuses it (the simulator says 429)

my $u0 = snapshot('unlimited');
($st, $h, $raw) = http_post($listen, "/unlimited$chat",
                            big(max_tokens => 100000000, n => 43));
is($st, 429, 'unlimited: the backend refuses it') or diag $raw;
is_deeply(settled('unlimited'), $u0, 'unlimited: the window is intact');

###########################################################################
# no backend with room: a local 429 keeps nothing

$t->sim_update('one', { faults => { 500 => 1 } });
($st) = post('ok', body => big(max_tokens => 4000));
is($st, 500, 'a 500 keeps its charge of about 4,000 tokens');
$before = settled('pool');
($st, $h, $raw) = post('ok', body => big(max_tokens => 4000));
is($st, 429, 'no room for another: 429 from nginx') or diag $raw;
unchanged('pool', $before, 'local 429');
$t->sim_update('one', { faults => { 500 => 0 } });

###########################################################################
# a bad body: 400, nothing proxied, nothing charged

($st, $h, $raw) = post('ok', body => '{"messages": [');
is($st, 400, 'malformed JSON: 400');
unchanged('pool', $before, 'malformed JSON');

###########################################################################
# a success keeps the backend's arrival charge; the consumer is charged
# what the reply used

($st, $h, $raw) = post('ok');
is($st, 200, 'success') or diag $raw;
my $usage = json_decode($raw)->{usage};
my $after = settled('pool');
cmp_ok($after->{window_tokens} - $before->{window_tokens}, '>', 20,
       'success: the backend keeps its charge');
is($after->{window_requests} - $before->{window_requests}, 1,
   'success: one request in the backend window');
is($after->{in_flight}, 0, 'success: nothing in flight');
is($after->{consumer_tokens} - $before->{consumer_tokens},
   $usage->{total_tokens}, 'success: the consumer pays the usage');
is($after->{quota_used} - $before->{quota_used}, $usage->{total_tokens},
   'success: the quota too');

###########################################################################
# admitted, then sent elsewhere by try_files: charged once, not twice

$before = snapshot('pool');
($st, $h, $raw) = post('tf');
is($st, 200, 'try_files to a named location') or diag $raw;
$usage = json_decode($raw)->{usage};
$after = settled('pool');
is($after->{window_requests} - $before->{window_requests}, 1,
   'try_files: one request in the backend window');
is($after->{in_flight}, 0, 'try_files: nothing in flight');
is($after->{consumer_requests} - $before->{consumer_requests}, 1,
   'try_files: one request for the consumer');
is($after->{consumer_tokens} - $before->{consumer_tokens},
   $usage->{total_tokens}, 'try_files: the consumer pays the usage once');

###########################################################################
# the backend refuses the credential or the deployment: Azure counts
# neither in its window, nor do we

for my $case (['badkey', 401], ['nodep', 404]) {
    my ($prefix, $want) = @$case;
    my $b0 = snapshot($prefix);
    for (1 .. 3) {
        ($st, $h, $raw) = post($prefix);
    }
    is($st, $want, "$prefix: the backend says $want") or diag $raw;
    my $b1 = settled($prefix);
    is_deeply($b1, $b0, "$prefix: nothing charged")
        or diag explain { before => $b0, after => $b1 };
}

###########################################################################
# a 500: Azure counted the request at arrival, the window keeps it; the
# consumer got nothing and pays nothing

$t->sim_update('one', { faults => { 500 => 1 } });

$before = snapshot('pool');
($st) = post('ok');
is($st, 500, 'backend 500 passed on');
$after = settled('pool');
is($after->{in_flight}, 0, '500: nothing in flight');
is($after->{window_requests} - $before->{window_requests}, 1,
   '500: the backend keeps the request');
is($after->{consumer_tokens}, $before->{consumer_tokens},
   '500: the consumer pays nothing');
is($after->{quota_used}, $before->{quota_used}, '500: nor its quota');

# the same 500 replaced by an error_page: the request leaves the
# location (and the module's context) before the log phase

$before = snapshot('pool');
($st, $h, $raw) = post('intercept');
is($st, 503, 'error_page after a 500') or diag $raw;
$after = settled('pool');
is($after->{in_flight}, 0, 'error_page: nothing in flight');
is($after->{consumer_tokens}, $before->{consumer_tokens},
   'error_page: the consumer pays nothing');
is($after->{quota_used}, $before->{quota_used}, 'error_page: nor its quota');

###########################################################################
# a retry after a 500 finds no room: the client gets a 429, and the
# access log says so, attempt by attempt

$t->sim_update('one', { faults => { 500 => 0, overload429 => 1 } });
my $heavy = big(max_tokens => 600);
($st, $h, $raw) = post('pair', body => $heavy);
is($st, 200, 'a says 429, b serves') or diag $raw;
my @f = qw(status ustatus uaddr backend throttle attempts);
my $l = $t->next_log('pair.log', @f);
is($l->{backend}, 'b', 'b served');

sleep 0.4;    # a's cool-down ends
$t->sim_update('one', { faults => { 500 => 1, overload429 => 0 } });
($st, $h, $raw) = post('pair', body => $heavy);
is($st, 429, 'a says 500, b has no room: 429') or diag $raw;
$l = $t->next_log('pair.log', @f);
is($l->{status}, 429, '$status 429');
is($l->{ustatus}, '500, 502', '$upstream_status: a 500, then no attempt');
is($l->{uaddr}, "127.0.0.1:$port, pair",
   '$upstream_addr: a, then the pool, as round-robin says it');
is($l->{backend}, 'a', '$llm_backend: the backend tried last');
is($l->{throttle}, 'local', '$llm_throttle local');
is($l->{attempts}, 1, '$llm_attempts 1');

###########################################################################
# a backend that hangs: a timeout, and a client that goes away

$t->sim_update('one', { faults => { 500 => 0, hang => 1 } });

$before = snapshot('pool');
($st) = post('ok');
is($st, 504, 'timeout: 504');
$after = settled('pool');
is($after->{in_flight}, 0, 'timeout: nothing in flight');
is($after->{consumer_tokens}, $before->{consumer_tokens},
   'timeout: the consumer pays nothing');

# a client that sends its request, waits 0.3 s (or until it is in
# flight, on a loaded machine; /ok/ gives the backend 1 s before its
# 504) and goes: the state of the pool while it waited

sub goes_away {
    my ($prefix, $pool) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen)
        or die "connect: $!";
    print $c "POST /$prefix$chat HTTP/1.1\r\nHost: localhost\r\n"
           . "X-App: app-1\r\nContent-Type: application/json\r\n"
           . "Content-Length: " . length($body) . "\r\n\r\n$body";
    sleep 0.3;
    my $waiting;
    wait_for(0.5, sub { $waiting = snapshot($pool);
                        $waiting->{in_flight} == 1 });
    close $c;
    return $waiting;
}

$before = snapshot('pool');
is(goes_away('ok', 'pool')->{in_flight}, 1, 'client waiting: one in flight');
$after = settled('pool');
is($after->{in_flight}, 0, 'client gone: nothing in flight');
is($after->{consumer_tokens}, $before->{consumer_tokens},
   'client gone: the consumer pays nothing');

$t->sim_update('one', { faults => { hang => 0 } });

# a JSON reply cut after its header (the backend closes half way, as a
# timeout does after the header): the client's 200 is cut short, the
# request failed; the backend keeps its charge, the consumer is given
# back, as for a 5xx

$t->sim_update('two', { faults => { cut => 1 } });
$before = snapshot('cut');
($st) = post('cut');
$after = settled('cut');
is($after->{in_flight}, 0, 'cut reply: nothing in flight');
is($after->{window_requests}, $before->{window_requests} + 1,
   'cut reply: the backend keeps its charge');
is($after->{consumer_tokens}, $before->{consumer_tokens},
   'cut reply: the consumer pays nothing');
is($after->{quota_used}, $before->{quota_used},
   'cut reply: nor its quota');
$t->sim_update('two', { faults => { cut => 0 } });

# the same reply whole: the consumer keeps the charge

$before = snapshot('cut');
($st, my $hh, my $bb) = post('cut');
is($st, 200, 'whole reply: 200') or diag explain [$st, $hh, $bb];
$after = settled('cut');
cmp_ok($after->{consumer_tokens}, '>', $before->{consumer_tokens},
       'whole reply: the consumer pays');

# a mirror's copy (a subrequest) is not admitted where it goes, nor does
# it wait there; its backend is charged the client's request's tokens
# too, not only one request; the consumer pays for its own request once

$before = snapshot('shadow');
($st) = post('mirrored', body => json_encode({ messages => [
    { role => 'user', content => 'hello there ' x 50 } ],
    max_tokens => 20 }));
is($st, 200, 'mirror: the client\'s answer');
my $mirrored = settled('shadow');
is($mirrored->{window_requests}, $before->{window_requests} + 1,
   'mirror: the copy\'s backend charged one request');
cmp_ok($mirrored->{window_tokens} - $before->{window_tokens}, '>', 100,
       'mirror: and the copy\'s tokens');
is($mirrored->{in_flight}, 0, 'mirror: nothing in flight');
is($mirrored->{consumer_requests}, $before->{consumer_requests} + 1,
   'mirror: the consumer pays for its request, not for the copy');

# the v1 API: the copy's body names its backend's deployment, as the
# client's request's does (the simulator answers 404 to another model)

$before = snapshot('shadow');
my $seen = $t->sim_stats->{deployments}{two}{status}{200} // 0;
($st) = http_post($listen, '/v1mirrored/openai/v1/chat/completions',
                  json_encode({ model => 'gpt-4o', max_tokens => 20,
                                messages => [ { role => 'user',
                                                content => 'hi ' x 40 } ] }),
                  'X-App' => 'app-1');
is($st, 200, 'v1 mirror: the client\'s answer');
$mirrored = settled('shadow');
is($t->sim_stats->{deployments}{two}{status}{200}, $seen + 2,
   'v1 mirror: the copy is served its backend\'s model, as the client');
cmp_ok($mirrored->{window_tokens} - $before->{window_tokens}, '>', 30,
       'v1 mirror: the copy\'s backend keeps its tokens');

# a client gone while nginx still waits for the backend's TLS handshake:
# the request never reached the backend, which keeps nothing

$before = snapshot('silent');
is(goes_away('silent', 'silent')->{in_flight}, 1,
   'handshake pending: one in flight');
$after = settled('silent');
is_deeply($after, $before, 'client gone before the request was sent: '
                           . 'nothing charged')
    or diag explain { before => $before, after => $after };

$t->allow_log(qr/upstream timed out|upstream prematurely closed/);
$t->done;
