#!/usr/bin/perl

# Worst cases stay linear: strings without a split point (one piece of a
# megabyte) merge by lists of pairs by rank.  Counting 1 MB must not cost
# much more than 10 times counting 100 KB, and the counts of shorter ones
# equal tiktoken's, through the lists and through the heap.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

# a fixed pseudo-random lowercase run: merges of every kind, no split point
my $seed = 12345;
my $letters = join '', map {
    $seed = ($seed * 1103515245 + 12345) % 2147483648;
    chr(97 + ($seed >> 16) % 26)
} 1 .. 1024 * 1024;

my %gen = (
    'one letter' => sub { 'a' x $_[0] },
    'letters' => sub { substr($letters, 0, $_[0]) },
    'spaces' => sub { ' ' x $_[0] },
    'digits' => sub { '7' x $_[0] },
    'kanji' => sub { "\xe6\xbc\xa2" x ($_[0] / 3) },
    'invalid' => sub { "\xff" x $_[0] },
);

for my $name (sort keys %gen) {
    for my $enc (@TokTest::ENCODINGS) {
        my (%t, %files);
        for my $size (100 * 1024, 1024 * 1024) {
            my $file = TokTest::write_temp($gen{$name}->($size));
            $files{$size} = $file;
            my ($n, $bench) = TokTest::run_lines(
                "$TokTest::COUNT --encoding $enc --bench 1 < $file");
            my ($ns) = $bench =~ /(\d+) ns per run/;
            $t{$size} = $ns / 1e9;
            ok($n > 0, "$enc $name: $size bytes count $n in "
               . sprintf('%.4f s', $t{$size}));
        }

        # counting time alone, the fastest of 5 rounds (llm-count --bench);
        # quadratic would be 100x; the lists took 9 to 12.5x on a quiet
        # machine, the heap before them 16x, and a machine busy with
        # other tests was seen to make 10x the bytes take 29 to 42x the
        # time, so 50 is the bound
        my $ratio = $t{1024 * 1024} / $t{100 * 1024};
        ok($ratio < 50, "$enc $name: 10x the bytes, "
           . sprintf('%.1f', $ratio) . 'x the time');

        # what the workspace keeps once 1 MB is counted: its merge state
        # (tens of megabytes for a piece this long) is given back
        my $cmd = "$TokTest::COUNT --encoding $enc --info "
                  . "< $files{1024 * 1024} 2>&1 >/dev/null";
        my $info = `$cmd`;
        my ($kept) = $info =~ /workspace: (\d+) bytes/;
        ok(defined $kept && $kept < 4 * 1024 * 1024,
           "$enc $name: the workspace keeps " . ($kept // '?') . ' bytes');

        my @case = (['short', unpack('H*', $gen{$name}->(3 * 4096))]);
        my ($ours, $ref) = TokTest::counts($enc, \@case);
        is($ours->[0], $ref->[0], "$enc $name: 12 KB equals tiktoken");
        my ($heap) = TokTest::counts($enc, \@case, '--bucket-min', 1 << 40);
        is($heap->[0], $ref->[0], "$enc $name: and through the heap");
    }
}

done_testing();
