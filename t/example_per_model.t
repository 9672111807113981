#!/usr/bin/perl

# conf-examples/per-model-pools.conf, run as written (ports, addresses,
# files and CA ours) in front of the simulator over TLS: the model a
# request names, in the body (v1 API) or in the path, chooses the pool;
# each pool's deployment name replaces the client's; an unknown model is
# answered by nginx; the access log names the pool.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/per-model-pools.conf';

my %sim = $t->start_sim_for_example($file);
my $port = $t->start_example($file, %sim);
my $listen = $port->{8080};

# which simulated deployment answered (the simulator names it in
# x-ms-region), and the path it was asked for
sub served {
    my ($uri, $body) = @_;
    my ($st, $h, $raw) = http_post($listen, $uri, json_encode($body));
    return ($st, $h->{'x-ms-region'} // '', $raw);
}

my $v1 = '/openai/v1';
my $api = 'api-version=2024-10-21';
my $hello = [ { role => 'user', content => 'hello' } ];

my %pool_of = (
    'gpt-4o'                 => qr/^gpt4o-/,
    'gpt-4.1-mini'           => qr/^mini-/,
    'text-embedding-3-small' => qr/^embed-/,
);

for my $model (sort keys %pool_of) {
    my $embed = $model =~ /embedding/;
    my $body = $embed ? { model => $model, input => 'a text to embed' }
                      : { model => $model, messages => $hello,
                          max_tokens => 20 };
    my $op = $embed ? 'embeddings' : 'chat/completions';

    my ($st, $who, $raw) = served("$v1/$op", $body);
    is($st, 200, "v1 $model: 200") or diag $raw;
    like($who, $pool_of{$model}, "v1 $model: served by its pool ($who)");

    delete $body->{model};
    ($st, $who, $raw) = served("/openai/deployments/$model/$op?$api", $body);
    is($st, 200, "path $model: 200") or diag $raw;
    like($who, $pool_of{$model}, "path $model: served by its pool ($who)");
}

# the case of a model name does not matter (map matches strings so)
{
    my ($st, $who) = served("$v1/chat/completions",
        { model => 'GPT-4.1-Mini', messages => $hello, max_tokens => 5 });
    is($st, 200, 'GPT-4.1-Mini: 200');
    like($who, qr/^mini-/, 'GPT-4.1-Mini: the mini pool');
}

# a body larger than client_body_buffer_size waits in a temporary file
# while the request jumps: both parses read it there
{
    my $big = 'word ' x 80000;
    my ($st, $who, $raw) = served("$v1/chat/completions",
        { model => 'gpt-4o', max_tokens => 5,
          messages => [ { role => 'user', content => $big } ] });
    is($st, 200, '400 KB body: 200') or diag $raw;
    like($who, qr/^gpt4o-/, '400 KB body: the gpt-4o pool');
}

# the deployments received their own deployment names, never the client's
my $stats = $t->sim_stats->{deployments};
for my $name (sort keys %$stats) {
    my @paths = keys %{ $stats->{$name}{paths} };
    next unless @paths;
    my $want = $name =~ /^gpt4o/ ? 'gpt-4o'
             : $name =~ /^mini/  ? 'mini-prod' : 'embed-small';
    my @wrong = grep { m{^/openai/deployments/} && !m{/\Q$want\E/} } @paths;
    ok(!@wrong, "$name: asked only for $want") or diag "@paths";
}
my @recent = map { @{ $stats->{$_}{recent} || [] } } keys %$stats;
my @v1 = grep { $_->{path} =~ m{^/openai/v1/} } @recent;
ok(@v1, 'v1 requests reached the simulator');
ok(!grep({ ($_->{model} // '') !~ /^(gpt-4o|mini-prod|embed-small)$/ } @v1),
   'v1 bodies carry the deployment names')
    or diag join ' ', map { $_->{model} // '-' } @v1;

# an unknown model never reaches a backend
{
    my $before = 0;
    $before += $_->{requests} for values %$stats;
    my ($st, $who, $raw) = served("$v1/chat/completions",
        { model => 'gpt-3', messages => $hello });
    is($st, 404, 'unknown model: 404');
    like($raw, qr/"code":"DeploymentNotFound"/, '... in Azure\'s shape');
    is($who, '', '... from nginx');
    my $after = 0;
    $after += $_->{requests} for values %{ $t->sim_stats->{deployments} };
    is($after, $before, '... no backend asked');
}

# a malformed body is refused by the front location, as by any llm_route
{
    my ($st, $h, $raw) = http_post($listen, "$v1/chat/completions",
                                   '{"model":');
    is($st, 400, 'malformed body: 400');
    like($raw, qr/"code":"BadRequest"/, '... BadRequest');
}

# the access log says which pool and backend
my @log;
for (1 .. 50) {
    @log = grep { length } split /\n/, $t->read_file('logs/llm_access.log');
    last if @log >= 10;
    sleep 0.05;
}
my @lines = map { json_decode($_) } @log;
my ($mini) = grep { $_->{model} eq 'gpt-4.1-mini' } @lines;
is($mini->{pool}, 'gpt41mini', 'log: the pool of gpt-4.1-mini ($llm_pool)');
like($mini->{backend}, qr/^mini-/, 'log: a mini backend');
like($mini->{prompt_tokens}, qr/^\d+$/, 'log: prompt tokens counted');
my ($unknown) = grep { $_->{status} eq '404' } @lines;
is($unknown->{pool}, '', 'log: no pool for the unknown model');

$t->done;
