#!/usr/bin/perl

# Every configuration in conf-examples/ passes nginx -t with this build.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my @files = glob($t->top . '/conf-examples/*.conf');
ok(@files, 'there are examples');

for my $file (@files) {
    # the reader's module path, ports, backends, keys, vocabularies and CA
    # bundle become ours (see LLMTest::example_conf)
    my ($conf) = $t->example_conf($file);

    my $out = $t->dir . '/example.conf';
    open my $fh, '>', $out or die "$out: $!";
    print $fh $conf;
    close $fh;

    my $res = `$ENV{LLM_NGINX} -p ${\ $t->dir} -c $out -t 2>&1`;
    is($?, 0, "nginx -t $file") or diag $res;
}

# bad configuration is refused with nginx's own wording
my ($rc, $out) = $t->test_conf(<<'END');
    server { location / { llm_route; llm_route; } }
END
isnt($rc, 0, 'duplicate llm_route refused');
like($out, qr/"llm_route" directive is duplicate/, 'duplicate message');

($rc, $out) = $t->test_conf(<<'END');
    server { llm_route; }
END
like($out, qr/"llm_route" directive is not allowed here/,
     'llm_route only in a location');

($rc, $out) = $t->test_conf(<<'END');
    server { location / { llm_completion_reserve 200000000; } }
END
like($out, qr/"llm_completion_reserve" must not exceed/, 'reserve bounded');

($rc, $out) = $t->test_conf(<<'END');
    server { location / { llm_max_body_size lots; } }
END
like($out, qr/"llm_max_body_size" directive invalid value/, 'size checked');

$t->done;
