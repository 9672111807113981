#!/usr/bin/perl

# Two TLS backends behind one address with different names: the pool's
# own keepalive cache (llm_balance keepalive=) reuses connections per
# backend, so each backend only ever sees connections made with its own
# name; nginx's address-keyed keepalive is refused for such a pool.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $certs = "$dir/certs";

my $ctl = free_port();
my $shared = free_port();
my @deployments = map {
    { name => $_, port => $shared, tls => JSON::PP::true(),
      host => "res-$_.openai.azure.com", api_key => "key-$_",
      deployment => "dep-$_", tpm => 1000000, ttft_ms => [0, 0],
      tokens_per_s => 5000, completion_tokens => 3 }
} qw(alpha beta);
$t->start_sim({ control_port => $ctl, tls_dir => $certs,
                deployments => \@deployments });

for my $n (qw(alpha beta)) {
    open my $fh, '>', "$dir/$n.key" or die;
    print $fh "key-$n\n";
    close $fh;
}

my $backends = join '', map {
    "        llm_backend $_ https://res-$_.openai.azure.com"
    . " deployment=dep-$_ tpm=1m key_file=$dir/$_.key"
    . " address=127.0.0.1:$shared;\n"
} qw(alpha beta);

my $location = <<"END";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_ssl_server_name on;
            proxy_ssl_name \$llm_backend_host;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            add_header X-Backend \$llm_backend always;
END

# nginx 1.29.7 and later keep every upstream's connections alive
# unasked: there the pool's own cache always takes nginx's place
my ($version) = `$ENV{LLM_NGINX} -v 2>&1` =~ m{nginx/(\d+)\.(\d+)\.(\d+)}
    ? sprintf('%d%03d%03d', $1, $2, $3) : (0);
my $implicit = $version >= 1029007;

# nginx's keepalive with two names on one address: refused
my ($rc, $out) = $t->test_conf(<<"END");
    llm_zone llm:1m;
    upstream azure {
        llm_balance zone=llm;
$backends
        keepalive 8;
    }
END
if ($implicit) {
    is($rc, 0, 'keepalive: the pool\'s own cache in its place') or diag $out;
} else {
    isnt($rc, 0, 'keepalive with a shared address refused');
    like($out, qr/llm_backend "alpha" and "beta" of upstream "azure" share the address 127.0.0.1:$shared: with "keepalive"/,
         'the message names both backends and the address');
}

($rc, $out) = $t->test_conf(<<"END");
    llm_zone llm:1m;
    upstream azure {
        llm_balance zone=llm keepalive=8;
$backends
        keepalive 8;
    }
END
if ($implicit) {
    is($rc, 0, 'both caches: the pool\'s') or diag $out;
} else {
    like($out, qr/has both "keepalive" and "llm_balance keepalive="/,
         'both caches refused');
}

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream azure {
        llm_balance zone=llm keepalive=8;
$backends
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/ {
            llm_route azure;
            proxy_pass https://azure;
$location
        }
    }
END

my $chat = '/openai/deployments/x/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 5 });
my %seen;
for (1 .. 10) {
    my ($st, $h) = http_post($listen, $chat, $body);
    is($st, 200, "request $_");
    $seen{$h->{'x-backend'}}++;
}
is_deeply(\%seen, { alpha => 5, beta => 5 }, 'both backends used in turn');

my $s = $t->sim_stats->{deployments};
for my $n (qw(alpha beta)) {
    is_deeply($s->{$n}{sni}, { "res-$n.openai.azure.com" => 5 },
              "$n: every request came with its own SNI");
    is($s->{$n}{sni_mismatch} // 0, 0, "$n: no SNI of the other name");
    is($s->{$n}{connections}, 1, "$n: one connection, kept alive");
}

$t->allow_log(qr/\[emerg\].*share the address|has both "keepalive"/);
$t->done;
