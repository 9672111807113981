#!/usr/bin/perl

# Pools: priority spill-over (PTU first, Standard for the overflow), a
# plain "server" line inside an llm_balance upstream, and state that two
# workers share and that survives "nginx -s reload" without losing a
# request.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $echo = $t->start_echo;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(ptu std shared roomy);
my @deployments = (
    { name => 'ptu', port => $p{ptu}, tpm => 3000, api_key => 'k' },
    { name => 'std', port => $p{std}, tpm => 100000, api_key => 'k' },
    { name => 'shared', port => $p{shared}, tpm => 5000, api_key => 'k' },
    { name => 'roomy', port => $p{roomy}, tpm => 1000000, api_key => 'k' },
);
for (@deployments) {
    %$_ = (%$_, host => "$_->{name}.example", deployment => 'd',
           ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 3);
}
$t->start_sim({ control_port => $ctl, deployments => \@deployments });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();

# one location per pool: llm_route names its pool, not a variable
my $locations = join '', map { <<"END" } qw(spill mixed shared roomy);
        location /$_/ {
            llm_route $_;
            rewrite ^/$_(/.*)\$ \$1 break;
            proxy_pass http://$_;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            add_header X-Backend \$llm_backend always;
        }
END

my $http = <<"END";
    llm_zone llm:1m;
    log_format pid '\$pid \$status \$llm_backend';
    access_log $dir/pid.log pid;

    upstream spill {
        llm_balance zone=llm;
        llm_backend ptu http://ptu.example tpm=3k priority=1 ptu
                    key_file=$dir/k.key address=127.0.0.1:$p{ptu};
        llm_backend std http://std.example tpm=100k priority=2
                    key_file=$dir/k.key address=127.0.0.1:$p{std};
    }

    upstream mixed {
        llm_balance zone=llm;
        server 127.0.0.1:$echo;
    }

    upstream shared {
        llm_balance zone=llm;
        llm_backend shared http://shared.example tpm=5k rpm=1000
                    key_file=$dir/k.key address=127.0.0.1:$p{shared};
    }

    upstream roomy {
        llm_balance zone=llm;
        llm_backend roomy http://roomy.example tpm=1m
                    key_file=$dir/k.key address=127.0.0.1:$p{roomy};
        keepalive 4;
    }

    server {
        listen 127.0.0.1:$listen reuseport;
$locations
    }
END

$t->start_nginx($http, ports => [$listen], workers => 2);

my $chat = '/openai/deployments/d/chat/completions?api-version=2024-10-21';

sub ask {
    my ($pool, $max) = @_;
    my $b = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                          max_tokens => $max });
    my ($st, $h, $raw) = http_post($listen, "/$pool$chat", $b);
    return ($st, $h->{'x-backend'} // '', $raw);
}

###########################################################################
# PTU first: 3 requests of 993 tokens fill 3,000; then Standard

my @seen = map { [ask('spill', 985)] } 1 .. 5;
is_deeply([map { "$_->[0] $_->[1]" } @seen],
          ['200 ptu', '200 ptu', '200 ptu', '200 std', '200 std'],
          'priority 1 takes what it can, priority 2 the overflow');
my $s = $t->sim_stats->{deployments};
is($s->{ptu}{requests}, 3, 'ptu backend saw 3');
is($s->{std}{requests}, 2, 'std backend saw 2');

###########################################################################
# a plain server line: no limits, no rewrite

my ($st, $b, $raw) = ask('mixed', 10);
is($st, 200, 'plain server in an llm_balance upstream');
is($b, "127.0.0.1:$echo", '$llm_backend is the server name');
my $j = json_decode($raw);
is($j->{uri}, $chat, 'path not rewritten');
is($j->{headers}{host}, "127.0.0.1:$echo", 'Host is the server name');

###########################################################################
# two workers agree, and a reload keeps the window: 5,000 TPM admits
# exactly five requests of 993 tokens, whatever worker takes them

my @before = map { (ask('shared', 985))[0] } 1 .. 2;
is_deeply(\@before, [200, 200], 'two admitted before the reload');

$t->reload_nginx;
sleep 1.5;

my @after = map { (ask('shared', 985))[0] } 1 .. 4;
is_deeply(\@after, [200, 200, 200, 429],
          'after the reload: three more, then the window is full');
is($t->sim_stats->{deployments}{shared}{requests}, 5,
   'the backend saw exactly five');

###########################################################################
# load through a reload: nothing lost

my $pid = fork // die;
if ($pid == 0) {
    alarm 0;
    my $out = `python3 ${\ $t->top}/tools/aoai-load --url http://127.0.0.1:$listen/roomy$chat --rpm 1200 --duration 4 --prompt-tokens 50 --max-tokens 10 --arrivals uniform --json --timeout 20`;
    open my $o, '>', "$dir/load.json" or die;
    print $o $out;
    close $o;
    POSIX::_exit(0);
}
sleep 1.5;
$t->reload_nginx;
sleep 0.5;
$t->reload_nginx;
waitpid $pid, 0;

my $load = json_decode($t->read_file('load.json'));
is($load->{requests}, 80, 'load: 80 requests sent');
is_deeply($load->{status}, { 200 => 80 }, 'load: all 80 answered 200');
is($t->sim_stats->{deployments}{roomy}{requests}, 80,
   'load: the backend saw all 80');

$t->stop_nginx;
my %pids;
for (split /\n/, $t->read_file('pid.log')) {
    $pids{(split / /)[0]}++;
}
cmp_ok(scalar keys %pids, '>=', 3, 'several workers served (and reloads)');

$t->done;
