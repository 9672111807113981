#!/usr/bin/perl

# Every code point, in contexts that expose the classes the split patterns
# ask for (letter case groups, marks, numbers, White_Space, contractions),
# counts as tiktoken (npm) counts it.  Both have Unicode 16.0's classes:
# tiktoken 1.0.22 through its regex crate, ours from Debian's unicode-data
# 16.0 (build/unicode.sh).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

my @cases = TokTest::cases('sweep');

for my $enc (@TokTest::ENCODINGS) {
    my ($ours, $ref) = TokTest::counts($enc, \@cases);
    my @bad = map { $cases[$_][0] }
              grep { ($ours->[$_] // '') ne ($ref->[$_] // '-') }
              0 .. $#cases;

    is(scalar @bad, 0, "$enc: every one of " . scalar(@cases)
       . " blocks of 16 code points equals tiktoken")
        or diag("differ: @bad[0 .. ($#bad < 20 ? $#bad : 20)]");
}

done_testing();
