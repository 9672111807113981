#!/usr/bin/perl

# tools/aoai-sim: TLS.  Two hostnames on one port, each with its own
# certificate chosen by SNI and signed by the generated CA; the SNI and
# Host actually received are recorded; nginx verifies the certificates
# with proxy_ssl_trusted_certificate ca.pem and reuses connections.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $certs = $t->dir . '/certs';

my $ctl = free_port();
my $tls = free_port();
my %dep = (
    alpha => { port => $tls, tls => JSON::PP::true() },
    beta  => { port => $tls, tls => JSON::PP::true() },
);
my @deployments;
for my $name (sort keys %dep) {
    my $d = $dep{$name};
    %$d = (name => $name, host => "res-$name.openai.azure.com", api_key => "k-$name",
           deployment => 'gpt-4o', ttft_ms => [0, 0], tokens_per_s => 1000,
           completion_tokens => 5, %$d);
    push @deployments, $d;
}
$t->start_sim({ control_port => $ctl, tls_dir => $certs, deployments => \@deployments },
              '--speed', 10);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $hello = json_encode({ messages => [ { role => 'user', content => 'hello' } ],
                          max_tokens => 10 });

sub tls_call {
    my (%o) = @_;      # sni, host, verify, key
    my ($st, $h, $b) = LLMTest::https_request($tls,
        LLMTest::raw_post($o{host} // $o{sni}, $chat, $hello, 'api-key' => $o{key}),
        sni => $o{sni}, ca => "$certs/ca.pem", verify => $o{verify} // $o{sni});
    return ($st, $h, $b);
}

my ($ha, $hb) = map { $dep{$_}{host} } qw(alpha beta);

###########################################################################
# the generated files

for my $f ('ca.pem', "$ha.pem", "$ha.key", "$hb.pem", "$hb.key") {
    ok(-s "$certs/$f", "tls_dir has $f");
}
for my $host ($ha, $hb) {
    my $v = `openssl verify -CAfile $certs/ca.pem $certs/$host.pem 2>&1`;
    like($v, qr/: OK$/m, "$host.pem is signed by ca.pem");
    my $san = `openssl x509 -noout -ext subjectAltName -in $certs/$host.pem 2>&1`;
    like($san, qr/DNS:\Q$host\E\s*$/m, "$host.pem: SAN DNS:$host");
}

###########################################################################
# SNI chooses the certificate, Host chooses the deployment

{
    my ($st, $h) = tls_call(sni => $ha, key => 'k-alpha');
    is($st, 200, 'alpha: verified against ca.pem, 200');
    is($h->{'x-ms-region'}, 'alpha', 'alpha: served by alpha');
    ($st, $h) = tls_call(sni => $hb, key => 'k-beta');
    is($st, 200, 'beta: its own certificate verifies, 200');
    is($h->{'x-ms-region'}, 'beta', 'beta: served by beta');

    ok(!eval { tls_call(sni => $ha, verify => $hb, key => 'k-beta'); 1 },
       "alpha's certificate does not verify as beta");
    like($@, qr/verif|certificate|hostname/i, '... a verification error');
    ok(!eval { tls_call(sni => 'res-other.openai.azure.com', key => 'k-beta'); 1 },
       'an unknown SNI gets no valid certificate');

    # SNI of one hostname, Host of the other: what a wrong rewrite does
    ($st, $h) = tls_call(sni => $ha, host => $hb, verify => $ha, key => 'k-beta');
    is($st, 200, 'SNI alpha + Host beta: Host decides');
    is($h->{'x-ms-region'}, 'beta', '... served by beta');

    my $s = $t->sim_stats->{deployments};
    is_deeply($s->{alpha}{sni}, { $ha => 1 }, 'stats: alpha saw its SNI once');
    is_deeply($s->{beta}{sni}, { $hb => 1, $ha => 1 }, 'stats: beta saw both SNIs');
    is($s->{beta}{sni_mismatch}, 1, 'stats: beta counts the SNI/Host mismatch');
    is($s->{alpha}{sni_mismatch}, 0, 'stats: alpha had none');
    is_deeply($s->{beta}{hosts}, { $hb => 2 }, 'stats: Host recorded');
    is($t->sim_stats->{unrouted}{sni}{'res-other.openai.azure.com'} // 0, 0,
       'a failed handshake is no request');
}

###########################################################################
# nginx as the client: verifies the certificate, keeps connections alive

my $port = free_port();
$t->{module} = '';      # plain nginx: this tests the simulator, not the module
$t->start_nginx(<<"END", ports => [$port]);
    upstream alpha { server 127.0.0.1:$tls; keepalive 4; }
    upstream beta  { server 127.0.0.1:$tls; keepalive 4; }

    server {
        listen 127.0.0.1:$port;
        proxy_http_version 1.1;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate $certs/ca.pem;
        proxy_ssl_server_name on;

        location /a/ {
            proxy_pass https://alpha/;
            proxy_ssl_name $ha;
            proxy_set_header Host $ha;
            proxy_set_header api-key k-alpha;
            proxy_set_header Connection "";
        }
        location /b/ {
            proxy_pass https://beta/;
            proxy_ssl_name $hb;
            proxy_set_header Host $hb;
            proxy_set_header api-key k-beta;
            proxy_set_header Connection "";
        }
        location /wrong/ {
            # no SNI: the default certificate (alpha's) must not verify
            # as beta; a fresh connection, as a cached one would skip the
            # handshake and the verification altogether
            proxy_pass https://127.0.0.1:$tls/;
            proxy_ssl_server_name off;
            proxy_ssl_name $hb;
            proxy_set_header Host $ha;
            proxy_set_header api-key k-alpha;
        }
    }
END

{
    $t->sim_reset;
    my @st;
    for my $p (qw(a a a b b)) {
        my ($st, $h, $b) = http_post($port, "/$p$chat", $hello);
        push @st, $st;
    }
    is("@st", '200 200 200 200 200', 'through nginx: verified TLS, 200');
    my ($st) = http_post($port, "/wrong$chat", $hello);
    is($st, 502, "nginx refuses the default (alpha's) certificate as beta");
    like($t->error_log, qr/upstream SSL certificate does not match "\Q$hb\E"/,
         '... because the name does not match');

    my $s = $t->sim_stats->{deployments};
    is_deeply($s->{alpha}{sni}, { $ha => 3 }, 'through nginx: alpha SNI');
    is_deeply($s->{beta}{sni}, { $hb => 2 }, 'through nginx: beta SNI');
    is($s->{alpha}{connections}, 1, 'through nginx: keepalive reuses one connection');
    is($s->{beta}{connections}, 1, 'through nginx: and one for beta');
    is($s->{alpha}{status}{200}, 3, 'through nginx: alpha answered 3');
    is_deeply($s->{alpha}{api_keys}, { 'k-alpha' => 3 }, 'through nginx: keys');
}

$t->done;
