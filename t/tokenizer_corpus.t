#!/usr/bin/perl

# Token counts of llm-count (the module's tokenizer) equal tiktoken's (npm)
# on the shipped corpus (English, code, JSON, Japanese, Korean, Chinese,
# emoji, mixed scripts), on hand-picked edge cases of both split patterns
# (contractions, whitespace, digits, punctuation, invalid UTF-8, long runs)
# and on random strings with a fixed seed; by all three merge paths.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

for my $set (['corpus'], ['edge'], ['random', 3000]) {
    my @cases = TokTest::cases(@$set);

    for my $enc (@TokTest::ENCODINGS) {
        my ($ours, $ref) = TokTest::counts($enc, \@cases);

        is(scalar @$ours, scalar @cases, "$enc $set->[0]: a count per case");

        for my $i (0 .. $#cases) {
            is($ours->[$i], $ref->[$i],
                              "$enc $cases[$i][0]");
        }

        # every piece of two bytes or more through the heap merge, then
        # through the lists by rank, instead of the array merge
        for my $way (['heap', '--small-max', 0, '--bucket-min', 1 << 40],
                     ['rank lists', '--small-max', 0, '--bucket-min', 2]) {
            my ($name, @args) = @$way;
            my ($other) = TokTest::counts($enc, \@cases, @args);
            my @bad = grep { ($other->[$_] // -1) != $ours->[$_] }
                      0 .. $#cases;
            is(scalar @bad, 0, "$enc $set->[0]: $name merge equals array "
               . "merge on " . scalar(@cases) . " cases")
                or diag(join "\n", map { $cases[$_][0] } @bad[0 .. 9]);
        }
    }
}

done_testing();
