#!/usr/bin/perl

# Chat framing: 3 tokens per message, the tokens of every string value,
# 1 more with "name", 3 to prime the reply (OpenAI cookbook "How to count
# tokens with tiktoken").  The cookbook's own example counts 129 with
# cl100k_base (gpt-4, gpt-3.5-turbo) and 124 with o200k_base (gpt-4o).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

my $dir = "$TokTest::ROOT/t/tokenizer/chat";
my %published = (o200k_base => 124, cl100k_base => 129);

for my $enc (@TokTest::ENCODINGS) {
    my ($ours) = TokTest::run_lines(
        "$TokTest::COUNT --encoding $enc --chat < $dir/cookbook.json");
    is($ours, $published{$enc}, "$enc: cookbook example, published count");

    for my $f (sort glob "$dir/*.json") {
        my ($o) = TokTest::run_lines(
            "$TokTest::COUNT --encoding $enc --chat < $f");
        my ($r) = TokTest::run_lines("node $TokTest::REF $enc --chat < $f");
        my $name = $f =~ s{.*/}{}r;
        is($o, $r, "$enc: $name equals tiktoken with the same framing");
    }
}

done_testing();
