#!/usr/bin/perl

# The backends' leases asked ahead, while a request waits for its
# consumer's (llm_zone redis=): those of the first priority it may go
# to, not a spill-over's it will not use; a spill-over's once Redis said
# the first are full.  (That a lease a waiting request will spend is not
# given back meanwhile, t/share_redis_lag.t tells: a request would wait
# two round trips, past redis_timeout=.)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex);
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;
my $rport = $t->start_redis;

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 800 });

# a request's charge, from an instance without Redis

my $probe = LLMTest->new;
my $pp = free_port();
$probe->start_nginx(<<"END", ports => [$pp]);
    llm_zone probe:1m;
    upstream pool {
        llm_balance zone=probe;
        llm_backend d http://127.0.0.1:$echo tpm=1m;
    }
    server {
        listen 127.0.0.1:$pp;
        add_header X-Estimate \$llm_tokens_estimate always;
        location / {
            llm_route pool;
            proxy_pass http://pool;
        }
    }
END
my (undef, $ph) = http_post($pp, $chat, $body);
my $est = $ph->{'x-estimate'} // 0;
ok($est > 700 && $est < 900, "a request is charged $est tokens");
$probe->cleanup;

# the first priority has room for one request; reports every 10 s, so
# that only requests ask for leases here

my $first_tpm = $est + int($est / 2);
my $port = free_port();

$t->start_nginx(<<"END", ports => [$port]);
    llm_zone llm:1m redis=redis://127.0.0.1:$rport redis_sync=10s;

    upstream pool {
        llm_balance zone=llm;
        llm_backend first http://127.0.0.1:$echo tpm=$first_tpm priority=1;
        llm_backend spill http://127.0.0.1:$echo tpm=1m priority=2;
    }

    server {
        listen 127.0.0.1:$port;

        add_header X-Backend \$llm_backend always;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status;
            access_log off;
        }
    }
END

ok(wait_for(5, sub { (status_redis($port)->{state} // '') eq 'connected' }),
   'the instance connects to Redis');

# whether Redis holds this instance's lease of a backend's tokens
sub leased {
    my ($name) = @_;
    my $key = 'llm:llm:b:' . sha256_hex("pool/$name") . ':t';
    my $f = $t->redis_cli($rport, 'HKEYS', $key);
    return $f =~ /^l/m ? 1 : 0;
}

my ($s, $h) = http_post($port, $chat, $body, 'X-App' => 'one');
is($s, 200, 'a first request passes');
is($h->{'x-backend'}, 'first', 'on the first priority');
is(leased('first') . leased('spill'), '10',
   'the first priority\'s lease was asked, not the spill-over\'s');

# the first is full in Redis now: the next requests go to the spill-over

($s, $h) = http_post($port, $chat, $body, 'X-App' => 'two');
is("$s " . ($h->{'x-backend'} // ''), '200 spill',
   'with the first priority full, a request goes to the spill-over');

($s, $h) = http_post($port, $chat, $body, 'X-App' => 'three');
is("$s " . ($h->{'x-backend'} // ''), '200 spill',
   'and the next one');
is(leased('spill'), 1, 'Redis holds the spill-over\'s lease');

$t->done;
