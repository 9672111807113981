#!/usr/bin/perl

# Token counts of llm-count (the module's tokenizer) equal tiktoken's (npm)
# on the shipped corpus (English, code, JSON, Japanese, Korean, Chinese,
# emoji, mixed scripts), on hand-picked edge cases of both split patterns
# (contractions, whitespace, digits, punctuation, invalid UTF-8, long runs)
# and on random strings with a fixed seed; by both merge paths.

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

        # every piece through the heap merge instead of the array merge
        my ($heap) = TokTest::counts($enc, \@cases, '--small-max', 0);
        my @bad = grep { ($heap->[$_] // -1) != $ours->[$_] } 0 .. $#cases;
        is(scalar @bad, 0, "$enc $set->[0]: heap merge equals array merge on "
           . scalar(@cases) . " cases")
            or diag(join "\n", map { $cases[$_][0] } @bad[0 .. 9]);
    }
}

done_testing();
