#!/usr/bin/perl

# llm_price: $llm_cost is what the reply's usage cost at the serving
# deployment's price (or the request's model's), and llm_status adds it
# up per backend and per consumer, in JSON and Prometheus; a model
# without a price costs nothing and shows no cost; bad lines are refused.

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
            deployment => $_, tpm => 1000000, api_key => 'k',
            ttft_ms => [0, 0], tokens_per_s => 5000,
            completion_tokens => 7 } } qw(gpt-4o other) ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    # prices a million tokens (Azure's list prices for gpt-4o, 2024-11)
    llm_price gpt-4o input=2.50 cached_input=1.25 output=10;
    llm_price cheap input=0.0375 output=0.15 per=1m;

    log_format cost '\$llm_model \$llm_prompt_tokens \$llm_completion_tokens '
                    '"\$llm_cost"';
    access_log $dir/cost.log cost;

    upstream pool {
        llm_balance zone=llm;
        llm_backend b1 http://sim.example:$sp address=127.0.0.1:$sp
                    key_file=$dir/k.key tpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location = /status {
            llm_status;
        }
    }
END

sub chat {
    my ($deployment, $app) = @_;
    return http_post($listen,
        "/openai/deployments/$deployment/chat/completions"
        . '?api-version=2024-10-21',
        json_encode({ messages => [ { role => 'user',
                                      content => 'how much is this?' } ],
                      max_tokens => 50 }),
        'X-App' => $app);
}

my ($st, $h, $b) = chat('gpt-4o', 'a');
is($st, 200, '200');
my $u = json_decode($b)->{usage};
my $nano = ($u->{prompt_tokens} * 2500 + $u->{completion_tokens} * 10000)
           * 1000 / 1000;
my $want = sprintf('%.9f', $nano / 1e9);
$want =~ s/0+$//;
ok($want > 0, "$u->{prompt_tokens} + $u->{completion_tokens} tokens cost "
              . $want);

($st, $h) = chat('gpt-4o', 'a');
($st, $h) = chat('other', 'a');
is($st, 200, 'a model without a price: 200');

my ($s) = llm_status($listen);
my $be = $s->{pools}[0]{backends}[0];
is($be->{cost}, 2 * $want, 'llm_status: the backend\'s cost, twice');
my $c = status_consumer($listen, 'a');
is($c->{cost}, 2 * $want, 'llm_status: the consumer\'s cost');

my ($pst, $ph, $prom) = http_get($listen, '/status?format=prometheus');
like($prom, qr/^llm_backend_cost_total\{pool="pool",backend="b1"\} \Q${\ (2 * $want)}\E$/m,
     'Prometheus: llm_backend_cost_total');
like($prom, qr/^llm_consumer_cost_total\{zone="llm",consumer="[0-9a-f]{16}"\} \Q${\ (2 * $want)}\E$/m,
     'Prometheus: llm_consumer_cost_total');

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $out, '>', "$dir/metrics.txt" or die;
    print $out $prom;
    close $out;
    my $check = `/usr/bin/promtool check metrics < $dir/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $check;
}

my @log = split /\n/, $t->read_file('cost.log');
like($log[0], qr/^gpt-4o \d+ 7 "\Q$want\E"$/, '$llm_cost in the access log');
like($log[2], qr/^other \d+ 7 "-"$/, 'no price, no $llm_cost');

# bad lines

for my $bad ('gpt-4o input=1', 'gpt-4o output=1', 'gpt-4o input=x output=1',
             'gpt-4o input=1 output=1 per=0', 'gpt-4o input=1 output=1 tip=1') {
    my ($rc, $out) = $t->test_conf(<<"END");
    llm_price $bad;
END
    ok($rc != 0 && $out =~ /llm_price|invalid parameter/,
       "\"llm_price $bad\" refused");
}
my ($rc, $out) = $t->test_conf(<<"END");
    llm_price m input=1 output=1;
    llm_price m input=2 output=2;
END
like($out, qr/duplicate price of "m"/, 'a model priced twice refused');

$t->done;
