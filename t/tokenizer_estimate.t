#!/usr/bin/perl

# llm_count estimate guesses tokens from the scripts of the text, without
# a vocabulary.  On prose of each script (t/tokenizer/corpus, and short
# texts written for this in t/tokenizer/script) the guess is within 20 %
# of the exact count for both encodings, where characters / 4 is 60-75 %
# low for Chinese, Japanese, Korean, Thai and emoji.  mixed.txt, a file of
# deliberately short runs of a dozen scripts and invalid bytes, is left
# out: the guess is 30-50 % low there.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

my @files = grep { !/mixed\.txt$/ }
            (glob("$TokTest::ROOT/t/tokenizer/corpus/*.txt"),
             glob("$TokTest::ROOT/t/tokenizer/script/*.txt"));
ok(@files >= 14, scalar(@files) . ' texts');

for my $file (@files) {
    my ($name) = $file =~ m{([^/]+/[^/]+)\.txt$};
    my $chars = do {
        open my $fh, '<:encoding(UTF-8)', $file or die "$file: $!";
        local $/;
        length <$fh>;
    };

    for my $enc (@TokTest::ENCODINGS) {
        my ($exact) = TokTest::run_lines("$TokTest::COUNT --encoding $enc "
                                         . "< $file");
        my ($guess) = TokTest::run_lines("$TokTest::COUNT --encoding $enc "
                                         . "--estimate < $file");
        my $err = ($guess - $exact) / $exact;
        my $quarter = (int(($chars + 3) / 4) - $exact) / $exact;

        ok(abs($err) <= 0.20, sprintf("%s %s: guess %d, exact %d (%+.0f %%, "
                                      . "characters / 4 %+.0f %%)", $name,
                                      $enc, $guess, $exact, 100 * $err,
                                      100 * $quarter));
    }
}

done_testing();
