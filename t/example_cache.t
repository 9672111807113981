#!/usr/bin/perl

# conf-examples/cache-repeats.conf, run as written in front of the
# simulator: an exact repeat is answered by nginx's cache with the same
# bytes, and no deployment or consumer is charged for it (llm_status and
# the simulator's count before and after); another "user" is the same
# request, another temperature is not; a stream is never answered with
# the stored JSON reply, nor the JSON request with a stream.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/cache-repeats.conf';

my %sim = $t->start_sim_for_example($file,
                                    all => { completion_tokens => 7 });
my $port = $t->start_example($file, %sim);
my ($listen, $status) = @$port{qw(8080 8090)};

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

sub body {
    my (%o) = @_;
    return json_encode({ messages => [ { role => 'user',
                                         content => 'What is nginx?' } ],
                         max_tokens => 100, temperature => 0, %o });
}

# the deployment and the consumer once the last request is settled: the
# client has its reply before nginx's log phase settles the charge, and
# the status request may reach another worker first.  The settlement
# ends with the consumers (ngx_http_llm_charge_settle: the backend's
# in_flight drops first, its usage follows, the consumers' last), so
# $settled says when the consumer's figures are final
sub backend {
    my ($settled) = @_;
    my ($b, $c);
    wait_for(3, sub {
        my ($st, $h, $raw) = http_get($status, '/llm/status');
        my $s = json_decode($raw);
        ($b, $c) = ($s->{pools}[0]{backends}[0], $s->{consumers}[0]{top}[0]);
        return $b->{in_flight} == 0 && $c && $settled->($c);
    });
    return ($b, $c);
}

sub sent { $t->sim_stats->{deployments}{eastus}{requests} }

my ($st, $h, $first) = http_post($listen, $chat, body(), 'X-App' => 'a');
is($st, 200, 'first: 200');
is($h->{'x-cache'}, 'MISS', 'first: from the deployment');
# the deployment's reply settled: its usage is the consumer's
my ($b0, $c0) = backend(sub { $_[0]{tokens}{completion} > 0 });
my $sent = sent();
is($sent, 1, 'the deployment answered once');

my $b;
($st, $h, $b) = http_post($listen, $chat, body(), 'X-App' => 'a');
is($st, 200, 'repeat: 200');
is($h->{'x-cache'}, 'HIT', 'repeat: from the cache');
is($b, $first, 'repeat: the same answer, byte for byte');
is(sent(), $sent, 'repeat: the deployment was not asked');
# the repeat settled: the request admission counted is given back (a
# consumer charged for it keeps it, and fails below after 3 s)
my ($b1, $c1) = backend(sub { $_[0]{requests} == $c0->{requests} });
is($b1->{window_tokens}, $b0->{window_tokens},
   'repeat: no backend charged');
is($b1->{in_flight}, 0, 'repeat: nothing in flight');
is($c1->{window_tokens}, $c0->{window_tokens},
   'repeat: the consumer not charged');
is($c1->{requests}, $c0->{requests}, 'repeat: nor counted a request');

($st, $h) = http_post($listen, $chat, body(user => 'someone-else'));
is($h->{'x-cache'}, 'HIT', 'another "user": the same question');

($st, $h) = http_post($listen, $chat, body(temperature => 0.5));
is($h->{'x-cache'}, 'MISS', 'another temperature: another question');
is(sent(), $sent + 1, 'which the deployment answered');

# streams and JSON never cross

for (1, 2) {
    ($st, $h, $b) = http_post($listen, $chat, body(stream => JSON::PP::true));
    is($st, 200, "stream $_: 200");
    isnt($h->{'x-cache'}, 'HIT', "stream $_: not the stored JSON");
    like($h->{'content-type'}, qr{^text/event-stream}, "stream $_: a stream");
    like($b, qr/^data: /, "stream $_: events");
}
($st, $h, $b) = http_post($listen, $chat, body());
is($h->{'x-cache'}, 'HIT', 'JSON after streams: the stored JSON');
like($h->{'content-type'}, qr{^application/json}, '... JSON');
is($b, $first, '... the same answer');

my @log = grep { / (?:HIT|MISS) / } split /\n/,
          $t->read_file('logs/llm_access.log');
like($log[1], qr/ 200 HIT eastus [0-9a-f]{64}$/,
     'the log: the cache\'s status, the key');

$t->done;
