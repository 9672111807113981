#!/usr/bin/perl

# conf-examples/ptu-spillover.conf, run as written (ports, addresses,
# files and CA ours) in front of the simulator over TLS: the PTU takes
# requests while it has room; its 429 spills the request over to a
# Standard deployment within the same client request, and the PTU rests
# for its retry-after while the Standard ones serve; then the PTU takes
# over again. The PTU's window holds what its requests used, a Standard
# window what Azure charged at arrival (the simulator's ground truth).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/ptu-spillover.conf';

my %sim = $t->start_sim_for_example($file, all => { completion_tokens => 15 },
    deployments => { 'ptu-eastus' => { overload_retry_s => 1 } });
my $port = $t->start_example($file, %sim);
my ($listen, $status) = @$port{qw(8080 8090)};

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

# Japanese: far more tokens than characters / 4
my $body = json_encode({ max_tokens => 200, messages => [ { role => 'user',
    content => "\x{4eca}\x{65e5}\x{306f}\x{826f}\x{3044}\x{5929}\x{6c17}"
               . "\x{3067}\x{3059}\x{306d}\x{3002}" x 8 } ] });

my $n = 0;
sub call {
    my ($st, $h, $raw) = http_post($listen, $chat, $body);
    my $log = {};
    for (1 .. 50) {
        my @l = grep { length } split /\n/,
                $t->read_file('logs/llm_access.log');
        if (@l > $n) { $n = @l; $log = json_decode($l[-1]); last }
        sleep 0.05;
    }
    return ($st, $h->{'x-ms-region'} // '', $log);
}

sub backends {
    my ($st, $h, $raw) = http_get($status, '/llm/status');
    my ($pool) = @{ json_decode($raw)->{pools} };
    return { map { $_->{name} => $_ } @{ $pool->{backends} } };
}

my ($st, $who, $log) = call();
is($st, 200, 'first request: 200');
is($who, 'ptu-eastus', '... served by the PTU');
is($log->{attempts}, 1, '... at the first attempt');

{
    my $truth = $t->sim_stats->{deployments}{'ptu-eastus'};
    # nginx writes the access log line (call() waits for it) before the
    # module settles the request in the same log phase, and the status
    # may come from the other worker between the two; the PTU's window
    # is corrected to the usage in the step that counts its reply
    my $b;
    wait_for(3, sub { $b = backends()->{'ptu-eastus'};
                      $b->{responses}{'2xx'} == 1 });
    is($b->{window_tokens},
       $truth->{prompt_tokens} + $truth->{completion_tokens},
       'PTU window: the tokens the request used, not its max_tokens');
}

$t->sim_update('ptu-eastus', { faults => { overload429 => 1 } });

($st, $who, $log) = call();
is($st, 200, 'PTU says 429: the client still gets 200');
like($who, qr/^(eastus2|swedencentral)$/, "... from a Standard one ($who)");
is($log->{attempts}, 2, '... at the second attempt');
is($log->{throttle}, 'backend', '... after a backend\'s 429');
is($log->{upstream_status}, '429, 200', '... upstream statuses 429, 200');

($st, $who, $log) = call();
is($st, 200, 'PTU resting: 200');
like($who, qr/^(eastus2|swedencentral)$/, "... from a Standard one ($who)");
is($log->{attempts}, 1, '... directly: the PTU is not tried');

{
    my $truth = $t->sim_stats->{deployments};
    my $b = backends();
    # one request each, one message: the README's rule adds 3 a message
    # and 3 for the reply to the characters / 4 that the simulator, like
    # Azure, charges; never less than Azure
    for my $name (qw(eastus2 swedencentral)) {
        my ($ours, $azure) = ($b->{$name}{window_tokens},
                              $truth->{$name}{tokens_charged});
        ok($ours >= $azure && $ours <= $azure + 6,
           "$name window $ours: Azure's charge $azure, + 3 + 3 at most");
    }
    cmp_ok($truth->{eastus2}{tokens_charged}
           + $truth->{swedencentral}{tokens_charged}, '>', 2 * 200,
           'Standard: max_tokens stays charged');
    ok($b->{'ptu-eastus'}{cooldown_ms} > 0, 'the PTU cools down');
    is($b->{'ptu-eastus'}{backend_throttled}, 1, 'the PTU\'s 429 is counted');
}

$t->sim_update('ptu-eastus', { faults => { overload429 => 0 } });
sleep 0.1 while backends()->{'ptu-eastus'}{cooldown_ms} > 0;

($st, $who) = call();
is($st, 200, 'after the cool-down: 200');
is($who, 'ptu-eastus', '... the PTU again');

$t->done;
