#!/usr/bin/perl

# tools/hedge-report, shortened to 4 s of load per set-up: the report
# and its summary are written, every request is answered in each set-up,
# without hedging the deployments see each request once, and calling
# both deployments at once costs every request twice.  (The full run's
# figures are in docs/benchmarks.md; 20 requests prove nothing of a p99.)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $top = $t->top;
my $out = "$dir/hedge";

my $log = `timeout -k 5 120 python3 $top/tools/hedge-report --duration 4 --rate 5 --out $out 2>&1`;
my $rc = $? >> 8;
ok($rc == 0 || $rc == 1, 'hedge-report ran') or diag $log;
unlike($log, qr/nginx's error log/, 'nginx logged no alert') or diag $log;

ok(-s "$out/report.md", 'report.md written');
my $sum = json_decode($t->read_file('hedge/summary.json'));
my $r = $sum->{results};

for my $k (qw(none hedge parallel)) {
    ok($r->{$k}{requests} >= 10, "$k: $r->{$k}{requests} requests");
    is($r->{$k}{ok}, $r->{$k}{requests}, "$k: every one answered");
}
is($r->{none}{backend_requests}, $r->{none}{requests},
   'no hedging: one backend request a client request');
is($r->{none}{hedges}, 0, 'no hedging: no hedge');
is($r->{parallel}{backend_requests}, 2 * $r->{parallel}{requests},
   'both at once: two backend requests a client request');
is($r->{parallel}{hedges}, $r->{parallel}{requests},
   'both at once: every request hedged');
ok($r->{parallel}{cancelled} > 0, 'both at once: the losers cancelled');
ok($r->{hedge}{backend_requests} <= $r->{hedge}{requests} * 1.5,
   'llm_hedge: far fewer backend requests than both at once');

my $md = $t->read_file('hedge/report.md');
like($md, qr/^\| no hedging \|/m, 'the report\'s table: no hedging');
like($md, qr/^\| llm_hedge after=400ms max=10% \|/m, '... llm_hedge');
like($md, qr/^\| both deployments at once/m, '... both at once');

$t->done;
