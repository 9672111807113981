#!/usr/bin/perl

# llm_limit budget=amount/day|month: a consumer's money budget, priced by
# llm_price, in front of the simulator.
# - each request is admitted while what the consumer spent this period
#   and what the request may cost at most (its prompt at input=, the
#   completion limit at output=) fit the budget; then 429 in Azure's
#   shape until midnight UTC; llm_status's budget_spent follows every
#   request, corrected to the reply's cost, in JSON and Prometheus;
# - a request that may cost more than the whole budget gets 400; a model
#   without a price is not held back; a failed request costs nothing;
# - two nginx instances sharing a redis-server spend one budget, not one
#   each, and Redis holds it under the consumer's hash;
# - bad lines are refused.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my $sp = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    map { { name => $_, port => $sp, host => 'sim.example',
            deployment => $_, tpm => 10000000, rpm => 100000,
            api_key => 'k', ttft_ms => [0, 0], tokens_per_s => 5000,
            completion_tokens => 7,
            $_ eq 'broken' ? (faults => { 500 => 1 }) : () } }
        qw(gpt-4o free broken) ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $rport = $t->start_redis;

# a prompt token costs 0.001, a completion token 0.002
my $prices = <<'END';
    llm_price gpt-4o input=1000 output=2000;
    llm_price broken input=1000 output=2000;
END

sub conf {
    my ($listen, $zone) = @_;
    return <<"END";
    llm_zone llm:1m $zone;
$prices
    upstream pool {
        llm_balance zone=llm;
        llm_backend b1 http://sim.example:$sp address=127.0.0.1:$sp
                    key_file=$dir/k.key tpm=10m rpm=100k;
    }

    server {
        listen 127.0.0.1:$listen;

        add_header X-Estimate \$llm_tokens_estimate always;
        add_header X-Throttle \$llm_throttle always;

        location /openai/ {
            llm_route pool;
            llm_limit \$http_x_app budget=0.5/day;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location = /status {
            llm_status consumers=10;
        }
    }
END
}

my $listen = free_port();
$t->start_nginx(conf($listen, ''), ports => [$listen]);

sub chat {
    my ($port, $app, %o) = @_;
    my $deployment = delete $o{deployment} // 'gpt-4o';
    return http_post($port,
        "/openai/deployments/$deployment/chat/completions"
        . '?api-version=2024-10-21',
        json_encode({ messages => [ { role => 'user',
                                      content => 'how much is this?' } ],
                      max_tokens => 20, %o }),
        'X-App' => $app);
}

# what the consumer spent, in billionths: once it is $want, or 3 s later.
# The client has its reply before the log phase settles the request,
# and the consumers are settled last: nothing in flight is not enough.
sub spent {
    my ($port, $app, $want) = @_;
    my $v;
    wait_for(3, sub {
        my ($s) = llm_status($port);
        my $c = status_consumer($port, $app);
        $v = $c && defined $c->{budget_spent}
             ? sprintf('%.0f', $c->{budget_spent} * 1e9) : undef;
        return defined $want ? defined $v && $v == $want
                             : $s && $s->{pools}[0]{backends}[0]{in_flight}
                               == 0;
    });
    return $v;
}

###########################################################################
# one instance: the budget holds, to the billionth

my ($st, $h, $b) = chat($listen, 'a');
is($st, 200, 'first request: 200');
my $u = json_decode($b)->{usage};
my $prompt = $u->{prompt_tokens};
is($u->{completion_tokens}, 7, 'the simulator answered 7 tokens');
ok(abs($h->{'x-estimate'} - 20 - $prompt) <= 2,
   'charged its prompt and max_tokens');

# billionths: a token at 0.001 is 1,000,000
my $cost = $prompt * 1_000_000 + 7 * 2_000_000;
# at admission, our own count of the prompt (the simulator's may differ)
my $most = ($h->{'x-estimate'} - 20) * 1_000_000 + 20 * 2_000_000;
my $budget = 500_000_000;

is(spent($listen, 'a', $cost), $cost, "spent: the reply's cost, $cost billionths");

my $spent = $cost;
my ($admitted, $refused) = (1, 0);
my ($st429, $h429, $b429);

for my $i (1 .. 40) {
    my $fits = $spent + $most <= $budget;
    ($st, $h, $b) = chat($listen, 'a');

    if ($fits) {
        is($st, 200, "request $i fits: 200") or last;
        $spent += $cost;
        $admitted++;
    } else {
        is($st, 429, "request $i does not fit: 429");
        ($st429, $h429, $b429) = ($st, $h, $b);
        $refused++;
    }

    is(spent($listen, 'a', $spent), $spent, "spent after request $i: $spent");
    last if $refused;
}

my $expect = 1 + int(($budget - $most) / $cost);
is($admitted, $expect, "$admitted admitted, as the budget allows");

like(json_decode($b429)->{error}{message},
     qr/^Requests of consumer [0-9a-f]{16} have exceeded the spending budget of "llm_limit \$http_x_app" \(0\.5 a day\)\. Please retry after \d+ seconds\.$/,
     '429: the budget in its message');
is($h429->{'x-throttle'}, 'consumer', '429: $llm_throttle is consumer');

my $midnight = 86400 - time % 86400;
SKIP: {
    skip 'too close to midnight UTC', 1 if $midnight < 120;
    ok(abs($h429->{'retry-after'} - $midnight) <= 3,
       "429: Retry-After $h429->{'retry-after'} s, until midnight UTC");
}

# more than the whole budget: no use waiting
($st, $h, $b) = chat($listen, 'b', max_tokens => 1000);
is($st, 400, 'a request that may cost more than the budget: 400');
my $err = json_decode($b)->{error};
is($err->{code}, 'TokenLimitExceeded', '400: TokenLimitExceeded');
like($err->{message}, qr/may cost up to 2\.0\d* .*to spend \(0\.5 a day\)/,
     '400: what it may cost, and the budget');
is(spent($listen, 'b'), undef, '400: nothing spent, no consumer kept');

# a model without a price costs nothing: not held back
($st) = chat($listen, 'a', deployment => 'free');
is($st, 200, 'a model without a price passes a spent budget');
is(spent($listen, 'a', $spent), $spent, '... and spends nothing');

# a body that names another model: Azure serves the path's deployment,
# and the budget prices that (a model without a price in the body passed
# a spent budget, and a request that may cost more than all of it)
($st) = chat($listen, 'a', model => 'not-priced');
is($st, 429, 'the body names a model without a price: the spent budget '
             . 'still holds');
($st) = chat($listen, 'b', model => 'not-priced', max_tokens => 1000);
is($st, 400, '... and one that may cost more than the budget: 400');

# a failed request is given back
my $before = spent($listen, 'c') // 0;
($st) = chat($listen, 'c', deployment => 'broken');
is($st, 500, 'a request the deployment fails: 500');
is(spent($listen, 'c', $before), $before, '... costs its consumer nothing');

# Prometheus says the same
my (undef, undef, $m) = http_get($listen, '/status?format=prometheus');
my $id = status_consumer($listen, 'a')->{consumer};
my ($prom) = $m =~ /^llm_consumer_budget_spent\{zone="llm",consumer="$id"\} (\S+)$/m;
is(defined $prom ? sprintf('%.0f', $prom * 1e9) : undef, $spent,
   'Prometheus: llm_consumer_budget_spent');
like($m, qr/^# TYPE llm_consumer_budget_spent gauge$/m,
     'Prometheus: a gauge');

###########################################################################
# two instances through Redis: one budget between them

my $ta = LLMTest->new;
my $tb = LLMTest->new;
my ($pa, $pb) = (free_port(), free_port());
my $redis = "redis=redis://127.0.0.1:$rport redis_sync=50ms";
$ta->start_nginx(conf($pa, $redis), ports => [$pa], workers => 2);
$tb->start_nginx(conf($pb, $redis), ports => [$pb], workers => 2);

ok(wait_for(5, sub {
       my ($sa) = llm_status($pa);
       my ($sb) = llm_status($pb);
       $sa && $sb
       && ($sa->{consumers}[0]{redis}{state} // '') eq 'connected'
       && ($sb->{consumers}[0]{redis}{state} // '') eq 'connected' }),
   'both instances connect to Redis');

my $app = 'shared-APP-value';
my ($ok, $no) = (0, 0);
for my $i (1 .. 60) {
    ($st) = chat($i % 2 ? $pa : $pb, $app);
    $st == 200 ? $ok++ : $no++;
    last if $no >= 4;
}

diag("two instances admitted $ok, one would admit $expect");
ok($ok <= $expect, "together they stay within the budget: $ok");
# what one instance holds of a lease and does not use is lost to the other
ok($ok >= $expect - 3, 'and use nearly all of it');
is($no, 4, 'then both refuse');
($st) = chat($pb, $app, deployment => 'free');
is($st, 200, 'shared: a model without a price still passes');

# corrected to the replies' cost, as both instances see it from Redis
for my $p ($pa, $pb) {
    my $used;
    ok(wait_for(3, sub {
           my $c = status_consumer($p, $app);
           $used = $c->{shared}{budget}{used} // -1;
           $used == $ok * $cost }),
       "instance on $p: Redis says $used billionths spent, "
       . $ok * $cost . ' expected');
}

my $keys = $t->redis_cli($rport, 'KEYS', "'llm:llm:*:m:*'");
my @keys = grep { /\S/ } split /\n/, $keys;
is(scalar @keys, 1, 'Redis holds the budget under one key');
like($keys[0] // '', qr/^llm:llm:[0-9a-f]{64}:m:\d+$/,
     "... the consumer's hash and the period: $keys[0]");
unlike($t->redis_cli($rport, '--scan'), qr/shared-APP/,
       'no consumer value in Redis');

###########################################################################
# bad lines

for my $bad ('budget=5', 'budget=x/day', 'budget=0/day', 'budget=-1/month',
             'budget=1/week', 'quota=1m/day budget=5/month')
{
    my ($rc, $out) = $t->test_conf(<<"END");
    server {
        location / {
            llm_limit \$http_x_app $bad;
        }
    }
END
    ok($rc != 0 && $out =~ /invalid parameter|same period/,
       "\"llm_limit ... $bad\" refused");
}

$ta->cleanup;
$tb->cleanup;
$t->done;
