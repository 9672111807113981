#!/usr/bin/perl

# llm_identity across a reload that changes an identity's line: a worker
# of the old configuration, kept alive by a request in progress, ends a
# fetch it started before the reload; its token, for the old line, must
# not become the new line's.  And llm_status stays whole and valid JSON
# with many identities of long names and endpoints that need escaping.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my ($idp) = $t->start_identity_sim('--lifetime', 6);
my $back = free_port();

$t->start_sim({ control_port => free_port(), deployments => [
    { name => 'vm', port => $back, deployment => 'dep-vm', tpm => 100000,
      ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 5 } ] });

my $listen = free_port();

sub conf {
    my ($query, $extra) = @_;
    return <<"END";
    llm_zone llm:1m;

    llm_identity vm imds timeout=10s
        endpoint=http://127.0.0.1:$idp/metadata/identity/oauth2/token$query;
$extra
    upstream vm {
        llm_balance zone=llm;
        llm_backend vm http://127.0.0.1:$back deployment=dep-vm tpm=100k
                    identity=vm;
    }

    server {
        listen 127.0.0.1:$listen;
        location / { llm_route vm; proxy_pass http://vm; }
        location = /status { llm_status; }
    }
END
}

$t->start_nginx(conf('', ''), ports => [$listen]);

my $body = '{"messages":[{"role":"user","content":"hi"}],"max_tokens":5}';
my $uri = '/openai/deployments/x/chat/completions?api-version=2024-06-01';

sub vm_state {
    my ($s) = llm_status($listen);
    my ($vm) = grep { $_->{name} eq 'vm' } @{ $s->{identities} || [] };
    return $vm || {};
}

ok(wait_for(10, sub { (vm_state()->{state} // '') eq 'ready' }),
   'a token at start');

# a request that keeps the first worker alive through the reload

$t->sim_update('vm', { ttft_ms => [9000, 9000] });
my $slow = fork // die;
if ($slow == 0) {
    http_post($listen, $uri, $body);
    POSIX::_exit(0);
}
ok(wait_for(5, sub { $t->sim_stats->{deployments}{vm}{requests} >= 1 }),
   'a slow request is in progress');
$t->sim_update('vm', { ttft_ms => [0, 0] });

# the old worker's refresh, answered 4 s late, is under way at the reload

$t->identity_set({ delay_ms => 4000 });
my $asked = $t->identity_stats->{requests};
ok(wait_for(8, sub { $t->identity_stats->{requests} > $asked }),
   'the old worker asks for a new token');
$t->identity_set({ delay_ms => 0 });

$t->reload_nginx(conf('?v=2', ''));

ok(wait_for(5, sub { my $ids = $t->identity_stats;
                     grep { /v=2/ } values %{ $ids->{asked} } }),
   'the new configuration fetched its own token');

# the old fetch ends after the new one: its token stays the old line's

sleep 4.5;

my ($st) = http_post($listen, $uri, $body);
is($st, 200, 'served after the reload');

my $ids = $t->identity_stats;
my $seen = $t->sim_stats->{deployments}{vm}{bearers};
my ($last) = grep { $seen->{$_} } reverse @{ $ids->{tokens}{imds} };
like($ids->{asked}{$last} // '', qr/v=2/,
     'the backend got the new line\'s token, not the old worker\'s')
    or diag explain { seen => $seen, asked => $ids->{asked} };

waitpid $slow, 0;

# many identities, long names, an endpoint with a quote and a backslash

my $many = join '', map {
    "    llm_identity " . ('n' x 200) . "$_ imds "
    . "'endpoint=http://127.0.0.1:1/" . ('p' x 3000) . "\"q\\\\r';\n"
} 1 .. 12;

$t->reload_nginx(conf('?v=2', $many));

my $s;
ok(wait_for(10, sub { ($s) = llm_status($listen);
                      $s && @{ $s->{identities} } == 13 }),
   'llm_status: valid JSON with every identity');
my ($n1) = grep { $_->{name} eq ('n' x 200) . '1' } @{ $s->{identities} };
like($n1->{endpoint} // '', qr/"q\\r$/, '... the endpoint escaped');
is($n1->{state}, 'unused', '... an identity no backend names is unused');

# a worker of the configuration before may still take a connection just
# after the reload: look until the new one answers
my ($pst, $prom);
ok(wait_for(10, sub { (undef, undef, $prom) =
                          http_get($listen, '/status?format=prometheus');
                      13 == (() = $prom =~ /^llm_identity_fetches_total\{/mg)
                    }),
   'prometheus: each of the identities')
    or diag $prom;

$t->done;
