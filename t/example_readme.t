#!/usr/bin/perl

# The README's example configuration, run as written (ports, addresses,
# files and CA ours) in front of the simulator over TLS: with no
# proxy_set_header for Host or keys and no proxy_ssl_name, every
# backend sees its own Host, SNI and key, never the client's, along a
# 429 retry chain.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;

open my $fh, '<', $t->top . '/README.md' or die "README.md: $!";
my $readme = do { local $/; <$fh> };
close $fh;
my ($example) = $readme =~ /^## Example configuration\n.*?^```nginx\n(.*?)^```/ms
    or die "no example configuration in README.md\n";

my $file = $t->dir . '/readme.conf';
open $fh, '>', $file or die "$file: $!";
print $fh $example;
close $fh;

my %sim = $t->start_sim_for_example($file,
                                    all => { overload_retry_s => 0.5 });
my $port = $t->start_example($file, %sim);
my $listen = $port->{8080} or die "the example listens on no 8080\n";

my $dir = $t->dir;
my $out = `$ENV{LLM_NGINX} -p $dir -c $dir/nginx.conf -t 2>&1`;
is($?, 0, 'nginx -t') or diag $out;

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 10 });
my %client = ('api-key' => 'client-secret',
              'Authorization' => 'Bearer client-token',
              'X-App' => 'app-1');

my ($st, $h, $raw) = http_post($listen, $chat, $body, %client);
is($st, 200, 'first request: 200') or diag $raw;
is($h->{'x-ms-region'}, 'ptu-eastus', 'the PTU first');

$t->sim_update('ptu-eastus', { faults => { overload429 => 1 } });
($st, $h, $raw) = http_post($listen, $chat, $body, %client);
is($st, 200, 'the PTU says 429: served by another') or diag $raw;
isnt($h->{'x-ms-region'}, 'ptu-eastus', 'by a Standard one');

my $stats = $t->sim_stats->{deployments};
for my $name (sort keys %$stats) {
    my $d = $stats->{$name};
    next unless $d->{requests};
    my ($host) = keys %{ $d->{hosts} };
    like($host, qr/^[\w-]+\.openai\.azure\.com$/, "$name: a backend Host");
    is(scalar keys %{ $d->{hosts} }, 1, "$name: one Host");
    is_deeply($d->{sni}, { $host => $d->{requests} }, "$name: its SNI");
    is_deeply($d->{api_keys}, { 'example-key' => $d->{requests} },
              "$name: its own key, never the client's");
    is_deeply($d->{bearers} // {}, {}, "$name: no Authorization");
}

$t->done;
