#!/usr/bin/perl

# llm_hedge after=time [max=percent]: a request whose first attempt has
# no first token after the delay gets a second attempt on another
# backend of the pool; the first to answer is the client's, byte for
# byte, the other's connection is closed at once and its charge kept.
# JSON races on the header, a stream on its first text (events before it
# are held).  No second attempt without room for it, nor beyond max=.
# The consumer of llm_limit is charged once; llm_status counts hedges.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use IO::Select;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(slow fast tslow tfast);
my %ttft = (slow => 2000, fast => 100, tslow => 2000, tfast => 100);
my $certs = "$dir/certs";
$t->start_sim({ control_port => $ctl, tls_dir => $certs, deployments => [
    (map {
        { name => $_, port => $p{$_}, host => "$_.example",
          deployment => 'gpt-4o', tpm => 1000000, api_key => "key-$_",
          ttft_ms => [$ttft{$_}, $ttft{$_}], tokens_per_s => 200,
          completion_tokens => 5, fixed_ids => JSON::PP::true,
          head_first => JSON::PP::true }
    } qw(slow fast)),
    (map {
        { name => $_, port => $p{$_}, host => "res-$_.openai.azure.com",
          tls => JSON::PP::true, deployment => "dep-$_", tpm => 1000000,
          api_key => "key-$_", ttft_ms => [$ttft{$_}, $ttft{$_}],
          tokens_per_s => 200, completion_tokens => 5 }
    } qw(tslow tfast)) ] });

for (qw(slow fast tslow tfast)) {
    open my $fh, '>', "$dir/$_.key" or die;
    print $fh "key-$_\n";
    close $fh;
}

my $listen = free_port();
my $h2 = free_port();
my $dead = free_port();     # nothing listens there

sub upstream {
    my ($name, $fast_tpm, $window, $slow_tpm) = @_;
    $window = $window ? " window=$window" : '';
    $slow_tpm //= '1m';
    return <<"END";
    upstream $name {
        llm_balance zone=llm keepalive=4$window;
        llm_backend slow http://slow.example:$p{slow}
                    address=127.0.0.1:$p{slow} priority=1
                    key_file=$dir/slow.key tpm=$slow_tpm;
        llm_backend fast http://fast.example:$p{fast}
                    address=127.0.0.1:$p{fast} priority=2
                    key_file=$dir/fast.key tpm=$fast_tpm;
    }
END
}

sub location {
    my ($name, $hedge, $extra, $pool) = @_;
    $extra //= '';
    $pool //= $name;
    return <<"END";
        location /$name/ {
            llm_route $pool;
            llm_hedge $hedge;
            $extra
            rewrite ^/$name(/.*)\$ \$1 break;
            proxy_pass http://$pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            add_header X-Backend \$llm_backend always;
            add_header X-Hedge \$llm_hedge always;
        }
END
}

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format hedge '\$status \$llm_backend "\$llm_hedge" \$llm_attempts '
                     '"\$upstream_addr"';
    access_log $dir/hedge.log hedge;

${\ upstream('pool', '1m') }
${\ upstream('capped', '1m') }
${\ upstream('full', '1000') }
${\ upstream('auto', '1m') }
${\ upstream('waiting', '2000', '3s', '2000') }
${\ upstream('logsub', '1m') }

    upstream dead {
        llm_balance zone=llm;
        llm_backend d1 http://dead.example address=127.0.0.1:$dead
                    key_file=$dir/slow.key;
        llm_backend d2 http://dead.example address=127.0.0.1:$dead
                    key_file=$dir/fast.key;
    }

    upstream tls {
        llm_balance zone=llm keepalive=4;
        llm_backend tslow https://res-tslow.openai.azure.com
                    deployment=dep-tslow address=127.0.0.1:$p{tslow}
                    priority=1 key_file=$dir/tslow.key tpm=1m;
        llm_backend tfast https://res-tfast.openai.azure.com
                    deployment=dep-tfast address=127.0.0.1:$p{tfast}
                    priority=2 key_file=$dir/tfast.key tpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;
        listen 127.0.0.1:$h2 http2;

${\ location('pool', 'after=300ms max=100%',
             'llm_limit $http_x_app tpm=100k;') }
${\ location('capped', 'after=100ms max=20%') }
${\ location('full', 'after=100ms max=100%') }
${\ location('auto', 'after=auto max=100%') }
${\ location('waiting', 'after=800ms max=100%', 'llm_wait 5s;') }
${\ location('waitfill', 'after=100ms max=100%', '', 'waiting') }
${\ location('logsub', 'after=300ms max=100%', 'log_subrequest on;') }
${\ location('dead', 'after=300ms max=100%', 'error_page 502 /oops;') }

        location = /oops {
            internal;
            return 200 "custom error page\n";
        }

        # over TLS, each attempt with its own Host, name, key and path,
        # with nothing of them in the location
        location /tls/ {
            llm_route tls;
            llm_hedge after=300ms max=100%;
            rewrite ^/tls(/.*)\$ \$1 break;
            proxy_pass https://tls;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            add_header X-Backend \$llm_backend always;
        }

        location = /status {
            llm_status;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 50 });
my $sbody = json_encode({ messages => [ { role => 'user',
                                          content => 'hello there' } ],
                          max_tokens => 50, stream => JSON::PP::true });

sub pool {
    my ($name) = @_;
    my ($s) = llm_status($listen);
    my ($pool) = grep { $_->{name} eq $name } @{ $s->{pools} };
    return $pool;
}

sub backend {
    my ($pool, $name) = @_;
    my ($b) = grep { $_->{name} eq $name } @{ pool($pool)->{backends} };
    return $b;
}

sub last_record {
    my ($dep) = @_;
    return $t->sim_stats->{deployments}{$dep}{recent}[-1];
}

sub timed_post {
    my ($uri, $b, %hdr) = @_;
    my $t0 = time;
    my @r = http_post($listen, $uri, $b, %hdr);
    return (time - $t0, @r);
}

# a JSON reply: the first attempt (slow, priority 1) is late, the second
# (fast) answers; the client waits about 300 + 100 ms, not 2 s

my $before = pool('pool');
my ($el, $st, $h, $b) = timed_post("/pool$chat", $body, 'X-App' => 'a');
is($st, 200, 'JSON: 200');
is($h->{'x-backend'}, 'fast', 'JSON: the second attempt answered');
is($h->{'x-hedge'}, 'won', '$llm_hedge says the hedge won');
ok($el >= 0.35 && $el < 1.2, sprintf 'JSON: answered in %.3f s', $el);
like($b, qr/"usage":\{/, 'the reply whole');

ok(wait_for(3, sub { (last_record('slow') // {})->{client_closed} }),
   'the slow backend saw its connection closed');
my $slow = last_record('slow');
my $fast = last_record('fast');
my $gap = $slow->{closed_at} - $fast->{head_at};
diag(sprintf 'loser closed %.1f ms after the winner\'s first byte',
             $gap * 1000);
ok($gap < 0.05, 'closed at once, not when the slow backend answers');

my $after = pool('pool');
is($after->{hedges} - $before->{hedges}, 1, 'llm_status: one hedge');
is($after->{hedges_won} - $before->{hedges_won}, 1, 'won');
is($after->{hedges_cancelled} - $before->{hedges_cancelled}, 1,
   'one attempt cancelled');
my $sb = backend('pool', 'slow');
my $fb = backend('pool', 'fast');
is($after->{hedge_tokens}, $sb->{window_tokens},
   'the cancelled attempt\'s charge is the hedge\'s price');
ok($sb->{window_tokens} > 50, 'the slow backend keeps its charge');
is($sb->{in_flight} + $fb->{in_flight}, 0, 'nothing left in flight');
is($fb->{tokens}{completion}, 5, 'the winner\'s usage is counted');
is($sb->{tokens}{completion}, 0, 'the loser has none');
is($sb->{responses}{'2xx'} // 0, 0, 'the loser is no response');
is($fb->{responses}{'2xx'}, 1, 'the winner is');

my $c = status_consumer($listen, 'a');
is($c->{requests}, 1, 'the consumer is charged for one request');
is($c->{window_tokens}, $fb->{tokens}{prompt} + 5,
   'and its window holds the winner\'s usage');

# a stream: the slow backend sends its header and its first events at
# once, its text after 2 s; the race is to the text, and the client
# gets the fast stream's bytes exactly

my ($dst, $dh, $direct) = LLMTest::post_host($p{fast}, 'fast.example',
                                             $chat, $sbody,
                                             'api-key' => 'key-fast');
is($dst, 200, 'the fast stream fetched directly');

($el, $st, $h, $b) = timed_post("/pool$chat", $sbody);
is($st, 200, 'stream: 200');
is($h->{'x-backend'}, 'fast', 'stream: the second attempt answered');
ok($el < 1.5, sprintf 'stream: ended in %.3f s', $el);
is($b, $direct, 'stream: byte for byte the fast backend\'s');
my @ev = LLMTest::sse_events($b);
is($ev[-1]{data}, '[DONE]', 'stream: whole');
$slow = last_record('slow');
ok($slow->{client_closed}, 'stream: the slow attempt was cancelled');

# over TLS with keepalive, twice: the hedge carries its own backend's
# Host, TLS name, key and deployment path

for my $i (1, 2) {
    ($el, $st, $h, $b) = timed_post("/tls$chat", $body);
    is($st, 200, "TLS $i: 200");
    is($h->{'x-backend'}, 'tfast', "TLS $i: the second attempt answered");
    ok($el < 1.2, sprintf "TLS $i: in %.3f s", $el);
}
$fast = last_record('tfast');
is($fast->{host}, 'res-tfast.openai.azure.com', 'TLS: the hedge\'s Host');
is($fast->{sni}, 'res-tfast.openai.azure.com', 'TLS: its server name');
like($fast->{path}, qr{^/openai/deployments/dep-tfast/},
     'TLS: its deployment\'s path');
is($t->sim_stats->{deployments}{tfast}{status}{401} // 0, 0,
   'TLS: its key');
ok(wait_for(3, sub { (last_record('tslow') // {})->{client_closed} }),
   'TLS: the first attempt was cancelled');

# two hedged requests on one client connection: the connection is kept
# alive after the first, as after any request

{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen) or die;
    binmode $s;
    my @got;
    for my $i (1, 2) {
        print $s "POST /pool$chat HTTP/1.1\r\nHost: localhost\r\n"
                 . "Content-Type: application/json\r\n"
                 . "Content-Length: " . length($body) . "\r\n\r\n$body";
        my $buf = '';
        my $sel = IO::Select->new($s);
        while ($sel->can_read(5)) {
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
            last if LLMTest::response_complete($buf);
        }
        push @got, [LLMTest::parse_response($buf)];
    }
    close $s;
    is($got[$_][0], 200, 'client keepalive: request ' . ($_ + 1) . ': 200')
        for 0, 1;
    is($got[1][1]{'x-backend'}, 'fast',
       'client keepalive: the second request hedged too');
}

# an HTTP/2 client: the same race, the same bytes

SKIP: {
    skip 'no curl with HTTP/2', 4
        unless `curl --version 2>/dev/null` =~ /HTTP2/;

    # nginx's own HTTP/2 code writes its SETTINGS frame unaligned, which
    # a build with UBSan stops at, hedging or not
    skip 'HTTP/2 in a sanitizer build', 4
        if `$ENV{LLM_NGINX} -V 2>&1` =~ /-fsanitize=/;
    open my $fh, '>', "$dir/stream.json" or die;
    print $fh $sbody;
    close $fh;
    my $t0 = time;
    my $out = `curl -s --http2-prior-knowledge -D $dir/h2.head -o $dir/h2.body --max-time 10 -H 'Content-Type: application/json' --data-binary \@$dir/stream.json 'http://127.0.0.1:$h2/pool$chat'`;
    my $h2el = time - $t0;
    my $head = $t->read_file('h2.head');
    like($head, qr{^HTTP/2 200}m, 'HTTP/2: 200');
    like($head, qr/^x-backend: fast\r?$/mi, 'HTTP/2: the second answered');
    ok($h2el < 1.5, sprintf 'HTTP/2: in %.3f s', $h2el);
    ok($t->read_file('h2.body') eq $direct,
       'HTTP/2: byte for byte the fast backend\'s stream');
}

# the first attempt on time: no hedge at all

$t->sim_update('slow', { ttft_ms => [50, 50] });
$before = pool('pool');
($el, $st, $h, $b) = timed_post("/pool$chat", $body);
is($st, 200, 'on time: 200');
is($h->{'x-backend'}, 'slow', 'on time: the first backend answered');
ok(!exists $h->{'x-hedge'}, 'on time: not hedged');
is(pool('pool')->{hedges}, $before->{hedges}, 'on time: no hedge counted');

# the first attempt late, the second later still: the first wins

$t->sim_update('slow', { ttft_ms => [600, 600] });
$t->sim_update('fast', { ttft_ms => [1500, 1500] });
$before = pool('pool');
($el, $st, $h, $b) = timed_post("/pool$chat", $body);
is($st, 200, 'first wins: 200');
is($h->{'x-backend'}, 'slow', 'first wins: the first backend answered');
is($h->{'x-hedge'}, 'lost', 'first wins: $llm_hedge says the hedge lost');
ok($el < 1.2, sprintf 'first wins: in %.3f s', $el);
ok(wait_for(3, sub { (last_record('fast') // {})->{client_closed} }),
   'first wins: the hedge was cancelled');
$after = pool('pool');
is($after->{hedges} - $before->{hedges}, 1, 'first wins: one hedge');
is($after->{hedges_won}, $before->{hedges_won}, 'first wins: not won');
$t->sim_update('fast', { ttft_ms => [100, 100] });

# the second attempt fails (a 500) while the first runs: it steps
# aside, and the first answers

$t->sim_update('slow', { ttft_ms => [1000, 1000] });
$t->sim_update('fast', { faults => { 500 => 1 } });
($el, $st, $h, $b) = timed_post("/pool$chat", $body);
is($st, 200, 'hedge fails: 200');
is($h->{'x-backend'}, 'slow', 'hedge fails: the first attempt answered');
is($h->{'x-hedge'}, 'lost', 'hedge fails: lost');
like($b, qr/^\{"choices"/,
     'hedge fails: nothing of the 500 reached the client');
$t->sim_update('fast', { faults => { 500 => 0 } });

# the first attempt fails before the delay: it is the answer

$t->sim_update('slow', { faults => { 500 => 1 } });
$before = pool('pool');
($st, $h, $b) = http_post($listen, "/pool$chat", $body);
is($st, 500, 'first fails at once: its 500');
ok(!exists $h->{'x-hedge'}, 'first fails at once: no hedge');
is(pool('pool')->{hedges}, $before->{hedges}, 'first fails at once: none');
$t->sim_update('slow', { faults => { 500 => 0 } });

# a long stream to a client that reads late: the winner's bytes wait
# for the client, none lost.  The simulator builds the 40,000 events of
# the fast stream before its first byte, which on a loaded machine took
# longer than the 1.7 s a 2 s first token of slow left it (slow won, a
# short stream): slow is given 10 s, so that fast wins the race as meant

$t->sim_update('slow', { ttft_ms => [10000, 10000] });
$t->sim_update('fast', { completion_tokens => 40000,
                         tokens_per_s => 1000000 });
my $long = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 50000, stream => JSON::PP::true });
($dst, $dh, $direct) = LLMTest::post_host($p{fast}, 'fast.example', $chat,
                                          $long, 'api-key' => 'key-fast');
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen) or die;
    binmode $s;
    print $s post_raw("/pool$chat", $long);
    sleep 1.5;
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10)) {
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        last if LLMTest::response_complete($buf);
    }
    ($st, $h, $b) = LLMTest::parse_response($buf);
}
is($st, 200, 'slow reader: 200');
ok(length($b) > 5_000_000, 'slow reader: a long stream (' . length($b)
                           . ' bytes)');
ok($b eq $direct, 'slow reader: byte for byte the fast backend\'s');
$t->sim_update('fast', { completion_tokens => 5, tokens_per_s => 200 });

# max=20%: each request earns a fifth of a hedge

$t->sim_update('slow', { ttft_ms => [400, 400] });
my @who;
for (1 .. 10) {
    ($st, $h) = http_post($listen, "/capped$chat", $body);
    push @who, $h->{'x-backend'};
}
is(pool('capped')->{hedges}, 2, 'max=20%: two hedges in ten requests');
is(scalar(grep { $_ eq 'fast' } @who), 2, 'max=20%: two answered by them');

# no room for a second charge: no hedge, the first attempt answers

$t->sim_update('slow', { ttft_ms => [500, 500] });
($el, $st, $h) = timed_post("/full$chat",
                            json_encode({ messages => [ { role => 'user',
                                            content => 'hello there' } ],
                                          max_tokens => 2000 }));
is($st, 200, 'no room: 200');
is($h->{'x-backend'}, 'slow', 'no room: the first backend answered');
is(pool('full')->{hedges}, 0, 'no room: no hedge');
is(backend('full', 'fast')->{window_tokens}, 0, 'no room: nothing charged');

# after=auto: no hedge until the first backend has 16 first-token
# times; then the slow tail beyond their 95th percentile is hedged

$t->sim_update('slow', { ttft_ms => [600, 600] });
($el, $st, $h) = timed_post("/auto$chat", $body);
is($h->{'x-backend'}, 'slow', 'auto, no history: the first backend');
ok(!exists $h->{'x-hedge'}, 'auto, no history: not hedged');
$t->sim_update('slow', { ttft_ms => [100, 100] });
for (1 .. 19) {
    ($st, $h) = http_post($listen, "/auto$chat", $body);
}
ok(!exists $h->{'x-hedge'}, 'auto: first tokens on time are not hedged');
$t->sim_update('slow', { ttft_ms => [2000, 2000] });
($el, $st, $h) = timed_post("/auto$chat", $body);
is($st, 200, 'auto, a late first token: 200');
is($h->{'x-backend'}, 'fast', 'auto: hedged, the second answered');
ok($el < 0.8, sprintf 'auto: after about the 95th percentile, in %.3f s',
                      $el);
is(pool('auto')->{hedges}, 1, 'auto: one hedge');

# llm_wait: a request that waited for room is hedged like any other

$t->sim_update('slow', { ttft_ms => [2000, 2000] });
{
    my $big = json_encode({ messages => [ { role => 'user',
                                            content => 'hello there' } ],
                            max_tokens => 1500 });
    # each backend's window (2,000 tokens in 3 s) holds one such request:
    # the first fills both, its hedge after 100 ms, so that the fast
    # backend has room again well before the second one's hedge
    ($st, $h) = http_post($listen, "/waitfill$chat", $big);
    is($st, 200, 'llm_wait: the first request fills the window');
    is($h->{'x-backend'}, 'fast', 'llm_wait: hedged on fast');
    my $t0 = time;
    ($st, $h) = http_post($listen, "/waiting$chat", $big);
    my $w = time - $t0;
    is($st, 200, 'llm_wait: the second one, after waiting');
    ok($w > 1.5, sprintf 'llm_wait: it waited (%.3f s in all)', $w);
    is($h->{'x-hedge'}, 'won', 'llm_wait: and was hedged');
}

# a reply cut after its header (the backend closes): the client's
# connection is closed too, not told the reply is whole

$t->sim_update('slow', { ttft_ms => [2000, 2000] });
$t->sim_update('fast', { faults => { cut => 1 } });
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen) or die;
    binmode $s;
    print $s "POST /pool$chat HTTP/1.1\r\nHost: localhost\r\n"
             . "Content-Type: application/json\r\n"
             . "Content-Length: " . length($sbody) . "\r\n\r\n$sbody";
    my ($raw, $eof) = ('', 0);
    my $sel = IO::Select->new($s);
    while ($sel->can_read(5)) {
        my $n = sysread($s, $raw, 65536, length $raw);
        if (!$n) { $eof = 1; last }
    }
    close $s;
    like($raw, qr{^HTTP/1\.1 200}, 'cut: the header went out');
    unlike($raw, qr/\r\n0\r\n\r\n$/, 'cut: no last chunk');
    ok($eof, 'cut: the connection closed');
}
$t->sim_update('fast', { faults => { cut => 0 } });

# the last attempt fails before any byte: the main request answers, and
# the location's error_page applies

{
    my $t0 = time;
    ($st, $h, $b) = http_post($listen, "/dead$chat", $body);
    is($st, 502, 'both backends down: 502');
    is($b, "custom error page\n", 'the location\'s error_page');
    ok(time - $t0 < 3, 'at once');
    $t->allow_log(qr/connect\(\) failed/);
}

# log_subrequest on: an attempt's log does not settle it twice

$t->sim_update('slow', { ttft_ms => [50, 50] });
($st, $h) = http_post($listen, "/logsub$chat", $body);
is($st, 200, 'log_subrequest: 200');
is(backend('logsub', 'slow')->{responses}{'2xx'}, 1,
   'log_subrequest: one response counted');
is(backend('logsub', 'slow')->{in_flight}, 0,
   'log_subrequest: none in flight');

# the client goes away while both attempts run: both are cancelled

$t->sim_update('slow', { ttft_ms => [3000, 3000] });
$t->sim_update('fast', { ttft_ms => [3000, 3000] });
{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen) or die;
    print $s post_raw("/pool$chat", $body);
    sleep 0.6;
    close $s;
}
ok(wait_for(3, sub {
       (last_record('slow') // {})->{client_closed}
       && (last_record('fast') // {})->{client_closed} }),
   'client gone: both attempts cancelled');
ok(wait_for(2, sub {
       backend('pool', 'slow')->{in_flight} == 0
       && backend('pool', 'fast')->{in_flight} == 0 }),
   'client gone: nothing left in flight');

# the log

my @log = grep { !/^200 - / } split /\n/, $t->read_file('hedge.log');
diag($_) for @log;
like($log[0], qr/^200 fast "won" 2 "127\.0\.0\.1:$p{fast}"$/,
     'the log: the winner, the outcome, both attempts, its address');

# configuration errors

for my $bad ('after=0', 'max=10%', 'after=automatic', 'after=1s max=0%', 'after=1s max=101%',
             'after=1s max=10', 'sometimes') {
    my ($rc, $err) = $t->test_conf(<<"END");
    llm_zone llm:1m;
${\ upstream('pool', '1m') }
    server {
        listen 127.0.0.1:$listen;
        location / { llm_route pool; llm_hedge $bad; proxy_pass http://pool; }
    }
END
    ok($rc != 0 && $err =~ /llm_hedge|invalid parameter/,
       "\"llm_hedge $bad\" refused");
}

$t->done;
