#!/usr/bin/perl

# A real redis-server that answers the lease script with an error: out of
# memory (maxmemory with noeviction), read-only (a replica, as a primary
# demoted by a failover is).  The script did not run: the link is taken
# down with Redis's words as the cause, as for one that does not answer,
# and requests go on at once with the instance's share, with one warning;
# the link is tried again, a second apart at most, and shares again once
# Redis takes the script; the log says so once it has run ten seconds
# without a refusal.  Before, the link stayed "connected", each
# request asked again every millisecond for redis_timeout= (some 900
# script calls and as many error lines a request, 500 ms added to each).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;
my $rport = $t->start_redis;
my $dead = free_port();

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m redis=redis://127.0.0.1:$rport redis_sync=100ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=100k quota=1000000/month;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END

ok(wait_for(5, sub { (status_redis($listen)->{state} // '') eq 'connected' }),
   'connected');

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 50 });

# each request a consumer of its own: a lease to ask for
my $app = 0;

sub post {
    my $t0 = time;
    $app++;
    my ($st) = http_post($listen, $chat, $body, 'X-App' => "app-$app");
    return ($st, 1000 * (time - $t0));
}

sub script_calls {
    my $stats = $t->redis_cli($rport, 'INFO', 'commandstats');
    my ($line) = $stats =~ /^cmdstat_evalsha:(.*)$/m;
    my $n = 0;
    $n += $1 while ($line // '') =~ /(?:^|,)(?:calls|rejected_calls)=(\d+)/g;
    return $n;
}

is((post())[0], 200, 'a first request, shared');

my @faults = (
    [ 'out of memory', qr/OOM/,
      [ 'CONFIG', 'SET', 'maxmemory-policy', 'noeviction' ],
      [ 'CONFIG', 'SET', 'maxmemory', '1' ],
      [ 'CONFIG', 'SET', 'maxmemory', '0' ] ],
    [ 'read-only', qr/READONLY/,
      [ 'REPLICAOF', '127.0.0.1', $dead ],
      [ 'REPLICAOF', 'NO', 'ONE' ] ],
);

for my $f (@faults) {
    my ($name, $said, @cmds) = @$f;
    my $undo = pop @cmds;

    # the log from before the fault: the reports may meet it first
    my $log = length $t->error_log;
    my $calls = script_calls();
    $t->redis_cli($rport, @$_) for @cmds;

    my @ms;
    for (1 .. 5) {
        my ($st, $ms) = post();
        is($st, 200, "$name: request $_ passes");
        push @ms, $ms;
    }
    my $slow = grep { $_ >= 400 } @ms;
    is($slow, 0, sprintf("$name: none waits redis_timeout= (%s ms)",
                         join ', ', map { sprintf '%.0f', $_ } @ms));

    sleep 1;
    my $spent = script_calls() - $calls;
    # each attempt sends the reports still owed, at most a second apart
    cmp_ok($spent, '<=', 200, "$name: $spent script calls in 1.5 s, not a "
                              . 'call a millisecond');

    my @warn = grep { /\[warn\].*redis/ } split /\n/,
               substr($t->error_log, $log);
    is(scalar @warn, 1, "$name: one warning") or diag join "\n", @warn;
    like($warn[0] // '', $said, "$name: with Redis's words");
    unlike(substr($t->error_log, $log), qr/\[error\].*answered a lease/,
           "$name: no error line a call");

    my $r = status_redis($listen);
    cmp_ok($r->{degraded_admissions}, '>', 0,
           "$name: admitted with the instance's share");
    like($r->{last_error} // '', $said, "$name: llm_status says why");

    # Redis well again: shared again within a second or so
    $t->redis_cli($rport, @$undo);
    ok(wait_for(5, sub {
        my $s = status_redis($listen);
        post();
        ($s->{state} // '') eq 'connected'
            && status_redis($listen)->{degraded_admissions}
               == $s->{degraded_admissions};
    }), "$name: shared again once Redis takes the script");

    # said once it has run ten seconds without a refusal: a failure
    # after that is news again (a warning), one before it is not
    ok(wait_for(15, sub {
        post();
        substr($t->error_log, $log) =~ /\[notice\].*redis .* answers again/;
    }), "$name: 'answers again' once well for a while");
}

# one consumer's keys overwritten by hand (WRONGTYPE, an error of those
# keys only): that consumer's requests go on with the instance's share,
# said once; the link stays up and the other consumers stay shared

sleep 1;
my $flat = $t->redis_cli($rport, '--scan', '--pattern', "'llm:*'");
my %before = map { $_ => 1 } grep { !/:b:/ } split /\n/, $flat;
http_post($listen, $chat, $body, 'X-App' => 'spoiled');
sleep 0.5;
my @spoiled = grep { !/:b:/ && !$before{$_} } split /\n/,
              $t->redis_cli($rport, '--scan', '--pattern', "'llm:*'");
cmp_ok(scalar @spoiled, '>=', 1, 'the consumer\'s keys in Redis');
my $log = length $t->error_log;
my $degraded = status_redis($listen)->{degraded_admissions};
for (@spoiled) {
    $t->redis_cli($rport, 'DEL', $_);
    $t->redis_cli($rport, 'SET', $_, 'byhand');
}
sleep 0.3;

my @ms;
for (1 .. 5) {
    my $t0 = time;
    my ($st) = http_post($listen, $chat, $body, 'X-App' => 'spoiled');
    is($st, 200, "a spoiled key: request $_ passes");
    push @ms, 1000 * (time - $t0);
}
is(scalar(grep { $_ >= 400 } @ms), 0,
   sprintf('a spoiled key: none waits redis_timeout= (%s ms)',
           join ', ', map { sprintf '%.0f', $_ } @ms));
for (1 .. 5) {
    is((post())[0], 200, "a spoiled key: another consumer's request $_");
}
my $r = status_redis($listen);
is($r->{state}, 'connected', 'a spoiled key: the link stays up');
is($r->{degraded_admissions} - $degraded, 5,
   'a spoiled key: its consumer\'s five without Redis, not the others\'');
my @said = grep { /refused a budget's key/ } split /\n/,
           substr($t->error_log, $log);
ok(@said >= 1 && @said <= @spoiled,
   'a spoiled key: said once a key, not once a call')
    or diag join "\n", @said;
like($said[0] // '', qr/\[error\].*WRONGTYPE/, 'a spoiled key: with Redis\'s words');

$t->done;
