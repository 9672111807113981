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
    open my $fh, '<', $file or die "$file: $!";
    my $conf = do { local $/; <$fh> };
    close $fh;

    # the example's module path and ports are the reader's; use ours
    my $module = $ENV{LLM_MODULE};
    $conf =~ s{^load_module\s+\S+;}
              {$module ? "load_module $module;" : ''}me;
    my %port;
    $conf =~ s{\b(80[89]\d)\b}{$port{$1} //= free_port()}ge;

    # no DNS here: backends connect to loopback; keys come from our dir
    my $keys = $t->dir . '/keys';
    mkdir $keys;
    my $n = 0;
    $conf =~ s{(llm_backend\s[^;]*?)(;)}
              {$1 =~ /address=/ ? "$1;"
                                : "$1 address=127.0.0." . ++$n . ":1;"}ge;
    my $vocab = $t->top . '/.build/npm/node_modules/tiktoken/encoders';
    $conf =~ s{/usr/share/nginx-llm/}{$vocab/}g;
    while ($conf =~ s{/etc/nginx/llm/([\w.-]+)}{$keys/$1}) {
        open my $k, '>', "$keys/$1" or die;
        print $k "example-key\n";
        close $k;
    }

    my $out = $t->dir . '/example.conf';
    open $fh, '>', $out or die "$out: $!";
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
