#!/usr/bin/perl

# conf-examples/status-locked.conf, run as written (ports, addresses,
# files and CA ours) in front of the simulator over TLS: the status
# answers on its loopback listener with the pool and its backends; the
# API's port has no status; /metrics gives the Prometheus text only with
# the password; both refuse an address they do not allow (127.0.0.2
# stands for another host); no key appears anywhere.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::INET;
use MIME::Base64 qw(encode_base64);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/status-locked.conf';

my %sim = $t->start_sim_for_example($file);
my $port = $t->start_example($file, %sim);
my ($api, $local, $metrics) = @$port{qw(8080 8090 8091)};

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my ($st, $h) = http_post($api, $chat, json_encode({
    messages => [ { role => 'user', content => 'hello' } ],
    max_tokens => 20 }));
is($st, 200, 'a request through the API');
is($h->{'x-ms-region'}, 'ptu-eastus', '... to the PTU first');

# a GET from a chosen source address
sub get_from {
    my ($from, $port, $uri, %hdr) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  LocalAddr => $from, Proto => 'tcp',
                                  Timeout => 5)
        or die "connect from $from: $!";
    my $h = join '', map { "$_: $hdr{$_}\r\n" } sort keys %hdr;
    print $s "GET $uri HTTP/1.1\r\nHost: localhost\r\n${h}"
             . "Connection: close\r\n\r\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return LLMTest::parse_response($buf);
}

# JSON for this host
my ($jst, $jh, $json) = get_from('127.0.0.1', $local, '/llm/status');
is($jst, 200, 'status from 127.0.0.1: 200');
is($jh->{'content-type'}, 'application/json', '... JSON');
my $s = json_decode($json);
my ($pool) = grep { $_->{name} eq 'gpt4o' } @{ $s->{pools} };
ok($pool, '... the pool gpt4o');
is_deeply([ sort map { $_->{name} } @{ $pool->{backends} || [] } ],
          [ 'ptu-eastus', 'swedencentral' ], '... with its two backends');
my ($ptu) = grep { $_->{name} eq 'ptu-eastus' } @{ $pool->{backends} };
is($ptu->{requests}, 1, '... the PTU took the request');
unlike($json, qr/example-key/, '... no key');

($st) = get_from('127.0.0.2', $local, '/llm/status');
is($st, 403, 'status from another address: 403');

($st) = http_get($api, '/llm/status');
is($st, 404, 'no status on the API\'s port');
($st) = http_get($api, '/metrics');
is($st, 404, 'no metrics on the API\'s port');

# Prometheus with a password
my $auth = 'Basic ' . encode_base64('example:example-password', '');
my $wrong = 'Basic ' . encode_base64('example:guess', '');

($st, $h) = get_from('127.0.0.1', $metrics, '/metrics');
is($st, 401, 'metrics without a password: 401');
like($h->{'www-authenticate'} // '', qr/^Basic realm="llm metrics"/,
     '... asking for one');
($st) = get_from('127.0.0.1', $metrics, '/metrics', Authorization => $wrong);
is($st, 401, 'metrics with a wrong password: 401');

my ($mst, $mh, $prom) = get_from('127.0.0.1', $metrics, '/metrics',
                                 Authorization => $auth);
is($mst, 200, 'metrics with the password: 200');
like($mh->{'content-type'}, qr{^text/plain}, '... the Prometheus text format');
like($prom, qr/^# TYPE \S+ counter$/m, '... with TYPE lines');
like($prom, qr/\{[^}]*backend="ptu-eastus"/, '... and the backends');
unlike($prom, qr/example-key/, '... no key');

(undef, $mh) = get_from('127.0.0.1', $metrics, '/metrics',
                        Authorization => $auth, Accept => 'application/json');
like($mh->{'content-type'}, qr{^text/plain},
     'metrics: the text format whatever Accept says');

($st) = get_from('127.0.0.2', $metrics, '/metrics', Authorization => $auth);
is($st, 403, 'metrics from an address not allowed: 403, password or not');

$t->done;
