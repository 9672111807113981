#!/usr/bin/perl

# A charge stays in the token window for the whole window=, whatever its
# length: the window has 240 slots, and a slot length rounded down
# (window=4790ms: 19 ms slots, 4560 ms in all) once let charges leave
# 230 ms early, so requests were admitted that Azure would refuse.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $echo = $t->start_echo;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream pool {
        llm_balance zone=llm window=4790ms;
        llm_backend d http://127.0.0.1:$echo tpm=1000 rpm=100000;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            proxy_pass http://pool;
        }
    }
END

my $chat = '/openai/deployments/d/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 900 });

# one request fills the window; another is refused until it has passed
my $t0 = time;
my ($st) = http_post($listen, $chat, $body);
is($st, 200, 'the first request fills the window');
# the charge was made between $t0 and now
my $t1 = time;
($st) = http_post($listen, $chat, $body);
is($st, 429, 'the next one is refused');

# 4.68 s after: inside the 4.79 s window, past a 4.56 s one
sleep($t0 + 4.68 - time);
($st) = http_post($listen, $chat, $body);
is($st, 429, 'still refused 4.68 s after the charge');

# 5 s after the charge at least, however long the first request took
# on a loaded machine
sleep($t1 + 5.0 - time);
($st) = http_post($listen, $chat, $body);
is($st, 200, 'admitted once the window has passed');

$t->done;
