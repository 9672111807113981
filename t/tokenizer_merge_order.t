#!/usr/bin/perl

# The order of merges, through all three merge paths (arrays, heap, lists
# by rank), on a vocabulary made for it.  tiktoken's vocabularies were
# learnt merge by merge, and on their text a merge never makes a pair of
# a lower rank than its own; a vocabulary need not be so.  This one has
# tokens over five letters whose ranks were shuffled, so a merge often
# makes a pair that must go before the rank being taken, and a hand-made
# case where it decides the count: in "vwxyz", "wx" merges first, then
# "vwx" (a lower rank) must go before "yz": 2 tokens, not 3.  Counts must
# equal tiktoken's own loop (npm) on the same vocabulary.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use MIME::Base64 qw(encode_base64);
use Test::More;
use TokTest;

TokTest::setup();

my $seed = 2024;
sub rnd {
    $seed = ($seed * 1103515245 + 12345) % 2147483648;
    return ($seed >> 16) % $_[0];
}

# o200k_base's split pattern: the loader knows an encoding by it
my $o200k = do {
    local $/;
    open my $fh, '<',
        "$TokTest::ROOT/.build/npm/node_modules/tiktoken/encoders/"
        . "o200k_base.json" or die $!;
    <$fh>;
};
my ($pat) = $o200k =~ /"pat_str"\s*:\s*("(?:[^"\\]|\\.)*")/;
ok(defined $pat, 'the split pattern of o200k_base');

# every byte, the hand-made case, then 200 tokens of a to e, each two
# earlier ones joined, at shuffled ranks
my @tokens = map { chr } 0 .. 255;
push @tokens, 'vwx', 'wx', 'yz', 'vw';

my %have = map { $_ => 1 } @tokens;
my @made = ('a' .. 'e');
my @extra;
while (@extra < 200) {
    my $t = $made[rnd(scalar @made)] . $made[rnd(scalar @made)];
    next if length $t > 8 || $have{$t}++;
    push @made, $t;
    push @extra, $t;
}
for my $i (reverse 1 .. $#extra) {
    my $j = rnd($i + 1);
    @extra[$i, $j] = @extra[$j, $i];
}
push @tokens, @extra;

my $ranks = '! 0 ' . join ' ', map { encode_base64($_, '') } @tokens;
my $vocab = TokTest::write_temp(
    "{\"pat_str\": $pat, \"special_tokens\": {}, "
    . "\"bpe_ranks\": \"$ranks\"}");
rename $vocab, "$vocab.json" or die $!;
$vocab .= '.json';

# short words, words past the lists' threshold, a long run of the case
my @cases = (['vwxyz', 'vwxyz']);
for my $n (1 .. 300) {
    my $len = 2 + rnd($n <= 280 ? 40 : 3000);
    push @cases, ["random $n", join '', map { ('a' .. 'e')[rnd(5)] }
                                         1 .. $len];
}
push @cases, ['vwxyz x 200', 'vwxyz' x 200];
$_->[1] = unpack('H*', $_->[1]) for @cases;

my $file = TokTest::write_temp(join('', map { "$_->[1]\n" } @cases));
my @ref = TokTest::run_lines(
    "node $TokTest::REF $vocab --hex-lines < $file");
is($ref[0], 2, 'tiktoken: "vwxyz" is 2 tokens');

for my $way (['default', ''],
             ['arrays', '--small-max 256 --bucket-min ' . (1 << 40)],
             ['heap', '--small-max 0 --bucket-min ' . (1 << 40)],
             ['rank lists', '--small-max 0 --bucket-min 2']) {
    my ($name, $args) = @$way;
    my @ours = TokTest::run_lines("$TokTest::COUNT --vocab $vocab "
        . "--encoding o200k_base --hex-lines $args < $file");
    my @bad = grep { ($ours[$_] // -1) != $ref[$_] } 0 .. $#cases;
    is(scalar @bad, 0, "$name: " . scalar(@cases) . ' counts equal '
       . 'tiktoken\'s') or diag(join "\n", map {
           "$cases[$_][0]: $ours[$_] against $ref[$_]" } @bad[0 .. 4]);
}

unlink $vocab;

# a vocabulary whose ranks leave most numbers unused: the lists, indexed
# by rank, would scan and hold 16 million of them for each long piece;
# such a vocabulary keeps to the heap

my $sparse = TokTest::write_temp(
    "{\"pat_str\": $pat, \"special_tokens\": {}, \"bpe_ranks\": \""
    . join('\n', (map { encode_base64(chr($_), '') . " $_" } 0 .. 255),
           encode_base64('ab', '') . ' 300',
           encode_base64('abab', '') . ' 16777215')
    . "\"}");
rename $sparse, "$sparse.json" or die $!;
$sparse .= '.json';

my $hex = TokTest::write_temp(unpack('H*', 'ab' x 1000) . "\n");
my $word = TokTest::write_temp('ab' x 1000);
my ($sref) = TokTest::run_lines(
    "node $TokTest::REF $sparse --hex-lines < $hex");
my $cmd = "$TokTest::COUNT --vocab $sparse --encoding o200k_base --info "
          . "< $word 2>&1";
my $out = `$cmd`;
my ($sours) = $out =~ /^(\d+)$/m;
my ($kept) = $out =~ /workspace: (\d+) bytes/;
is($sours, $sref, "ranks up to 16,777,215: a 2,000-byte word, $sref tokens");
ok(defined $kept && $kept < 4 * 1024 * 1024,
   'ranks up to 16,777,215: nothing kept for their lists ('
   . ($kept // '?') . ' bytes)');
unlink $sparse;

done_testing();
