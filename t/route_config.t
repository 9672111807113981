#!/usr/bin/perl

# Bad routing configuration is refused at start with a clear [emerg].

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

open my $fh, '>', "$dir/k.key" or die;
print $fh "secret-key\n";
close $fh;
open $fh, '>', "$dir/empty.key" or die;
close $fh;

sub conf_error {
    my ($name, $re, $http) = @_;
    my ($rc, $out) = $t->test_conf($http);
    isnt($rc, 0, "$name: refused");
    like($out, $re, "$name: message") or diag $out;
    unlike($out, qr/secret-key/, "$name: no key in the message");
}

my $ok = <<"END";
    llm_zone llm:64k;
    upstream u {
        llm_balance zone=llm;
        llm_backend a https://a.example deployment=d tpm=10k
                    key_file=$dir/k.key address=127.0.0.1:1;
        server 127.0.0.1:2;
    }
    server { location / { llm_route u; proxy_pass https://u; } }
END
my ($rc, $out) = $t->test_conf($ok);
is($rc, 0, 'a good configuration passes') or diag $out;

conf_error('unknown parameter', qr/invalid parameter "colour=blue"/, <<"END");
    llm_zone llm:64k;
    upstream u {
        llm_balance zone=llm;
        llm_backend a https://a.example colour=blue address=127.0.0.1:1;
    }
END

conf_error('duplicate names', qr/duplicate llm_backend "a" in upstream "u"/, <<"END");
    llm_zone llm:64k;
    upstream u {
        llm_balance zone=llm;
        llm_backend a https://a.example address=127.0.0.1:1;
        llm_backend a https://b.example address=127.0.0.1:2;
    }
END

conf_error('llm_route without llm_balance', qr/"llm_route" names upstream "plain" that has no "llm_balance"/, <<"END");
    upstream plain { server 127.0.0.1:1; }
    server { location / { llm_route plain; proxy_pass http://plain; } }
END

# nginx 1.29.7 and later wrap every upstream in keepalive once all are
# read, whatever the order: there the pool's cache takes its place
my $after_keepalive = <<"END";
    llm_zone llm:64k;
    upstream u {
        server 127.0.0.1:1;
        keepalive 4;
        llm_balance zone=llm;
    }
END

my ($version) = `$ENV{LLM_NGINX} -v 2>&1` =~ m{nginx/(\d+)\.(\d+)\.(\d+)}
    ? sprintf('%d%03d%03d', $1, $2, $3) : (0);

if ($version >= 1029007) {
    my ($rc, $out) = $t->test_conf($after_keepalive);
    is($rc, 0, 'llm_balance after keepalive: accepted') or diag $out;
} else {
    conf_error('llm_balance after keepalive',
               qr/"llm_balance" must come before "keepalive"/,
               $after_keepalive);
}

conf_error('llm_backend without llm_balance', qr/"llm_backend" needs "llm_balance" before it/, <<"END");
    upstream u { llm_backend a https://a.example address=127.0.0.1:1; }
END

conf_error('empty key file', qr/cannot read a credential from "\Q$dir\E\/empty.key"/, <<"END");
    llm_zone llm:64k;
    upstream u {
        llm_balance zone=llm;
        llm_backend a https://a.example key_file=$dir/empty.key
                    address=127.0.0.1:1;
    }
END

conf_error('missing key file', qr/cannot read a credential from "\Q$dir\E\/missing.key"/, <<"END");
    llm_zone llm:64k;
    upstream u {
        llm_balance zone=llm;
        llm_backend a https://a.example key_file=$dir/missing.key
                    address=127.0.0.1:1;
    }
END

conf_error('bad URL', qr{invalid URL "ftp://a.example"}, <<"END");
    llm_zone llm:64k;
    upstream u { llm_balance zone=llm; llm_backend a ftp://a.example; }
END

conf_error('no zone', qr/"llm_balance" needs "zone="/, <<"END");
    upstream u { llm_balance cooldown=1s; server 127.0.0.1:1; }
END

conf_error('zone size', qr/zone "llm:4k" is too small/, <<"END");
    llm_zone llm:4k;
END

# the name is in every key a shared zone writes in Redis (key[160]): a
# longer one overran it and killed the worker at its first consumer
conf_error('shared zone name too long',
           qr/llm_zone "z{65}" shared through Redis needs a name of at most 64/,
           <<"END");
    llm_zone ${\ ('z' x 65) }:64k redis=redis://127.0.0.1:6379;
END

($rc, $out) = $t->test_conf(<<"END");
    llm_zone ${\ ('z' x 64) }:64k redis=redis://127.0.0.1:6379;
    llm_zone ${\ ('y' x 300) }:64k;
END
is($rc, 0, 'a shared zone name of 64 bytes, a local one of 300') or diag $out;

conf_error('zone declared twice', qr/duplicate zone "llm"/, <<"END");
    llm_zone llm:64k;
    llm_zone llm:64k;
END

my $many = join '', map {
    "        llm_backend b$_ http://b$_.example address=127.0.0.1:$_;\n"
} 1 .. 60;

# each option's value within its bounds, by the directives' one table
# parser: the bad one is named

for my $case (
    [ 'llm_balance zone=llm window=500ms;', 'window=500ms' ],
    [ 'llm_balance zone=llm keepalive=0;', 'keepalive=0' ],
    [ 'llm_balance zone=llm cooldown_max=soon;', 'cooldown_max=soon' ],
    [ 'llm_balance zone=llm; llm_backend a http://a weight=0;', 'weight=0' ],
    [ 'llm_balance zone=llm; llm_backend a http://a weight=1001;',
      'weight=1001' ],
    [ 'llm_balance zone=llm; llm_backend a http://a tpm=lots;', 'tpm=lots' ],
    [ 'llm_balance zone=llm; llm_backend a http://a reserve=200m;',
      'reserve=200m' ],
    [ 'llm_balance zone=llm; llm_backend a http://a address=;', 'address=' ],
    [ 'llm_balance zone=llm; llm_backend a http://a fail_timeout=x;',
      'fail_timeout=x' ],
    [ 'llm_balance zone=llm; llm_backend a http://a deployment=a/b;',
      'deployment=a/b' ],
) {
    my ($line, $bad) = @$case;
    conf_error("bad $bad", qr/invalid parameter "\Q$bad\E"/, <<"END");
    llm_zone llm:64k;
    upstream u { $line server 127.0.0.1:1; }
END
}

# a zone too small for its backends fails at start, not only at -t
$t->write_conf(<<"END");
    llm_zone llm:32k;
    upstream u {
        llm_balance zone=llm;
$many
    }
    server { listen 127.0.0.1:${\ free_port()}; location / {
        llm_route u; proxy_pass http://u; } }
END
$out = `$ENV{LLM_NGINX} -p $dir -c $dir/nginx.conf -t 2>&1`;
like($out, qr/llm_zone "llm" is too small for its backends/,
     'zone too small for 60 backends');

# these tests provoke [emerg] on purpose
$t->allow_log(qr/\[emerg\]/);
$t->done;
