#!/usr/bin/perl

# tools/aoai-sim: rate limits as docs/azure.md sections 1-4 describe them.
# Standard: 6 RPM per 1000 TPM counted over a rolling 10 s window, arrival
# charges of ceil(chars / 4) + max tokens x n in a rolling 60 s window,
# 429 bodies and headers, nothing charged for a 429; PTU: a leaky bucket
# with a utilisation header, corrected to usage at completion.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;
my $speed = 10;          # 60 s token window = 6 s, 10 s request window = 1 s

my %dep = (
    calls  => { tpm => 6000 },
    tokens => { tpm => 10000, rpm => 6000 },
    ptu    => { tpm => 6000, kind => 'ptu', completion_tokens => 9000,
                tokens_per_s => 1e6 },
);
my $ctl = free_port();
my @deployments;
for my $name (sort keys %dep) {
    my $d = $dep{$name};
    %$d = (name => $name, port => free_port(),
           host => "res-$name.openai.azure.com", deployment => 'gpt-4o',
           model => 'gpt-4o-2024-11-20', api_key => "key-$name",
           ttft_ms => [0, 0], tokens_per_s => 1000, completion_tokens => 5,
           default_max_tokens => 640, seed => 1, %$d);
    push @deployments, $d;
}
$t->start_sim({ control_port => $ctl, deployments => \@deployments },
              '--speed', $speed);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

sub call {
    my ($name, $uri, $body, %hdr) = @_;
    my $d = $dep{$name};
    my ($st, $h, $b) = LLMTest::post_host($d->{port}, $d->{host}, $uri,
                                          json_encode($body),
                                          'api-key' => $d->{api_key}, %hdr);
    my $j = eval { json_decode($b) };
    return ($st, $h, $j, $b);
}

sub hello { { messages => [ { role => 'user', content => 'hello' } ], @_ } }

my $stats;

###########################################################################
# request window: tpm 6000 -> 36 RPM -> 6 requests per rolling 10 s

{
    my (@st, @rem, @remt);
    for (1 .. 7) {
        my ($st, $h, $j) = call('calls', $chat, hello(max_tokens => 10));
        push @st, $st;
        push @rem, $h->{'x-ratelimit-remaining-requests'};
        push @remt, $h->{'x-ratelimit-remaining-tokens'};
        if ($st == 429) {
            is($h->{'x-ratelimit-limit-requests'}, 6, 'limit-requests is per 10 s');
            is($h->{'x-ratelimit-limit-tokens'}, 6000, 'limit-tokens');
            is($j->{error}{code}, '429', '429 code is the string "429"');
            like($j->{error}{message}, qr/^Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier\. Please retry after (\d+) seconds?\./,
                 'call rate limit message');
            my ($n) = $j->{error}{message} =~ /retry after (\d+) second/;
            like($h->{'retry-after'}, qr/^\d+$/, 'retry-after is an integer');
            ok($h->{'retry-after'} >= 1, 'retry-after >= 1');
            is($n, $h->{'retry-after'}, 'message names the retry-after value');
            ok($h->{'retry-after-ms'} > 0 && $h->{'retry-after-ms'} <= 1000,
               "retry-after-ms $h->{'retry-after-ms'} within the 1 s (real) request window");
            is($h->{'policy-id'}, 'DeploymentRatelimit-Call', 'policy-id Call');
            sleep(($h->{'retry-after-ms'} + 50) / 1000);
        }
    }
    is("@st", '200 200 200 200 200 200 429', 'the 7th request within 10 s gets 429');
    is("@rem", '5 4 3 2 1 0 0', 'x-ratelimit-remaining-requests counts down');
    # "hello" + "user" = 9 characters -> 3, + max_tokens 10 = 13 per request
    is("@remt", '5987 5974 5961 5948 5935 5922 5922',
       'token charges add up, the 429 is not charged');

    my ($st) = call('calls', $chat, hello(max_tokens => 10));
    is($st, 200, 'room again once the oldest request left the 10 s window');

    $stats = $t->sim_stats->{deployments}{calls};
    is($stats->{status}{200}, 7, 'stats: 7 answered');
    is($stats->{status}{429}, 1, 'stats: one 429');
    is($stats->{throttled_requests}, 1, 'stats: throttled_requests');
    is($stats->{throttled_tokens}, 0, 'stats: no token throttling');
    is($stats->{tokens_charged}, 7 * 13, 'stats: tokens charged, 429 excluded');
    is($stats->{requests}, 8, 'stats: requests');
}

###########################################################################
# token window: arrival charges = ceil(role + content chars / 4) + max x n

my $t_first = time;
my $rem = 10000;
my @charges = (
    [ 'hello, max_tokens 1000', $chat, hello(max_tokens => 1000), 3 + 1000 ],
    # 7 Japanese characters + "user": 11 code points -> 3, far below the
    # real token count (docs/azure.md, 7), which the sim reports as usage
    [ 'Japanese', $chat,
      { messages => [ { role => 'user', content => 'こんにちは世界' } ],
        max_tokens => 500 }, 3 + 500, { prompt_tokens => 3 + 1 + 7 + 3 } ],
    [ 'max_completion_tokens wins over max_tokens', $chat,
      { messages => [ { role => 'system', content => 'You are terse.' },
                      { role => 'user', content => 'hi' } ],
        max_completion_tokens => 100, max_tokens => 999 }, 7 + 100 ],
    [ 'n multiplies the reserve', $chat, hello(max_tokens => 100, n => 3),
      3 + 300, { completion_tokens => 15 } ],
    [ 'default_max_tokens when none is named', $chat, hello(), 3 + 640 ],
    [ 'embeddings: ceil(chars / 4) only',
      '/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21',
      { input => 'abcdefghij' }, 3, { prompt_tokens => 3, total_tokens => 3 } ],
    [ 'embeddings: a list of inputs',
      '/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21',
      { input => [ 'abc', 'de', '日本語' ] }, 2, { prompt_tokens => 5 } ],
    [ 'legacy completions: best_of multiplies',
      '/openai/deployments/gpt-4o/completions?api-version=2024-10-21',
      { prompt => 'Say this', max_tokens => 50, best_of => 2 }, 2 + 100 ],
    [ 'Responses API: input + max_output_tokens', '/openai/v1/responses',
      { model => 'gpt-4o', input => 'hello', max_output_tokens => 200 }, 3 + 200,
      { input_tokens => 9, output_tokens => 5, total_tokens => 14 } ],
);
my $charged = 0;
for my $c (@charges) {
    my ($what, $uri, $body, $charge, $usage) = @$c;
    my ($st, $h, $j) = call('tokens', $uri, $body);
    $rem -= $charge;
    $charged += $charge;
    is($st, 200, "$what: 200");
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, "$what: charged $charge");
    is($h->{'x-ratelimit-limit-tokens'}, 10000, "$what: limit-tokens");
    is($h->{'x-ratelimit-limit-requests'}, 1000, "$what: limit-requests (rpm 6000 / 6)");
    for my $k (sort keys %{ $usage || {} }) {
        is($j->{usage}{$k}, $usage->{$k}, "$what: usage $k");
    }
}

{
    my ($st, $h, $j) = call('tokens', $chat, hello(n => 3, max_tokens => 100));
    is(scalar @{ $j->{choices} }, 3, 'n=3: three choices');
}
$rem -= 303;
$charged += 303;

# over the limit: 429 "token rate limit", not charged
{
    my ($st, $h, $j) = call('tokens', $chat, hello(max_tokens => $rem + 1));
    my $t429 = time;
    is($st, 429, 'a charge over the remaining tokens gets 429');
    like($j->{error}{message}, qr/have exceeded token rate limit of your current OpenAI S0 pricing tier\. Please retry after \d+ second/,
         'token rate limit message');
    is($h->{'policy-id'}, 'DeploymentRatelimit-Token', 'policy-id Token');
    is($h->{'x-ratelimit-remaining-tokens'}, $rem, '429 reports remaining, charged nothing');
    is($h->{'x-ratelimit-reset-tokens'}, $h->{'retry-after'}, 'x-ratelimit-reset-tokens');
    # room frees when the first charge (1003) leaves the window, 6 s (real)
    # after it was accepted
    my $expect = 6000 - ($t429 - $t_first) * 1000;
    my $ms = $h->{'retry-after-ms'};
    ok(abs($ms - $expect) < 300, "retry-after-ms $ms ~ $expect");
    is($h->{'retry-after'}, int(($ms + 999) / 1000), 'retry-after is retry-after-ms rounded up');

    $stats = $t->sim_stats->{deployments}{tokens};
    is($stats->{tokens_charged}, $charged, 'stats: tokens_charged');
    is($stats->{window_tokens}, $charged, 'stats: window_tokens');
    is($stats->{remaining_tokens}, 10000 - $charged, 'stats: remaining_tokens');
    is($stats->{throttled_tokens}, 1, 'stats: throttled_tokens');
    is($stats->{status}{429}, 1, 'stats: one 429');

    ($st) = call('tokens', $chat, hello(max_tokens => $rem + 1));
    is($st, 429, 'still 429 before the window moves');

    sleep(($ms + 100) / 1000 - (time - $t429));
    ($st, $h) = call('tokens', $chat, hello(max_tokens => $rem + 1));
    is($st, 200, 'room again 60 s (simulated) after the first charge');
    ok($h->{'x-ratelimit-remaining-tokens'} <= 10000 - ($rem + 4),
       'and the new charge is in the window');
}

###########################################################################
# PTU: leaky bucket, 429 at >= 100 % utilisation, corrected to usage

{
    # 9 prompt tokens + 9000 completion tokens: 150 % of 6000
    my $t_ptu = time;
    my ($st, $h, $j) = call('ptu', $chat, hello(max_tokens => 9000));
    is($st, 200, 'PTU: first call admitted below 100 %');
    like($h->{'azure-openai-deployment-utilization'}, qr/^\d+\.\d%$/,
         'PTU: utilisation header');
    is($j->{usage}{prompt_tokens}, 9, 'PTU: usage prompt tokens');
    is($j->{usage}{completion_tokens}, 9000, 'PTU: usage completion tokens');

    ($st, $h, $j) = call('ptu', $chat, hello(max_tokens => 10));
    my $t429 = time;
    is($st, 429, 'PTU: 429 at >= 100 % utilisation');
    my ($u) = ($h->{'azure-openai-deployment-utilization'} // '') =~ /^([\d.]+)%$/;
    ok(defined $u && $u >= 100 && $u <= 151, "PTU: utilisation $u % on the 429");
    # drains 6000 / 60 x 10 = 1000 tokens per real second: 3009 ms to
    # 100 % from the first call's arrival, less what passed before the
    # 429 (measured: a loaded machine may take more than a fixed 300 ms)
    my $ms = $h->{'retry-after-ms'};
    my $lo = 3009 - ($t429 - $t_ptu) * 1000 - 20;
    ok($ms > $lo && $ms <= 3010,
       sprintf "PTU: retry-after-ms $ms until under 100 %% (> %.0f)", $lo);
    is($h->{'retry-after'}, int(($ms + 999) / 1000), 'PTU: retry-after');
    is($j->{error}{code}, '429', 'PTU: Azure error body');
    my $before = $t->sim_stats->{deployments}{ptu}{tokens_charged};
    is($before, 9009, 'PTU: charged prompt + completion, 429 not charged');

    sleep(($ms + 50) / 1000 - (time - $t429));
    $t->sim_update(ptu => { completion_tokens => 10 });
    ($st, $h, $j) = call('ptu', $chat, hello(max_tokens => 3000));
    is($st, 200, 'PTU: admitted again once under 100 %');
    ($u) = $h->{'azure-openai-deployment-utilization'} =~ /^([\d.]+)%$/;
    # admitted just under 100 %, then + (9 + 3000) / 6000 = +50.15 %
    ok($u >= 145 && $u < 151, "PTU: arrival charges prompt + max_tokens ($u %)");
    $stats = $t->sim_stats->{deployments}{ptu};
    is($stats->{tokens_charged} - $before, 9 + 10,
       'PTU: charge corrected to actual usage at completion');
    ok($stats->{utilization} < 100, 'PTU: stats utilisation');
    is($stats->{throttled_tokens}, 1, 'PTU: stats throttled');
}

###########################################################################
# reset clears windows and counters

$t->sim_reset;
$stats = $t->sim_stats->{deployments};
is($stats->{calls}{requests}, 0, 'reset: counters cleared');
is($stats->{tokens}{window_tokens}, 0, 'reset: token window cleared');
is($stats->{tokens}{remaining_tokens}, 10000, 'reset: remaining');
is($stats->{calls}{window_requests}, 0, 'reset: request window cleared');
my ($st, $h) = call('tokens', $chat, hello(max_tokens => 9997));
is($h->{'x-ratelimit-remaining-tokens'}, 0, 'reset: the whole quota is available');

$t->done;
