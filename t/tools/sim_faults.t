#!/usr/bin/perl

# tools/aoai-sim: fault injection (x-sim-fault header, configured and
# live-updated probabilities): 500, 503, overload429, reset, hang,
# garbage, cut.  Faulted requests are not charged, except cut.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Errno qw(ECONNRESET);
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;

my $ctl = free_port();
my %dep = (
    f     => { port => free_port() },
    flaky => { port => free_port(), faults => { 503 => 1 } },
);
my @deployments;
for my $name (sort keys %dep) {
    my $d = $dep{$name};
    %$d = (name => $name, host => "res-$name.openai.azure.com", api_key => "k-$name",
           deployment => 'gpt-4o', ttft_ms => [0, 0], tokens_per_s => 1000,
           completion_tokens => 20, tpm => 60000, seed => 7, %$d);
    push @deployments, $d;
}
$t->start_sim({ control_port => $ctl, deployments => \@deployments }, '--speed', 10);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $hello = json_encode({ messages => [ { role => 'user', content => 'hello' } ],
                          max_tokens => 30 });       # charge 3 + 30
my $stream = json_encode({ messages => [ { role => 'user', content => 'hello' } ],
                           max_tokens => 30, stream => JSON::PP::true() });

sub call {
    my ($name, $fault, $body) = @_;
    my $d = $dep{$name};
    my ($st, $h, $b) = LLMTest::post_host($d->{port}, $d->{host}, $chat, $body // $hello,
                                          'api-key' => $d->{api_key},
                                          $fault ? ('x-sim-fault' => $fault) : ());
    return ($st, $h, (eval { json_decode($b) } || {}), $b);
}

# a request on a raw socket: (bytes received, error of the last read,
# seconds waited); stops at EOF, an error, or after $wait s of silence
sub raw {
    my ($fault, $wait) = @_;
    my $d = $dep{f};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $d->{port})
        or die "connect: $!";
    binmode $s;
    print $s LLMTest::raw_post($d->{host}, $chat, $hello, 'api-key' => $d->{api_key},
                               'x-sim-fault' => $fault);
    my ($buf, $err, $t0) = ('', undef, time);
    my $sel = IO::Select->new($s);
    while ($sel->can_read($wait)) {
        my $n = sysread($s, $buf, 65536, length $buf);
        if (!defined $n) { $err = $! + 0; last }
        last if $n == 0;
    }
    return ($buf, $err, time - $t0, $s);
}

sub remaining { (call('f'))[1]{'x-ratelimit-remaining-tokens'} }

my $rem = remaining();

{
    my ($st, $h, $j) = call('f', '500');
    is($st, 500, 'fault 500: status');
    is($j->{error}{code}, 'server_error', '500: server_error body');
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, '500: not charged');

    ($st, $h, $j) = call('f', '503');
    is($st, 503, 'fault 503: status');
    like($j->{error}{message}, qr/model is currently overloaded/, '503: overloaded message');

    ($st, $h, $j) = call('f', 'overload429');
    is($st, 429, 'overload429: 429');
    like($j->{error}{message}, qr/^System is experiencing high demand/, 'overload429: message');
    is($j->{error}{code}, '429', 'overload429: code');
    is($h->{'retry-after'}, 1, 'overload429: retry-after (2 s simulated, rounded up)');
    is($h->{'retry-after-ms'}, 200, 'overload429: retry-after-ms');
    ok(!exists $h->{'policy-id'}, 'overload429: not a quota policy');
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, 'overload429: not charged');
}

{
    my ($buf, $err) = raw('reset', 3);
    is($buf, '', 'reset: nothing answered');
    is($err, ECONNRESET, 'reset: connection reset by peer');

    ($buf, $err) = raw('garbage', 3);
    ok(length $buf > 16, 'garbage: bytes received');
    unlike($buf, qr{^HTTP/}, 'garbage: not HTTP');
    ok(!defined $err, 'garbage: then closed');

    my ($s, $waited);
    ($buf, $err, $waited, $s) = raw('hang', 0.6);
    is($buf, '', 'hang: nothing within 0.6 s');
    ok($waited >= 0.55, 'hang: and the connection stays open');
    close $s;
    my $status;
    for (1 .. 40) {
        $status = $t->sim_stats->{deployments}{f}{status};
        last if $status->{hang};
        sleep 0.05;
    }
    is($status->{hang}, 1, 'hang: recorded once the client closed');
    is(remaining(), $rem - 33, 'reset, garbage, hang: not charged');
    $rem -= 33;
}

{
    my ($st, $h, $j, $b) = call('f', 'cut');
    is($st, 200, 'cut JSON: 200');
    ok($h->{'content-length'} > length $b, 'cut JSON: fewer bytes than Content-Length');
    ok(!eval { json_decode($b); 1 }, 'cut JSON: not valid JSON');
    $rem -= 33;
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, 'cut JSON: charged (accepted)');

    my $before = $t->sim_stats->{deployments}{f}{completion_tokens};
    ($st, $h, $j, $b) = call('f', 'cut', $stream);
    $rem -= 33;
    is($st, 200, 'cut stream: 200');
    is($h->{'transfer-encoding'}, 'chunked', 'cut stream: chunked');
    like($b, qr/^data: /, 'cut stream: some events');
    unlike($b, qr/\[DONE\]/, 'cut stream: no [DONE]');
    unlike($b, qr/finish_reason":"/, 'cut stream: no finish_reason');
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, 'cut stream: charged');
    my $sent = () = $b =~ /"delta":\{"content":"[^"]+"/g;
    ok($sent > 0 && $sent < 20, "cut stream: stopped half way ($sent of 20 tokens)");
    is($t->sim_stats->{deployments}{f}{completion_tokens} - $before, $sent,
       'cut stream: stats count the tokens sent');

    my $s = $t->sim_stats->{deployments}{f};
    is_deeply($s->{faults}, { 500 => 1, 503 => 1, overload429 => 1, reset => 1,
                              garbage => 1, hang => 1, cut => 2 }, 'stats: faults');
    is_deeply($s->{status}, { 200 => 4, 500 => 1, 503 => 1, 429 => 1, reset => 1,
                              garbage => 1, hang => 1 }, 'stats: status');
    is($s->{throttled_tokens} + $s->{throttled_requests}, 0, 'stats: overload429 is not quota');
}

{
    my ($st, $h, $j) = call('flaky');
    is($st, 503, 'configured fault probability 1: 503');
    ($st) = call('flaky', 'none');
    is($st, 200, 'x-sim-fault: none overrides the configured faults');

    $t->sim_update(f => { faults => { 500 => 1 } });
    my @st = map { (call('f'))[0] } 1 .. 3;
    is("@st", '500 500 500', 'live update: fault probability 1');
    $t->sim_update(f => { faults => { 500 => 0.5 } });
    my %n;
    $n{ (call('f'))[0] }++ for 1 .. 30;
    ok($n{500} && $n{200} && $n{500} + $n{200} == 30,
       "probability 0.5: a mix ($n{500} x 500, $n{200} x 200)");
    $t->sim_update(f => { faults => { 500 => 0 } });
    ($st) = call('f');
    is($st, 200, 'live update: faults off');
    my ($cs) = http_post($ctl, '/sim/deployments/f', '{"faults": {"fire": 1}}');
    is($cs, 400, 'unknown fault refused');
}

$t->done;
