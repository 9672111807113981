#!/usr/bin/perl

# A consumer's budget shared through Redis, with llm_wait: a request that
# waited for its consumer's lease, then waits in the queue for a backend
# with no room, is judged by Redis again when its turn comes, not by this
# instance's share of the limit.  It was judged locally once its waits
# added up to redis_timeout=, though Redis answered every command, and
# the two instances together admitted more than the limit.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX ();
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;
my $rport = $ga->start_redis;

# slow: a backend of 6 requests a minute (one each 10 s); fast: no limit
sub conf {
    my ($listen) = @_;
    return <<"END";
    llm_zone llm:1m redis=redis://127.0.0.1:$rport redis_sync=50ms;

    upstream slow {
        llm_balance zone=llm;
        llm_backend s http://127.0.0.1:$echo rpm=6;
    }

    upstream fast {
        llm_balance zone=llm;
        llm_backend f http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        location /slow/ {
            llm_route slow;
            llm_wait 30s;
            llm_limit \$http_x_app rpm=10;
            proxy_pass http://slow;
        }

        location /fast/ {
            llm_route fast;
            llm_limit \$http_x_app rpm=10;
            proxy_pass http://fast;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END
}

my ($pa, $pb) = (free_port(), free_port());
$ga->start_nginx(conf($pa), ports => [$pa]);
$gb->start_nginx(conf($pb), ports => [$pb]);

ok(wait_for(10, sub { (status_redis($pa)->{state} // '') eq 'connected'
                      && (status_redis($pb)->{state} // '') eq 'connected' }),
   'both instances connected');

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 50 });

sub post {
    my ($port, $uri, %opt) = @_;
    return (http_post($port, "$uri$chat", $body, 'X-App' => 'app',
                      %opt))[0];
}

is(post($pa, '/slow'), 200, 'A: the slow backend\'s one request');

# two more queue on A behind the backend, read by children
my @kids = map {
    my $i = $_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        my $st = post($pa, '/slow');
        open my $f, '>', $ga->dir . "/queued.$i" or die;
        print $f $st;
        close $f;
        POSIX::_exit(0);
    }
    $pid;
} 1, 2;

sleep 1.5;

# B spends the rest of the consumer's 10 while they wait (what A holds
# for the queued ones aside)
my $b = grep { $_ == 200 } map { post($pb, '/fast') } 1 .. 12;
cmp_ok($b, '>=', 7, "B: $b more, the limit reached");

waitpid $_, 0 for @kids;
my @queued = map { $ga->read_file("queued.$_") } 1, 2;
my $a = grep { $_ == 200 } @queued;
is(1 + $a + $b, 10,
   "the queued ones, their turn come, are judged by Redis: 1 + $a on A "
   . "and $b on B");
is(status_redis($pa)->{degraded_admissions}, 0,
   'A: no admission went without Redis');

$gb->cleanup;
$ga->done;
