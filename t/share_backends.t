#!/usr/bin/perl

# Backend windows shared through Redis (llm_zone redis=): three nginx
# instances in front of the same three simulated deployments of 60,000
# TPM (360 RPM), time compressed x10 in the simulator, the load and the
# module's windows (window=6s); 600 requests a minute for 40 s (about
# 400) split evenly over the instances, about three times what the
# deployments take.  Without Redis each instance knows only its own traffic (and
# what the backends' remaining-* headers say) and the backends refuse
# some; with Redis the instances together send no backend more than its
# quota: no backend 429, no client 5xx, as one instance alone.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $speed = 10;
my @t = map { LLMTest->new } 1 .. 3;
my $dir = $t[0]->dir;
my $rport = $t[0]->start_redis;

my $ctl = free_port();
my @names = qw(eastus swedencentral japaneast);
my @deployments = map {
    { name => $_, port => free_port(), host => "res-$_.openai.azure.com",
      api_key => "key-$_", deployment => "gpt4o-$_", tpm => 60000,
      ttft_ms => [400, 1200], tokens_per_s => 115,
      completion_tokens => 300, seed => 7 }
} @names;
$t[0]->start_sim({ control_port => $ctl, deployments => \@deployments },
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

sub conf {
    my ($listen, $redis) = @_;
    my $share = $redis ? "redis=redis://127.0.0.1:$rport redis_sync=20ms"
                       : '';
    return <<"END";
    llm_zone llm:1m $share;

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
            proxy_next_upstream error timeout http_429 non_idempotent;
        }

        location = /status {
            llm_status;
        }
    }
END
}

my $chat = '/openai/deployments/gpt-4o/chat/completions'
         . '?api-version=2024-10-21';

sub backend_429 {
    my $s = $t[0]->sim_stats->{deployments};
    my $n = 0;
    $n += $s->{$_}{status}{429} // 0 for keys %$s;
    return $n;
}

# 600 a minute in all: 200 on each instance, at the same time
sub load {
    my @ports = @_;
    my @pids;
    for my $i (0 .. $#ports) {
        my $pid = fork // die;
        if ($pid == 0) {
            my $out = `python3 ${\ $t[0]->top}/tools/aoai-load --url http://127.0.0.1:$ports[$i]$chat --rpm 200 --duration 40 --speed $speed --prompt-tokens 50 --max-tokens 800 --seed ${\ (11 + $i)} --json --timeout 30`;
            open my $fh, '>', "$dir/load-$i.json" or die;
            print $fh $out;
            close $fh;
            POSIX::_exit(0);
        }
        push @pids, $pid;
    }
    waitpid $_, 0 for @pids;
    my %sum;
    for my $i (0 .. $#ports) {
        my $r = json_decode($t[0]->read_file("load-$i.json"));
        $sum{$_} += $r->{$_} // 0
            for qw(requests ok client_429 client_5xx failed);
    }
    return \%sum;
}

sub run {
    my ($redis) = @_;
    my @ports = map { free_port() } @t;
    for my $i (0 .. $#t) {
        $t[$i]->start_nginx(conf($ports[$i], $redis), ports => [$ports[$i]]);
    }
    if ($redis) {
        for my $p (@ports) {
            my $deadline = time + 5;
            while (time < $deadline) {
                my ($st, $h, $b) = http_get($p, '/status');
                last if $st == 200 && $b =~ /"state":"connected"/;
                sleep 0.05;
            }
        }
    }
    $t[0]->sim_reset;
    my $r = load(@ports);
    my $b429 = backend_429();
    if ($redis) {
        my ($st, $h, $b) = http_get($ports[0], '/status');
        $r->{status} = json_decode($b);
        ($st, $h, $r->{prom}) = http_get($ports[0],
                                         '/status?format=prometheus');
    }
    diag(($redis ? 'with' : 'without') . " Redis: "
         . json_encode({ map { $_ => $r->{$_} }
                         qw(requests ok client_429 client_5xx failed) })
         . ", backend 429s $b429");
    $_->stop_nginx for @t;
    sleep 6.5;          # the simulator's windows empty
    return ($r, $b429);
}

my ($alone, $alone429) = run(0);
my ($shared, $shared429) = run(1);

cmp_ok($shared->{requests}, '>=', 395,
       'with Redis: 400 requests (600 a minute for 40 s)');
is($shared429, 0, 'with Redis: no backend answered 429');
is($shared->{client_5xx} + $shared->{failed}, 0, 'with Redis: no 5xx');
cmp_ok($shared->{ok}, '>=', 150,
       'with Redis: the deployments\' quota is used');
cmp_ok($shared->{client_429}, '>', 0,
       'with Redis: the excess gets 429s from the gateways');
cmp_ok($alone->{ok}, '>=', $shared->{ok} - 40,
       'without Redis about as many succeed (the backends refuse the rest)');

# each instance shows what all of them sent each backend
my @bs = @{ $shared->{status}{pools}[0]{backends} };
my $used = 0;
$used += $_->{shared}{tokens}{used} // 0 for @bs;
my $own = 0;
$own += $_->{window_tokens} for @bs;
cmp_ok($used, '>', $own, "a backend's shared figure ($used tokens) holds "
                         . "more than this instance's own ($own)");
like($shared->{prom},
     qr/^llm_backend_shared_used\{pool="aoai",backend="eastus",budget="tokens"\} \d+$/m,
     'and Prometheus has it');
SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $fh, '>', "$dir/metrics.txt" or die;
    print $fh $shared->{prom};
    close $fh;
    my $out = `/usr/bin/promtool check metrics < $dir/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $out;
}

$t[1]->cleanup;
$t[2]->cleanup;
$t[0]->done;
