#!/usr/bin/perl

# Remote truth wins: another client (another nginx) uses a deployment's
# quota behind our back; its x-ratelimit-remaining-tokens tells us, and
# the next request that would not fit goes to another backend instead of
# drawing a 429.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(a b);
$t->start_sim({ control_port => $ctl, deployments => [ map {
    { name => $_, port => $p{$_}, host => "$_.example", api_key => 'k',
      deployment => 'gpt-4o', tpm => 10000, rpm => 600, ttft_ms => [0, 0],
      tokens_per_s => 5000, completion_tokens => 2 } } qw(a b) ] });
open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream pool {
        llm_balance zone=llm;
        llm_backend a http://a.example tpm=10k rpm=600 weight=5
                    key_file=$dir/k.key address=127.0.0.1:$p{a};
        llm_backend b http://b.example tpm=10k rpm=600
                    key_file=$dir/k.key address=127.0.0.1:$p{b};
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/ {
            llm_route pool;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_next_upstream error timeout http_429 non_idempotent;
            add_header X-Backend \$llm_backend always;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
sub body { json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => $_[0] }) }

# another client takes 8,000 of a's 10,000 directly
my ($st, $h) = LLMTest::post_host($p{a}, 'a.example', $chat, body(7990),
                                  'api-key' => 'k');
is($st, 200, 'the other client used 8,000 of a');

# our first request goes to a (weight 5) and learns its remaining tokens
($st, $h) = http_post($listen, $chat, body(10));
is($h->{'x-backend'}, 'a', 'first request: a');
cmp_ok($h->{'x-ratelimit-remaining-tokens'}, '<', 2100, 'a says ~2,000 left');

# 3,000 tokens: our own window says a has room, a's answer says not
($st, $h) = http_post($listen, $chat, body(3000));
is($st, 200, 'admitted');
is($h->{'x-backend'}, 'b', 'sent to b: remote truth wins');
my $s = $t->sim_stats->{deployments};
is($s->{a}{status}{429} // 0, 0, 'a never said 429');

# the remote value ages: after 2 s our own view is used again
sleep 2.2;
($st, $h) = http_post($listen, $chat, body(10));
is($h->{'x-backend'}, 'a', 'a stale remote value no longer steers');

$t->done;
