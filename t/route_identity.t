#!/usr/bin/perl

# llm_identity: nginx obtains Entra ID tokens itself, from a loopback
# stand-in of each endpoint (tools/identity-sim): the instance metadata
# service (IMDS), App Service's IDENTITY_ENDPOINT (from the environment)
# and Entra's token endpoint over verified TLS for a workload identity's
# federated token.  One fetch serves every worker; tokens are fetched
# again halfway through their life; a failing endpoint leaves the last
# token serving until it expires, then the pool answers 503 and charges
# nothing; the endpoint's recovery brings tokens back.  No token, header
# secret or federated token ever shows in logs or status.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;
use IO::Socket::IP;

my $t = LLMTest->new;
my $dir = $t->dir;

open my $fh, '>', "$dir/federated.jwt" or die;
print $fh "eyJhbGciOiJSUzI1NiJ9.federated-assertion-secret.c2ln\n";
close $fh;

my $header = 'app-service-header-secret';
# IPv6 loopback, where the machine has it: a token endpoint named by an
# IPv6 address, its certificate checked against that address
my $v6 = IO::Socket::IP->new(LocalHost => '::1', LocalPort => 0,
                             Listen => 1) ? free_port() : 0;

my ($idp, $idtls) = $t->start_identity_sim(
    '--client-id', 'client-1', '--tenant', 'tenant-1', '--header', $header,
    '--assertion-file', "$dir/federated.jwt", '--lifetime', 8,
    ($v6 ? ('--tls6-port', $v6) : ()));

my %port = map { $_ => free_port() } qw(vm app aks);

$t->start_sim({ control_port => free_port(), deployments => [ map {
    { name => $_, port => $port{$_}, deployment => "dep-$_", tpm => 100000,
      ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 5 }
} sort keys %port ] });

my %lport = map { $_ => free_port() } qw(vm app aks);
my $listen = $lport{vm};

my $v6conf = $v6 ? <<"END" : '';
    llm_identity aks6 workload tenant=tenant-1
        endpoint=https://[::1]:$v6/tenant-1/oauth2/v2.0/token
        trusted_certificate=$dir/idcerts/ca.pem;
    upstream aks6 {
        llm_balance zone=llm;
        llm_backend aks6 http://127.0.0.1:$port{aks} deployment=dep-aks
                    tpm=100k identity=aks6;
    }
END

my $http = <<"END";
    llm_zone llm:1m;

    llm_identity vm imds client_id=client-1 timeout=2s
        endpoint=http://127.0.0.1:$idp/metadata/identity/oauth2/token;
    llm_identity app app_service;
    llm_identity aks workload tenant=tenant-1
        endpoint=https://127.0.0.1:$idtls/tenant-1/oauth2/v2.0/token
        trusted_certificate=$dir/idcerts/ca.pem;

$v6conf
    log_format auth '\$request_uri \$status \$llm_backend_authorization';

    upstream vm {
        llm_balance zone=llm;
        llm_backend vm http://127.0.0.1:$port{vm} deployment=dep-vm
                    tpm=100k identity=vm;
    }
    upstream app {
        llm_balance zone=llm;
        llm_backend app http://127.0.0.1:$port{app} deployment=dep-app
                    tpm=100k identity=app;
    }
    upstream aks {
        llm_balance zone=llm;
        llm_backend aks http://127.0.0.1:$port{aks} deployment=dep-aks
                    tpm=100k identity=aks;
    }

    server {
        listen 127.0.0.1:$lport{vm};
        access_log $dir/auth.log auth;
        location / { llm_route vm; proxy_pass http://vm; }
        location = /status { llm_status; }
    }
    server {
        listen 127.0.0.1:$lport{app};
        access_log $dir/auth.log auth;
        location / { llm_route app; proxy_pass http://app; }
        location = /status { llm_status; }
    }
    server {
        listen 127.0.0.1:$lport{aks};
        access_log $dir/auth.log auth;
        location / { llm_route aks; proxy_pass http://aks; }
        location = /status { llm_status; }
    }
END

# App Service gives the app its endpoint and secret in the environment
local $ENV{IDENTITY_ENDPOINT} = "http://127.0.0.1:$idp/msi/token";
local $ENV{IDENTITY_HEADER} = $header;
local $ENV{AZURE_CLIENT_ID} = 'client-1';
local $ENV{AZURE_FEDERATED_TOKEN_FILE} = "$dir/federated.jwt";

# the first tokens come a second late: the first requests wait for them

$t->identity_set({ delay_ms => 1000 });

$t->start_nginx($http, ports => [values %lport], workers => 2);

my $body = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}';

sub chat {
    my ($who) = @_;
    return http_post($lport{$who},
        "/openai/deployments/x/chat/completions?api-version=2024-06-01",
        $body);
}

my $t0 = time;
my ($st) = chat('vm');
is($st, 200, 'a request at start waits for the first token');
cmp_ok(time - $t0, '>=', 0.5, '... which came a second late');

$t->identity_set({ delay_ms => 0 });

sub identities {
    my ($s) = llm_status($listen);
    return { map { $_->{name} => $_ } @{ $s->{identities} } };
}

ok(wait_for(10, sub { my $i = identities();
                      ($v6 ? 4 : 3)
                      == grep { $i->{$_}{state} eq 'ready' } keys %$i }),
   'every identity has a token')
    or diag explain identities();

SKIP: {
    skip 'no IPv6 loopback here', 1 unless $v6;
    is(identities()->{aks6}{state}, 'ready',
       'https://[::1]: the certificate checked against the address');
}

my $ids = $t->identity_stats;
is_deeply($ids->{issued}, { imds => 1, app_service => 1,
                            workload => $v6 ? 2 : 1 },
          'one token per identity for both workers')
    or diag explain $ids;
is_deeply($ids->{refused}, [], 'the stand-in refused nothing');

for my $who (qw(vm app aks)) {
    my ($s) = chat($who);
    is($s, 200, "$who: 200");
}

my $sim = $t->sim_stats;
my %want = (vm => 'imds', app => 'app_service', aks => 'workload');
for my $who (sort keys %want) {
    # one token a source, but two workload identities with IPv6
    my @given = @{ $ids->{tokens}{ $want{$who} } };
    my $seen = $sim->{deployments}{$who}{bearers} || {};
    ok(keys %$seen == 1 && grep({ $seen->{$_} } @given) == 1,
       "$who: the backend saw the $want{$who} token, and only it")
        or diag explain $seen;
}

my $i = identities();
is($i->{vm}{source}, 'imds', 'status: source');
cmp_ok($i->{vm}{expires_in}, '>', 0, 'status: expires_in');
cmp_ok($i->{vm}{refresh_in}, '<=', 4, 'status: fetched again halfway');

# halfway through an 8 s life, a new token

ok(wait_for(8, sub { $t->identity_stats->{issued}{imds} >= 2 }),
   'a token is fetched again before it expires');
ok(wait_for(3, sub { identities()->{vm}{fetched} >= 2 }), '... and kept');
($st) = chat('vm');
is($st, 200, 'served with the new token');
$ids = $t->identity_stats;
$sim = $t->sim_stats;
ok($sim->{deployments}{vm}{bearers}{ $ids->{tokens}{imds}[-1] },
   '... which the backend saw');

# the endpoint fails: the last token serves until it expires

$t->identity_set({ fail => 500, fail_count => -1 });
my $last = $ids->{tokens}{imds}[-1];

ok(wait_for(8, sub { identities()->{vm}{state} eq 'failing' }),
   'the identity is failing once a refresh fails');
like(identities()->{vm}{last_error}, qr/^500 server_error/,
     'status: the endpoint\'s answer');
($st) = chat('vm');
is($st, 200, 'the last token still serves');
is($t->sim_stats->{deployments}{vm}{bearers}{$last}, 2,
   '... the last token, sent again');

my ($before) = llm_status($listen);
ok(wait_for(10, sub { identities()->{vm}{state} eq 'expired' }),
   'the token expires') or diag explain identities()->{vm};

my ($s503, $h503, $b503) = chat('vm');
is($s503, 503, 'no valid token: 503');
like($b503, qr/"code":"ServiceUnavailable".*valid Entra ID token/,
     '... saying why, in Azure\'s shape');
my ($after) = llm_status($listen);
my ($bv) = grep { $_->{name} eq 'vm' } @{ $after->{pools} };
my ($bv0) = grep { $_->{name} eq 'vm' } @{ $before->{pools} };
is($bv->{backends}[0]{requests}, $bv0->{backends}[0]{requests},
   '... and nothing is charged');
like($t->error_log, qr/identity "vm" got no token from "[^"]+": 500 /,
     'the log says what the endpoint answered');

# the endpoint recovers: tokens again, within the back-off

$t->identity_set({ fail => 0 });
ok(wait_for(20, sub { identities()->{vm}{state} eq 'ready' }),
   'the endpoint recovers: a token again');
($st) = chat('vm');
is($st, 200, 'served again');

# a reload keeps the tokens of unchanged identities; app's token, which
# expired meanwhile, comes back within its own back-off first, and the
# reload is looked at well before its next refresh

ok(wait_for(30, sub { my $app = identities()->{app};
                      $app->{state} eq 'ready' && $app->{refresh_in} >= 3 }),
   'app has a token again, not due for a while')
    or diag explain identities()->{app};
my $fetched = identities()->{app}{fetched};
$t->reload_nginx;
sleep 1.5;
is(identities()->{app}{fetched}, $fetched, 'a reload fetches nothing anew');
($st) = chat('app');
is($st, 200, 'served after the reload');

# garbage, a hang, a wrong CA: each a clear reason, the token kept

$t->identity_set({ garbage => 1 });
ok(wait_for(10, sub { (identities()->{vm}{last_error} // '')
                      =~ /not a JSON object/ }), 'garbage: said')
    or diag explain identities()->{vm};
$t->identity_set({ garbage => 0, hang => 1 });
ok(wait_for(20, sub { (identities()->{vm}{last_error} // '')
                      =~ /timed out/ }), 'a hang: timed out (timeout=2s)')
    or diag explain identities()->{vm};
$t->identity_set({ hang => 0 });

# a lifetime past any clock (IMDS sends it as a string): taken as a day,
# so the token is valid and fetched again within the day (it overflowed
# to a token expired at once, never fetched again: 503 for ever)

my $issued = $t->identity_stats->{issued}{imds};
$t->identity_set({ lifetime => 9223372036854775000 });
ok(wait_for(15, sub { $t->identity_stats->{issued}{imds} > $issued
                      && (identities()->{vm}{expires_in} // 0) > 8 }),
   'a lifetime past any clock: a new token')
    or diag explain identities()->{vm};
$i = identities()->{vm};
ok($i->{state} eq 'ready' && $i->{expires_in} <= 86400
   && $i->{refresh_in} <= 43200,
   "... valid for a day at most ($i->{state}, $i->{expires_in} s), "
   . "fetched again halfway") or diag explain $i;
($st) = chat('vm');
is($st, 200, '... and served');
$t->identity_set({ lifetime => 8 });

# nothing secret in logs or status

my $all = $t->error_log . $t->read_file('access.log')
        . $t->read_file('identity-sim.log');
my $status = (http_get($listen, '/status'))[2]
           . (http_get($listen, '/status?format=prometheus'))[2];
$ids = $t->identity_stats;
my @tokens = map { @{ $ids->{tokens}{$_} } } keys %{ $ids->{tokens} };
my $leaks = grep { index($all . $status, $_) >= 0 } @tokens,
            $header, 'federated-assertion-secret';
is($leaks, 0, 'no token, header secret or federated token in logs or '
              . 'status');
like($t->read_file('auth.log'), qr{^/openai/\S+ 200 Bearer mi\.imds\.}m,
     '$llm_backend_authorization gives the token, when logged on purpose');

my $metrics = (http_get($listen, '/status?format=prometheus'))[2];
like($metrics, qr/^llm_identity_token_expiry_seconds\{identity="aks"\} \d+$/m,
     'prometheus: expiry');
like($metrics, qr/^llm_identity_fetches_total\{identity="vm"\} \d+$/m,
     'prometheus: fetches');

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $out, '>', "$dir/metrics.txt" or die;
    print $out $metrics;
    close $out;
    my $check = `/usr/bin/promtool check metrics < $dir/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $check;
}

# the configuration's mistakes, said at start

my @bad = (
    [ "llm_identity a imds;\n upstream u { llm_balance zone=llm;"
      . " llm_backend b http://127.0.0.1:1 identity=nope; }",
      qr/no "llm_identity nope"/ ],
    [ "llm_identity a imds;\n upstream u { llm_balance zone=llm;"
      . " llm_backend b http://127.0.0.1:1 identity=a key_file=/x; }",
      qr/more than one of key_file=, bearer_file= and identity=/ ],
    [ "llm_identity a magic;", qr/the source is "imds"/ ],
    [ "llm_identity a imds endpoint=ftp://x/;", qr/not an http/ ],
    [ "llm_identity a imds; llm_identity a imds;", qr/is duplicate/ ],
);

{
    local $ENV{IDENTITY_ENDPOINT};
    delete $ENV{IDENTITY_ENDPOINT};
    push @bad, [ "llm_identity a app_service;", qr/needs IDENTITY_ENDPOINT/ ];
    for my $case (@bad) {
        my ($rc, $out) = $t->test_conf("llm_zone llm:1m;\n$case->[0]");
        isnt($rc, 0, "nginx -t refuses: $case->[0]");
        like($out, $case->[1], '... saying why');
    }
}

$t->done;
