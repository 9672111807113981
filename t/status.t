#!/usr/bin/perl

# llm_status: JSON by default, Prometheus text with ?format=prometheus or
# Accept: text/plain; the numbers agree with what happened (requests,
# backend 429s, local 429s, usage equal to the simulator's ground truth,
# window use, remote remaining, cool-down); the Prometheus output passes
# promtool check metrics (when Debian's prometheus package is there) and
# a strict parser here; no key ever appears.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(a b c);
$t->start_sim({ control_port => $ctl, deployments => [ map {
    { name => $_, port => $p{$_}, host => "$_.example",
      api_key => "secret-key-$_", deployment => 'gpt-4o',
      tpm => 100000, ttft_ms => [0, 0], tokens_per_s => 5000,
      completion_tokens => 4 } } qw(a b c) ] });

for (qw(a b c)) {
    open my $fh, '>', "$dir/$_.key" or die;
    print $fh "secret-key-$_\n";
    close $fh;
}

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream pool_one {
        llm_balance zone=llm;
        llm_backend a http://a.example tpm=100k weight=2
                    key_file=$dir/a.key address=127.0.0.1:$p{a};
        llm_backend "b\\"q" http://b.example tpm=100k
                    key_file=$dir/b.key address=127.0.0.1:$p{b};
    }

    upstream pool_two {
        llm_balance zone=llm;
        llm_backend c http://c.example tpm=1000 rpm=600
                    key_file=$dir/c.key address=127.0.0.1:$p{c};
    }

    server {
        listen 127.0.0.1:$listen;

        location /one/ {
            llm_route pool_one;
            rewrite ^/one(/.*)\$ \$1 break;
            proxy_pass http://pool_one;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_next_upstream error timeout http_429 non_idempotent;
        }

        location /two/ {
            llm_route pool_two;
            rewrite ^/two(/.*)\$ \$1 break;
            proxy_pass http://pool_two;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location = /llm/status {
            llm_status;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 20 });

# pool_one: a answers 3, then says 429 once and b takes the retry
my $remaining;
for (1 .. 3) {
    my ($st, $h) = http_post($listen, "/one$chat", $body);
    is($st, 200, "pool_one request $_");
    $remaining = $h->{'x-ratelimit-remaining-tokens'};
}
$t->sim_update('a', { faults => { overload429 => 1 } });
my ($st, $h) = http_post($listen, "/one$chat", $body);
is($st, 200, 'retry after a 429');
$t->sim_update('a', { faults => { overload429 => 0 } });

# pool_two: 1,000 TPM, ~30 tokens each... a big one is refused locally
my $big = json_encode({ messages => [ { role => 'user', content => 'x' } ],
                        max_tokens => 990 });
my @two = map { (http_post($listen, "/two$chat", $big))[0] } 1 .. 2;
is_deeply(\@two, [200, 429], 'pool_two: one local 429');

($st, $h, my $raw) = http_get($listen, '/llm/status');
is($st, 200, 'status');
is($h->{'content-type'}, 'application/json', 'JSON by default');
my $s = json_decode($raw);

my %pool = map { $_->{name} => $_ } @{ $s->{pools} };
is_deeply([sort keys %pool], ['pool_one', 'pool_two'], 'both pools');
my %b = map { $_->{name} => $_ } @{ $pool{pool_one}{backends} };
ok($b{'b"q'}, 'a name with a quote survives JSON');

my $truth = $t->sim_stats->{deployments};
is($b{a}{requests}, 4, 'a: 4 attempts');
is($b{a}{backend_throttled}, 1, 'a: one 429');
is($b{a}{responses}{'2xx'}, 3, 'a: three 2xx answered through it');
is($b{'b"q'}{requests}, 1, 'b: the retry');
is($b{a}{tokens}{prompt}, $truth->{a}{prompt_tokens},
   'a: prompt tokens equal the ground truth');
is($b{a}{tokens}{completion}, $truth->{a}{completion_tokens},
   'a: completion tokens equal the ground truth');
is($b{a}{window_requests}, 3, 'a: 3 in the request window (429 refunded)');
is($b{a}{window_tokens}, $b{a}{tokens}{charged}, 'a: window = charged');
ok($b{a}{cooldown_ms} > 0, 'a: cooling down');
is($b{a}{limit_tokens}, 100000, 'a: limit');
is($b{a}{limit_requests_10s}, 100, 'a: 600 RPM is 100 per 10 s');
is($b{a}{weight}, 2, 'a: weight');
is($b{a}{remote_remaining_tokens}, $remaining,
   'a: remote remaining from its last 200 reply');
is($pool{pool_two}{local_throttled}, 1, 'pool_two: one local 429');
is($pool{pool_one}{local_throttled}, 0, 'pool_one: none');

unlike($raw, qr/secret-key/, 'JSON: no key');

# Prometheus
my ($pst, $ph, $prom) = http_get($listen, '/llm/status?format=prometheus');
is($pst, 200, 'prometheus');
like($ph->{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'text format');
unlike($prom, qr/secret-key/, 'Prometheus: no key');

my (undef, $ah, $aprom) = http_get($listen, '/llm/status',
                                   Accept => 'text/plain;version=0.0.4');
like($ah->{'content-type'}, qr{^text/plain}, 'Accept: text/plain');

# a strict reading of the text format
my (%type, %help, %done, $current, @bad);
for my $line (split /\n/, $prom) {
    if ($line =~ /^# HELP (\w+) \S/) {
        push @bad, "HELP twice: $1" if $help{$1}++;
        next;
    }
    if ($line =~ /^# TYPE (\w+) (counter|gauge|histogram)$/) {
        push @bad, "TYPE twice: $1" if $type{$1};
        $type{$1} = $2;
        $done{$current} = 1 if defined $current;
        $current = $1;
        next;
    }
    if ($line =~ /^(\w+)\{((?:\w+="(?:[^"\\\n]|\\.)*",?)*)\} (-?\d+(?:\.\d+)?)$/) {
        my ($name, $labels) = ($1, $2);

        # a histogram's samples: _bucket with "le", _sum and _count
        my ($family, $part) = $name =~ /^(\w+)_(bucket|sum|count)$/;
        if ($family && ($type{$family} // '') eq 'histogram') {
            push @bad, "family split: $line"
                if $done{$family} || $family ne $current;
            push @bad, "bucket without le: $line"
                if $part eq 'bucket'
                   && $labels !~ /(^|,)le="(\+Inf|[\d.]+)"$/;
            next;
        }

        push @bad, "sample before its TYPE: $line" unless $type{$name};
        push @bad, "family split: $line" if $done{$name} || $name ne $current;
        push @bad, "counter without _total: $name"
            if $type{$name} eq 'counter' && $name !~ /_total$/;
        next;
    }
    push @bad, "bad line: $line";
}
is_deeply(\@bad, [], 'strict text format');
like($prom, qr/^llm_backend_throttled_total\{pool="pool_one",backend="a"\} 1$/m,
     'a 429 in Prometheus');
like($prom, qr/^llm_backend_limit_tokens\{pool="pool_one",backend="b\\"q"\} 100000$/m,
     'label values escaped');
like($prom, qr/^llm_pool_local_throttled_total\{pool="pool_two"\} 1$/m,
     'local 429s');

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $fh, '>', "$dir/metrics.txt" or die;
    print $fh $prom;
    close $fh;
    my $out = `/usr/bin/promtool check metrics < $dir/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $out;
}

($st) = http_post($listen, '/llm/status', '{}');
is($st, 405, 'POST refused');

# names as long as the configuration takes (a pool's and a backend's 511
# bytes together), every byte one that both formats escape: the page has
# room for each sample's labels

my $t2 = LLMTest->new;
my $l2 = free_port();
my $esc = '\\"\\\\' x 150;    # in nginx.conf: 300 bytes, " and \
my $pname = 'p' x 200;
$t2->start_nginx(<<"END", ports => [$l2]);
    llm_zone "$esc:1m";

    upstream $pname {
        llm_balance "zone=$esc";
${\ join '', map { <<"B" } 1 .. 4 }
        llm_backend "$esc$_" http://a.example tpm=100k rpm=600
                    key_file=$dir/a.key address=127.0.0.1:$p{a};
B
    }

    server {
        listen 127.0.0.1:$l2;

        location /one/ {
            llm_route $pname;
            llm_limit \$http_x_app tpm=100k quota=1m/day;
            rewrite ^/one(/.*)\$ \$1 break;
            proxy_pass http://$pname;
        }

        location = /llm/status {
            llm_status;
        }
    }
END

is_deeply([ map { (http_post($l2, "/one$chat", $body, 'X-App' => "app$_"))[0] }
            1 .. 3 ], [ 200, 200, 200 ], 'long names: three consumers');

($st, $h, $raw) = http_get($l2, '/llm/status');
is($st, 200, 'long names: JSON');
my $long = eval { json_decode($raw) };
is(scalar @{ $long->{pools}[0]{backends} // [] }, 4,
   'long names: every backend in valid JSON');
is(length $long->{pools}[0]{backends}[0]{name}, 301,
   'long names: a name whole');

($st, $h, $raw) = http_get($l2, '/llm/status?format=prometheus');
is($st, 200, 'long names: Prometheus');
my $lines = () = $raw =~ /^llm_backend_limit_tokens\{pool="p{200}",backend="(?:\\"\\\\){150}\d"\} 100000$/mg;
is($lines, 4, 'long names: escaped, every backend');

$t2->cleanup;
$t->done;
