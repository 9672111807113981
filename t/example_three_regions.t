#!/usr/bin/perl

# conf-examples/three-regions.conf, run as written (ports, addresses,
# files and CA ours) in front of the simulator over TLS: the PTU serves
# first, each region gets its own deployment name and key; a key written
# to its file is used within about a second, without a reload.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/three-regions.conf';

# a 429 of the overload fault asks for a rest of half a second
my %sim = $t->start_sim_for_example($file,
                                    all => { overload_retry_s => 0.5 });
my $port = $t->start_example($file, %sim);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 10 });

my ($st, $h, $raw) = http_post($port->{8080}, $chat, $body);
is($st, 200, 'first request: 200') or diag $raw;
is($h->{'x-ms-region'}, 'ptu-eastus', '... served by the PTU');

# the PTU says 429: japaneast, of the two Standard ones the one with the
# most room times its weight (2), with its deployment name and key
$t->sim_update('ptu-eastus', { faults => { overload429 => 1 } });
for (1 .. 2) {
    ($st, $h) = http_post($port->{8080}, $chat, $body);
    is($st, 200, "spill-over $_: 200");
    is($h->{'x-ms-region'}, 'japaneast', "spill-over $_: japaneast");
}
# and japaneast says 429 too: swedencentral
$t->sim_update('japaneast', { faults => { overload429 => 1 } });
($st, $h) = http_post($port->{8080}, $chat, $body);
is($st, 200, 'two 429s: 200');
is($h->{'x-ms-region'}, 'swedencentral', 'two 429s: swedencentral');

my $stats = $t->sim_stats->{deployments};
is_deeply($stats->{japaneast}{paths},
          { '/openai/deployments/gpt4o-jp/chat/completions'
            => $stats->{japaneast}{requests} },
          'japaneast: its own deployment name');
for my $name (qw(ptu-eastus japaneast swedencentral)) {
    is_deeply($stats->{$name}{api_keys},
              { 'example-key' => $stats->{$name}{requests} },
              "$name: the key from its file");
}
$t->sim_update('japaneast', { faults => { overload429 => 0 } });

# rotate japaneast's key: the new one in its file, then in Azure
my $keyfile = $t->dir . '/etc/japaneast.key';
ok(-f $keyfile, 'the key file');
# the module sees a change by the file's mtime, in whole seconds: a file
# rewritten within the second of the version it read looks unchanged
sleep 0.05 while time < (stat $keyfile)[9] + 1;
open my $fh, '>', "$keyfile.new" or die;
print $fh "rotated-key\n";
close $fh;
rename "$keyfile.new", $keyfile or die;
sleep 1.2;
$t->sim_update('japaneast', { api_key => 'rotated-key' });
$t->sim_update('ptu-eastus', { faults => { overload429 => 1 } });
$t->sim_reset;

my $ok = 0;
for (1 .. 4) {
    ($st, $h) = http_post($port->{8080}, $chat, $body);
    $ok++ if $st == 200 && ($h->{'x-ms-region'} // '') eq 'japaneast';
}
$stats = $t->sim_stats->{deployments}{japaneast};
ok($stats->{requests} > 0, 'japaneast asked again');
is_deeply($stats->{api_keys}, { 'rotated-key' => $stats->{requests} },
          '... with the rotated key only, no reload');
is($ok, $stats->{requests}, '... and it answered 200 each time');

$t->done;
