#!/usr/bin/perl

# conf-examples/streaming.conf, run as written (ports, addresses, files
# and CA ours) in front of the simulator over TLS: a stream's events
# reach the client as they are generated, not at the end; its usage is
# "reported" with include_usage and "counted" without; the access log
# has $llm_ttft_ms, and it matches the backend's time to first token.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/streaming.conf';

# 30 tokens at 60 a second after 300 ms: half a second of events
my %sim = $t->start_sim_for_example($file, all => {
    ttft_ms => [300, 300], tokens_per_s => 60, completion_tokens => 30 });
my $port = $t->start_example($file, %sim);
my $listen = $port->{8080};

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

# a streamed request; returns (status, headers, body, [ time of every
# read that brought a data: line, from the request's start ])
sub stream {
    my ($body) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $listen, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    my $t0 = time;
    print $s LLMTest::raw_post('localhost', $chat, json_encode($body));
    my ($buf, @at) = ('');
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10)) {
        my $before = () = $buf =~ /^data:/mg;
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        my $now = () = $buf =~ /^data:/mg;
        push @at, time - $t0 if $now > $before;
        last if LLMTest::response_complete($buf);
    }
    close $s;
    return (LLMTest::parse_response($buf), \@at);
}

sub last_log {
    my $line = $t->next_log('logs/llm_stream.log');
    return defined $line ? json_decode($line) : {};
}

my $ask = { messages => [ { role => 'user', content => 'tell me a story' } ],
            max_tokens => 100, stream => JSON::PP::true() };

{
    my ($st, $h, $body, $at) = stream({ %$ask,
        stream_options => { include_usage => JSON::PP::true() } });
    is($st, 200, 'stream: 200');
    like($h->{'content-type'}, qr{^text/event-stream}, 'stream: SSE');
    my @events = LLMTest::sse_events($body);
    my @deltas = grep {
        my $e = $_->{data} eq '[DONE]' ? {} : json_decode($_->{data});
        length(($e->{choices}[0]{delta}{content}) // '');
    } @events;
    is(scalar @deltas, 30, 'stream: 30 deltas');
    is($events[-1]{data}, '[DONE]', 'stream: [DONE] last');
    ok(@$at >= 5, 'stream: the events came in ' . scalar(@$at) . ' reads');
    cmp_ok($at->[-1] - $at->[0], '>', 0.25,
           'stream: the first event came long before the last')
        or diag "@$at";

    my $log = last_log();
    like($log->{ttft_ms}, qr/^\d+$/, "log: ttft_ms $log->{ttft_ms}");
    cmp_ok($log->{ttft_ms}, '>=', 280, 'log: ttft_ms is the backend\'s');
    cmp_ok($log->{ttft_ms}, '<', $log->{request_time} * 1000 - 200,
           'log: ttft_ms well before the end of the stream');
    is($log->{usage_source}, 'reported', 'log: usage reported');
    is($log->{completion_tokens}, 30, 'log: 30 completion tokens');
}

{
    my ($st, $h, $body) = stream($ask);
    is($st, 200, 'stream without usage: 200');
    my $log = last_log();
    is($log->{usage_source}, 'counted', 'log: usage counted');
    is($log->{completion_tokens}, 30, 'log: 30 deltas counted');
    like($log->{ttft_ms}, qr/^\d+$/, 'log: ttft_ms');
}

$t->done;
