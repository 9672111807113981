#!/usr/bin/perl

# With no proxy_set_header and no proxy_ssl_* name lines at all, every
# attempt carries its own backend's Host, TLS name (SNI, and the name
# verified) and credential, and the client's api-key, Authorization and
# Host never reach a backend: along a 429 retry chain over TLS, with
# keepalive, for api-key and bearer backends, and whatever Host a
# location's proxy_set_header says.  A plain "server" line is left as
# the location configures it.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $certs = "$dir/certs";

my @names = qw(alpha beta);
my %port = map { $_ => free_port() } @names, 'delta';

my @deployments = map {
    { name => $_, port => $port{$_}, tls => JSON::PP::true(),
      host => "res-$_.openai.azure.com", api_key => "key-$_",
      deployment => "dep-$_", tpm => 100000, ttft_ms => [0, 0],
      tokens_per_s => 2000, completion_tokens => 5 }
} @names;

push @deployments, { name => 'delta', port => $port{delta},
    tls => JSON::PP::true(), host => 'res-delta.openai.azure.com',
    bearer => 'tok-delta', deployment => 'dep-delta', tpm => 100000,
    ttft_ms => [0, 0], tokens_per_s => 2000, completion_tokens => 5 };

$t->start_sim({ control_port => free_port(), tls_dir => $certs,
                deployments => \@deployments });

for my $n (@names) {
    open my $fh, '>', "$dir/$n.key" or die;
    print $fh "key-$n\n";
    close $fh;
}
open my $fh, '>', "$dir/delta.token" or die;
print $fh "tok-delta\n";
close $fh;

my $echo = $t->start_echo;
my $listen = free_port();

$t->start_nginx(<<"END", ports => [$listen], workers => 2);
    llm_zone llm:1m;

    upstream azure {
        llm_balance zone=llm keepalive=4;
        llm_backend alpha https://res-alpha.openai.azure.com
                    deployment=dep-alpha tpm=100k key_file=$dir/alpha.key
                    priority=1 address=127.0.0.1:$port{alpha};
        llm_backend beta https://res-beta.openai.azure.com
                    deployment=dep-beta tpm=100k key_file=$dir/beta.key
                    priority=2 address=127.0.0.1:$port{beta};
    }

    upstream bearer {
        llm_balance zone=llm;
        llm_backend delta https://res-delta.openai.azure.com
                    deployment=dep-delta tpm=100k
                    bearer_file=$dir/delta.token
                    address=127.0.0.1:$port{delta};
    }

    upstream plain {
        llm_balance zone=llm;
        server 127.0.0.1:$echo;
    }

    server {
        listen 127.0.0.1:$listen;

        # the README's minimal location: nothing about Host, keys or TLS
        # names, only the verification of the backends' certificates
        location /openai/ {
            llm_route azure;
            proxy_pass https://azure;
            proxy_next_upstream error timeout http_429 non_idempotent;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            add_header X-Backend \$llm_backend always;
        }

        # a location that says otherwise is overruled
        location /wrong/ {
            llm_route azure;
            rewrite ^/wrong(/.*)\$ \$1 break;
            proxy_pass https://azure;
            proxy_set_header Host \$host;
            proxy_set_header api-key \$http_api_key;
            proxy_set_header Authorization \$http_authorization;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
        }

        location /bearer/ {
            llm_route bearer;
            rewrite ^/bearer(/.*)\$ \$1 break;
            proxy_pass https://bearer;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
        }

        location /plain/ {
            llm_route plain;
            proxy_pass http://plain;
        }
    }
END

my $chat = '/openai/deployments/client-name/chat/completions'
         . '?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 10 });

sub call {
    my ($uri) = @_;
    return http_post($listen, $uri, $body,
                     'api-key' => 'client-secret',
                     'Authorization' => 'Bearer client-tok');
}

sub saw_only_its_own {
    my ($name, $what) = @_;
    my $d = $t->sim_stats->{deployments}{$name};
    my $host = "res-$name.openai.azure.com";
    is_deeply($d->{hosts}, { $host => $d->{requests} },
              "$what: $name saw its own Host");
    is_deeply($d->{sni}, { $host => $d->{requests} },
              "$what: $name saw its own SNI");
    if ($name eq 'delta') {
        is_deeply($d->{bearers}, { 'tok-delta' => $d->{requests} },
                  "$what: $name saw its bearer token only");
        is_deeply($d->{api_keys} // {}, {}, "$what: $name saw no api-key");
    } else {
        is_deeply($d->{api_keys}, { "key-$name" => $d->{requests} },
                  "$what: $name saw its own key only");
        is_deeply($d->{bearers} // {}, {},
                  "$what: $name saw no Authorization");
    }
}

for my $round (1 .. 3) {
    my ($st, $h, $raw) = call($chat);
    is($st, 200, "minimal location, request $round") or diag $raw;
}
saw_only_its_own('alpha', 'minimal location, keepalive');

# a retry chain: alpha says 429, beta answers

$t->sim_reset;
$t->sim_update('alpha', { faults => { overload429 => 1 } });
my ($st, $h, $raw) = call($chat);
is($st, 200, 'retry chain') or diag $raw;
is($h->{'x-backend'}, 'beta', 'beta answered');
saw_only_its_own($_, 'retry chain') for @names;
$t->sim_update('alpha', { faults => { overload429 => 0 } });

$t->sim_reset;
($st, $h, $raw) = call("/wrong$chat");
is($st, 200, 'proxy_set_header overruled') or diag $raw;
saw_only_its_own('beta', 'proxy_set_header Host $host');

($st, $h, $raw) = call("/bearer$chat");
is($st, 200, 'bearer backend') or diag $raw;
saw_only_its_own('delta', 'bearer');

# a plain server line: the request as the location builds it

($st, $h, $raw) = call("/plain$chat");
is($st, 200, 'plain server line');
my $seen = json_decode($raw)->{headers};
is($seen->{'api-key'}, 'client-secret', 'plain: the client headers pass');
is($seen->{host}, 'plain', 'plain: the Host proxy sets');

# the credentials go in after proxy built the request: even nginx's
# debug log, which prints every header proxy sets, has none of them
my $log = $t->error_log;
SKIP: {
    skip 'nginx without --with-debug', 2 unless $log =~ /\[debug\]/;
    unlike($log, qr/key-(alpha|beta|gamma)/, 'no backend key in the debug log');
    unlike($log, qr/tok-delta/, 'nor a bearer token');
}

$t->done;
