package TokTest;

# Helpers for t/tokenizer_*.t: find (or build) .build/llm-count and the
# tiktoken reference, run both on the same strings.  The tokenizer needs
# no nginx, so these tests do not use LLMTest->new.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempfile);
use Test::More;

our $ROOT = abs_path(dirname(__FILE__) . '/../..');
our $COUNT = "$ROOT/.build/llm-count";
our $REF = "$ROOT/t/tokenizer/reference.js";
our $CASES = "$ROOT/t/tokenizer/cases.js";
our @ENCODINGS = qw(o200k_base cl100k_base);

# Builds once if needed; skips the whole file when the tools are missing.
sub setup {
    my $tiktoken = "$ROOT/.build/npm/node_modules/tiktoken/encoders";

    if (!-x $COUNT || !-f "$tiktoken/o200k_base.json"
        || ($ENV{LLM_TOKENIZER_REBUILD} // '') eq '1')
    {
        my $log = `sh $ROOT/build/tokenizer.sh 2>&1`;
        if ($?) {
            plan skip_all => "build/tokenizer.sh failed:\n$log";
        }
    }

    plan skip_all => 'node not found' if system('node -v >/dev/null 2>&1');
}

sub write_temp {
    my ($data) = @_;
    my ($fh, $name) = tempfile(UNLINK => 1);
    binmode $fh;
    print $fh $data;
    close $fh;
    return $name;
}

sub run_lines {
    my ($cmd) = @_;
    my @out = `$cmd`;
    die "failed: $cmd\n" if $?;
    chomp @out;
    return @out;
}

# [label, hex] pairs from cases.js
sub cases {
    my (@args) = @_;
    my @cases;
    for (run_lines("node $CASES @args")) {
        next if $_ eq '';
        my ($label, $hex) = split /\t/, $_, 2;
        push @cases, [$label, $hex];
    }
    return @cases;
}

# counts of llm-count and of tiktoken for the same hex strings
sub counts {
    my ($enc, $cases, @opts) = @_;
    my $file = write_temp(join('', map { "$_->[1]\n" } @$cases));
    my @ours = run_lines("$COUNT --encoding $enc --hex-lines @opts < $file");
    my @ref = run_lines("node $REF $enc --hex-lines < $file");
    return (\@ours, \@ref);
}

1;
