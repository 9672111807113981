#!/usr/bin/perl

# conf-examples/tls-verify.conf, run as written (ports, addresses, files
# ours) in front of the simulator over TLS: every backend receives its
# own SNI, Host and credential (a key, or an Entra ID token as a bearer),
# the private endpoint's address= included; with a CA that did not sign
# the backends' certificates, nothing is sent and the client gets 502.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/tls-verify.conf';

my %sim = $t->start_sim_for_example($file);
my $port = $t->start_example($file, %sim);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 10 });

my %seen;
for (1 .. 6) {
    my ($st, $h) = http_post($port->{8080}, $chat, $body,
                             'api-key' => 'the-client-s-own-key',
                             Authorization => 'Bearer client-token');
    is($st, 200, "request $_: 200");
    $seen{ $h->{'x-ms-region'} // '' }++;
}
is_deeply([ sort keys %seen ], [ qw(eastus swedencentral westeurope) ],
          'all three backends served');

my $stats = $t->sim_stats->{deployments};
for my $name (sort keys %$stats) {
    my $s = $stats->{$name};
    my $host = "res-$name.openai.azure.com";
    is_deeply($s->{sni}, { $host => $s->{requests} }, "$name: SNI $host");
    is_deeply($s->{hosts}, { $host => $s->{requests} }, "$name: Host $host");
    is($s->{sni_mismatch}, 0, "$name: SNI and Host agree");
    if ($name eq 'swedencentral') {
        is_deeply($s->{bearers}, { 'example-key' => $s->{requests} },
                  "$name: its token as a bearer");
        is_deeply($s->{api_keys}, {}, "$name: no api-key");
    } else {
        is_deeply($s->{api_keys}, { 'example-key' => $s->{requests} },
                  "$name: its key");
        is_deeply($s->{bearers}, {}, "$name: no bearer");
    }
}

# the same configuration trusting another CA: verification fails, and no
# request reaches a backend
$t->stop_nginx;
$t->sim_reset;
$port = $t->start_example($file, %sim, ca => $t->throwaway_ca);
my ($st) = http_post($port->{8080}, $chat, $body);
is($st, 502, 'untrusted certificates: 502');
my $reached = 0;
$reached += $_->{status}{200} // 0 for values %{ $t->sim_stats->{deployments} };
is($reached, 0, '... no request answered by a backend');
like($t->error_log, qr/upstream SSL certificate verify error/,
     '... the error log says why');

$t->done;
