#!/usr/bin/perl

# The seed article's scenario through the module, against three simulated
# deployments of 60,000 TPM (docs/azure.md numbers), time compressed x10
# in the simulator, the load and the module's windows (window=6s):
#  - 200 requests a minute of 50-token Japanese prompts, max_tokens 800:
#    demand ~165k TPM under the pool's 180k: no client sees a 429 or a
#    5xx, and the backends' own 429s are at most a few;
#  - 300 a minute, over capacity: clients get 429s with a Retry-After
#    and still no 5xx; a client that obeys the Retry-After succeeds.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $speed = 10;

my $ctl = free_port();
my @names = qw(eastus swedencentral japaneast);
my @deployments = map {
    { name => $_, port => free_port(), host => "res-$_.openai.azure.com",
      api_key => "key-$_", deployment => "gpt4o-$_", tpm => 60000,
      ttft_ms => [400, 1200], tokens_per_s => 115,
      completion_tokens => 300, seed => 7 }
} @names;
$t->start_sim({ control_port => $ctl, deployments => \@deployments },
              '--speed', $speed, '--quiet');

my $backends = '';
for my $d (@deployments) {
    open my $fh, '>', "$dir/$d->{name}.key" or die;
    print $fh "$d->{api_key}\n";
    close $fh;
    $backends .= "        llm_backend $d->{name} http://$d->{host}"
               . " deployment=$d->{deployment} tpm=60k"
               . " key_file=$dir/$d->{name}.key"
               . " address=127.0.0.1:$d->{port};\n";
}

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen], workers => 2);
    llm_zone llm:1m;

    upstream aoai {
        llm_balance zone=llm window=6s;
$backends
        keepalive 32;
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/ {
            llm_route aoai;
            proxy_pass http://aoai;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_next_upstream error timeout http_429 non_idempotent;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions'
         . '?api-version=2024-10-21';

sub load {
    my ($rpm) = @_;
    my $out = `python3 ${\ $t->top}/tools/aoai-load --url http://127.0.0.1:$listen$chat --rpm $rpm --duration 60 --speed $speed --prompt-tokens 50 --max-tokens 800 --seed 3 --json --timeout 30`;
    return json_decode($out);
}

sub backend_429 {
    my $s = $t->sim_stats->{deployments};
    my $n = 0;
    $n += $s->{$_}{status}{429} // 0 for keys %$s;
    return $n;
}

# within quota
my $r = load(200);
diag "200 rpm: " . json_encode($r->{status}) . ", backend 429s "
     . backend_429();
is($r->{requests}, 200, 'within quota: 200 requests');
is($r->{ok}, 200, 'within quota: every request answered 200');
is($r->{client_429}, 0, 'within quota: no client-visible 429');
is($r->{client_5xx}, 0, 'within quota: no 5xx');
cmp_ok(backend_429(), '<=', 3, 'within quota: backends said 429 at most 3 times');

# let the windows empty
sleep 6.5;
$t->sim_reset;

# over capacity
$r = load(300);
diag "300 rpm: " . json_encode($r->{status}) . ", backend 429s "
     . backend_429();
cmp_ok($r->{client_429}, '>', 0, 'over capacity: some 429s');
is($r->{client_5xx}, 0, 'over capacity: no 5xx');
is($r->{failed}, 0, 'over capacity: no failed connection');
cmp_ok($r->{ok}, '>=', 200, 'over capacity: the quota is used');
cmp_ok(backend_429(), '<=', 3, 'over capacity: the module predicts the 429s');

# a client that obeys Retry-After succeeds: requests of 50,000 tokens
# fill one deployment each
sleep 6.5;
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'x' x 100 } ],
                         max_tokens => 50000 });
my ($st, $h);
for (1 .. 4) {
    ($st, $h) = http_post($listen, $chat, $body);
    last if $st == 429;
}
is($st, 429, 'filled the pool');
my $wait = $h->{'retry-after'};
cmp_ok($wait, '>=', 1, 'Retry-After given');
cmp_ok($wait, '<=', 6, 'Retry-After within the (compressed) window');
sleep $wait;
($st) = http_post($listen, $chat, $body);
is($st, 200, 'after Retry-After seconds the request succeeds');

$t->done;
