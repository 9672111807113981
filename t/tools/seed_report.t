#!/usr/bin/perl

# tools/seed-report on one scenario of the seed article, shortened and
# time compressed x10 (as t/seed_scenario.t): scenario 3, 100 users x 2
# chats a minute of 50-token Japanese prompts, ~163k TPM of demand on a
# 120k TPM quota, for 60 s (6 s real per set-up, ~35 requests a second).
# The report must be there and self-contained, its table must have the
# four set-ups with every planned request, and it must show what the
# module is for: the direct deployment answers 429s, the module's
# deployments none, and no client of the module sees a 5xx, with one
# gateway or two sharing a zone through Redis.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $out = "$dir/report";
my $top = $t->top;

my $planned = 200;      # 200 requests a minute for 60 s

my $t0 = time;
my $log = `timeout -k 5 150 python3 $top/tools/seed-report --scenarios 3 --speed 10 --duration 60 --out $out 2>&1`;
my $rc = $? >> 8;
diag sprintf "seed-report took %.1f s", time - $t0;
is($rc, 0, 'seed-report ran') or diag $log;

ok(-s "$out/report.md", 'report.md written');
ok(-s "$out/report.html", 'report.html written');
ok(-s "$out/records/s3-$_.jsonl", "per-request records of $_")
    for qw(direct plain module shared);

# the table of scenario 3

my $md = $t->read_file('report/report.md');
my ($section) = $md =~ /^## Scenario 3:(.*?)(?=^## |\z)/ms;
ok(defined $section, 'report.md has scenario 3');
$section //= '';

my %row;
for my $line (grep { /^\| (?!set-up|---)/ } split /\n/, $section) {
    my @c = map { s/^\s+|\s+$//gr } split /\|/, $line;
    shift @c;
    my %r;
    @r{qw(setup requests ok c429 c5xx errors share b429 p50 p95 tpm)} = @c;
    my $key = $r{setup} =~ /^direct/ ? 'direct'
            : $r{setup} =~ /^plain/ ? 'plain'
            : $r{setup} =~ /Redis/ ? 'shared'
            : $r{setup} =~ /module/ ? 'module' : $r{setup};
    $row{$key} = \%r;
}
is_deeply([sort keys %row], [qw(direct module plain shared)],
          'four rows: direct, plain, module, two gateways with Redis');
diag join "\n", grep { /^\| (?!---)/ } split /\n/, $section;

for my $k (qw(direct plain module shared)) {
    my $r = $row{$k} or next;
    is($r->{requests}, $planned, "$k: every planned request sent");
    is($r->{ok} + $r->{c429} + $r->{c5xx} + $r->{errors}, $r->{requests},
       "$k: outcomes add up");
}

# the claim

if (my $r = $row{direct}) {
    cmp_ok($r->{c429}, '>', 0, 'direct, over quota: clients get 429s');
    cmp_ok($r->{b429}, '>', 0, 'direct: the deployment answered them');
    is($r->{c5xx}, 0, 'direct: no 5xx');
}
if (my $r = $row{module}) {
    is($r->{c5xx}, 0, 'module: no client sees a 5xx');
    is($r->{errors}, 0, 'module: no failed request');
    is($r->{b429}, 0, 'module: no backend answered 429');
    cmp_ok($r->{ok}, '>=', $row{direct}{ok} * 0.9,
           'module: uses the quota about as well as one deployment')
        if $row{direct};
}
if (my $r = $row{shared}) {
    is($r->{c5xx}, 0, 'two gateways: no client sees a 5xx');
    is($r->{errors}, 0, 'two gateways: no failed request');
    is($r->{b429}, 0, 'two gateways: no backend answered 429');
    cmp_ok($r->{ok}, '>=', $row{module}{ok} * 0.9,
           'two gateways: use the quota about as well as one')
        if $row{module};
}
unlike($md, qr/nginx's logs have/,
       'nginx logged no [alert], [crit], [emerg], no sanitizer report');

# the page: self-contained, well-formed enough, a line per set-up

my $html = $t->read_file('report/report.html');
like($html, qr/\A<!DOCTYPE html>/i, 'HTML doctype');
like($html, qr{</html>\s*\z}, 'HTML ends with </html>');
unlike($html, qr/\b(?:src|href)\s*=/i, 'no src= or href=');
unlike($html, qr/url\(|\@import|<script|<link/i, 'no url(), @import, scripts, links');
unlike($html, qr{(?:https?|ftp):/}i, 'no URL at all');

my @svg = $html =~ /<svg\b/g;
is(scalar @svg, 4, 'four charts');
is(scalar(() = $html =~ m{</svg>}g), scalar @svg, 'every <svg> closed');
for my $k (qw(direct plain module shared)) {
    my $n = () = $html =~ /<path class="series" data-setup="$k" d="M/g;
    is($n, 5, "$k: a line in each rate chart, two in the latency chart");
}
like($html, qr/scenario seconds/, 'x axes in scenario seconds');
like($html, qr/\(x10\)/, 'titles name the compression');

ok(balanced($html), 'tags balanced');

$t->done;

# every element closed in order, void and self-closed ones aside

sub balanced {
    my ($text) = @_;
    my %void = map { $_ => 1 } qw(meta br hr img input link);
    my @stack;
    $text =~ s/<!DOCTYPE[^>]*>//i;
    $text =~ s{<style>.*?</style>}{}s;
    while ($text =~ m{<(/?)([a-zA-Z][a-zA-Z0-9]*)\b[^>]*?(/?)>}g) {
        my ($close, $name, $self) = ($1, lc $2, $3);
        next if $self || $void{$name};
        if ($close) {
            my $open = pop @stack // '';
            if ($open ne $name) {
                diag "</$name> closes <$open>";
                return 0;
            }
        } else {
            push @stack, $name;
        }
    }
    diag "unclosed: @stack" if @stack;
    return !@stack;
}
