#!/usr/bin/perl

# build/deb.sh from a tree whose path has ".S" in it.  Debian's recipe
# hands nginx's configure an absolute build directory, and nginx's
# Makefile generator rewrites every ".S" in the module's object paths to
# ".o"; a build inside such a tree named objects that did not exist and
# failed (CI met it in a mktemp directory, /tmp/x.SzbSyf).  A symbolic
# link would not do: the recipe asks the kernel where it is.
#
# It builds the package (about 20 s), so it runs only where the tests
# are run against it: "scripts/test.sh deb".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Temp qw(tempdir);
use Test::More;

my $module = $ENV{LLM_MODULE} // '';
plan skip_all => 'only with the Debian package (scripts/test.sh deb)'
    unless $module =~ m{^/usr/lib/nginx/modules/};
plan skip_all => 'no dpkg-buildpackage'
    unless system('command -v dpkg-buildpackage >/dev/null 2>&1') == 0;

my $top = "$FindBin::Bin/../..";
my $dir = tempdir('llmtest-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $tree = "$dir/llm.Src";

# a copy of the tree as it is on disk, as build/deb.sh copies one without
# git; the vocabularies npm gave this tree are lent to it
mkdir $tree or die "mkdir $tree: $!";
system("cd $top && tar --exclude=./.build --exclude=./.git -cf - . "
       . "| tar -C $tree -xf -") == 0 or die "copying the tree failed";
mkdir "$tree/.build" or die "mkdir: $!";
symlink("$top/.build/npm", "$tree/.build/npm") or die "symlink: $!";

my $deb = `sh $tree/build/deb.sh 2>$dir/err`;
my $rc = $? >> 8;
chomp $deb;
my $err = do { local (@ARGV, $/) = "$dir/err"; <> } // '';

is($rc, 0, 'build/deb.sh succeeds in a tree under llm.Src')
    or diag($err =~ /((?:.*\n){1,15})\z/ ? $1 : $err);
like($deb, qr{^\Q$tree\E/\.build/deb/libnginx-mod-http-llm_[^/]+\.deb$},
     'it prints the package, in the tree\'s .build/deb');
ok(-s $deb, 'the package is there');

my $list = -s $deb ? `dpkg-deb -c $deb` : '';
like($list, qr{usr/lib/nginx/modules/ngx_http_llm_module\.so},
     'with the module in it');
my @changes = glob("$tree/.build/deb/*.changes");
is(scalar @changes, 1, 'and the .changes lintian reads, beside it');
my @left = glob('/tmp/llm-deb-*/src');
my @ours = grep { -M $_ < 0 } @left;
is(scalar @ours, 0, 'no build directory left in /tmp');

done_testing();
