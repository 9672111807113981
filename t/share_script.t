#!/usr/bin/perl

# The lease script of src/ngx_http_llm_share.c, run as nginx runs it
# (EVAL in a real redis-server), through the orders in which a report
# whose reply was lost can meet Redis: each amount must count once.
# - a lost report that Redis applied, then the report that names it;
# - a lost report that Redis never saw, named, and then arriving late;
# - two reports on their way at once naming the same lost one, both
#   lost in turn and named by a third;
# - a refund that cancels what a lost report carried: the next report
#   carries nothing and still undoes it;
# - the same report twice; a chain of lost reports; a windowed budget.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use LLMTest;

my $t = LLMTest->new;
my $rport = $t->start_redis;

# the script, out of the C string it is written as

open my $fh, '<', $t->top . '/src/ngx_http_llm_share.c' or die;
my $c = do { local $/; <$fh> };
close $fh;
my ($lit) = $c =~ /ngx_http_llm_lease_script = ngx_string\(\n(.*?)\);\n/s
    or die 'the script is not where it was';
my $script = join '', map {
    my ($s) = /^"(.*)"$/ or die "not a string: $_";
    $s =~ s/\\(["\\n])/$1 eq 'n' ? "\n" : $1/ge;
    $s;
} split /\n/, $lit;
like($script, qr/^local key = KEYS\[1\]\n.*return \{grant/s,
     'the script read from the source');

# a minimal RESP client, one connection

my $r = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $rport)
    or die "redis: $!";

sub reply {
    my $line = <$r> // die 'redis closed';
    $line =~ s/\r\n$//;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq ':' || $type eq '+';
    die "redis: $rest" if $type eq '-';
    if ($type eq '$') {
        return undef if $rest < 0;
        read($r, my $b, $rest + 2);
        return substr $b, 0, $rest;
    }
    return [ map { reply() } 1 .. $rest ] if $type eq '*';
    die "redis: $line";
}

sub command {
    my $out = '*' . @_ . "\r\n";
    $out .= '$' . length($_) . "\r\n$_\r\n" for @_;
    print $r $out;
    return reply();
}

# one report: key, link, number, the lost ones it names, its amounts
# ([age, amount], ...); a quota (one slot) unless slot_ms is given

my $inst = '00000000000000a1';
my ($L1, $L2) = ('0000000000000011', '0000000000000022');

sub report {
    my (%o) = @_;
    my @amounts = map { @$_ } @{ $o{amounts} || [] };
    return command('EVAL', $script, 1, $o{key}, $inst, $o{slot_ms} // 0,
                   $o{nslots} // 1, 1000000, $o{ask} // 0, 1000, 3600000,
                   $o{link}, $o{seq}, $o{names} // '', $o{least} // 0,
                   @amounts);
}

sub spent {
    my ($key) = @_;
    my %h = @{ command('HGETALL', $key) };
    my $sum = 0;
    $sum += $h{$_} for grep { /^s/ } keys %h;
    return $sum;
}

# applied, reply lost; the next report carries its 100 again, and 10

report(key => 'k1', link => $L1, seq => 1, amounts => [[0, 100]]);
report(key => 'k1', link => $L1, seq => 2, names => "$L1:1",
       amounts => [[0, 110]]);
is(spent('k1'), 110, 'a lost report Redis applied counts once');

# never seen: named, then it arrives late

report(key => 'k2', link => $L1, seq => 2, names => "$L1:1",
       amounts => [[0, 110]]);
is(spent('k2'), 110, 'a lost report Redis never saw counts once');
report(key => 'k2', link => $L1, seq => 1, amounts => [[0, 100]]);
is(spent('k2'), 110, 'and adds nothing when it arrives late');

# two on their way at once, both naming the lost one; then both lost

report(key => 'k3', link => $L1, seq => 1, amounts => [[0, 100]]);
report(key => 'k3', link => $L2, seq => 1, names => "$L1:1",
       amounts => [[0, 110]]);
report(key => 'k3', link => $L1, seq => 2, names => "$L1:1",
       amounts => [[0, 20]]);
is(spent('k3'), 130, 'two reports naming one lost report undo it once');
report(key => 'k3', link => $L2, seq => 2,
       names => "$L1:2,$L2:1,$L1:1", amounts => [[0, 135]]);
is(spent('k3'), 135, 'and when both are lost too, a third counts all once');

# a refund cancelled what the lost report carried: nothing to send

report(key => 'k4', link => $L1, seq => 1, amounts => [[0, 100]]);
report(key => 'k4', link => $L1, seq => 0, names => "$L1:1");
is(spent('k4'), 0, 'a report without amounts still undoes a lost one');

# the same report twice

report(key => 'k5', link => $L1, seq => 1, amounts => [[0, 100]]);
report(key => 'k5', link => $L1, seq => 1, amounts => [[0, 100]]);
is(spent('k5'), 100, 'a report sent twice counts once');

# a chain: each lost report carried the one before

report(key => 'k6', link => $L1, seq => 1, amounts => [[0, 100]]);
report(key => 'k6', link => $L1, seq => 2, names => "$L1:1",
       amounts => [[0, 110]]);
report(key => 'k6', link => $L2, seq => 1, names => "$L1:2,$L1:1",
       amounts => [[0, 111]]);
is(spent('k6'), 111, 'a chain of lost reports counts once');

# a window of 60 one-second slots: undone in the slot it went to

report(key => 'k7', link => $L1, seq => 1, slot_ms => 1000, nslots => 60,
       amounts => [[0, 50], [5000, 7]]);
report(key => 'k7', link => $L1, seq => 2, slot_ms => 1000, nslots => 60,
       names => "$L1:1", amounts => [[0, 53], [5000, 7]]);
is(spent('k7'), 60, 'in a window, in its slots');

# the lease moves with the amounts: undone, given back, taken again

my $g = report(key => 'k8', link => $L1, seq => 0, ask => 1000);
is($g->[1], 1000, 'a lease of 1000');
report(key => 'k8', link => $L1, seq => 1, amounts => [[0, 300]]);
my $o = report(key => 'k8', link => $L1, seq => 2, names => "$L1:1",
               amounts => [[0, 400]]);
is($o->[1], 600, 'the lease is spent by what counted, once');

# a grant covers at least what the request lacks, or is nothing: 500
# left of the limit

report(key => 'k10', link => $L1, seq => 1, amounts => [[0, 999_500]]);
$g = report(key => 'k10', link => $L1, seq => 0, ask => 1000, least => 800);
is("$g->[0] $g->[1]", '0 0', 'less left than the request lacks: nothing');
$g = report(key => 'k10', link => $L1, seq => 0, ask => 1000, least => 400);
is("$g->[0] $g->[1]", '500 500', 'enough for it: what is left');

# a link's reports that were answered are not kept: one at a time

for my $n (1 .. 6) {
    report(key => 'k9', link => $L1, seq => $n, amounts => [[0, 10]]);
}
my $rec = command('HGET', 'k9', "o$L1");
is(scalar(() = $rec =~ /;/g), 0, 'a busy link keeps one report in Redis')
    or diag $rec;
is(spent('k9'), 60, 'and each counts');

# nothing of the keys but numbers, ids and amounts

my %h = @{ command('HGETALL', 'k3') };
ok(!grep({ !/^[slo][0-9a-f]*$/ } keys %h), 'fields are s, l and o only')
    or diag join ' ', keys %h;

close $r;
$t->done;
