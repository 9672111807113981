#!/usr/bin/perl

# t/lib/LLMTest.pm's free_port(): ports given to tests that run at once
# (prove -j2) are never the same, even when both pick the same random
# numbers; a port is kept until the test that took it ends, and one
# left by a test that died is given out again.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Temp qw(tempdir);
use IPC::Open2 qw(open2);
use Test::More;
use LLMTest;

my $dir = tempdir('llmtest-portreg-XXXXXX', TMPDIR => 1, CLEANUP => 1);
$ENV{LLM_PORT_DIR} = $dir;

# each test is a perl of its own that takes $n ports with the same seed,
# as two tests started in the same second could, prints them, and holds
# them until its stdin closes

my $lib = "$FindBin::Bin/../lib";

sub take {
    my ($n, $seed) = @_;

    my $code = 'srand $ARGV[1]; print join(" ", map { free_port() } '
             . '1 .. $ARGV[0]), "\n"; close STDOUT; 1 while <STDIN>';
    my $pid = open2(my $r, my $w, $^X, "-I$lib", '-MLLMTest', '-e', $code,
                    $n, $seed);
    my @p = split ' ', scalar <$r>;
    return ($pid, $w, @p);
}

my ($pa, $wa, @a) = take(20, 7);
my ($pb, $wb, @b) = take(20, 7);

is(scalar @a, 20, 'first test got its 20 ports');
is(scalar @b, 20, 'second test got its 20 ports');

my %seen;
$seen{$_}++ for @a, @b;
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0,
   'two tests with the same seed, at once: no port given twice');

# the tests end: their ports go back
close $wa;
close $wb;
waitpid $pa, 0;
waitpid $pb, 0;
is($?, 0, 'second test ended well');

my ($pc, $wc, @c) = take(20, 7);
close $wc;
waitpid $pc, 0;
is("@c", "@a", 'a test that ended gives its ports back');

# a test killed before its END: its ports are given out again
my ($pd, $wd, @d) = take(5, 11);
kill 'KILL', $pd;
waitpid $pd, 0;
my ($pe, $we, @e) = take(5, 11);
close $we;
waitpid $pe, 0;
is("@e", "@d", 'ports of a test that was killed are given out again');

# the parent's own ports are kept from other tests
my $mine = do { srand 5; free_port() };
my ($pf, $wf, @f) = take(1, 5);
close $wf;
waitpid $pf, 0;
isnt($f[0], $mine, 'a port still held is not given to another test');

done_testing;
