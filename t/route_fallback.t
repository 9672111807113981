#!/usr/bin/perl

# llm_route pool fallback=pool ...: a pool with no room for a request
# passes it to the first pool of the chain that has, with "proxy_pass
# http://$llm_pool"; the request is charged there alone, its path and v1
# body follow the fallback's deployment, X-LLM-Fallback and
# $llm_fallback say so, llm_status counts it.  No pool with room: one
# 429.  A proxy_pass that does not follow $llm_pool is an error, not a
# request sent to the wrong deployment.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(big tiny mini flaky);
my %dep = (big => 'gpt-4o', tiny => 'gpt-4o-small', mini => 'gpt-4o-mini',
           flaky => 'gpt-4o');
my @deployments = map {
    { name => $_, port => $p{$_}, host => "$_.example",
      deployment => $dep{$_}, tpm => 1000000, api_key => 'k',
      ttft_ms => [0, 0], tokens_per_s => 5000, completion_tokens => 3 }
} qw(big tiny mini flaky);
$t->start_sim({ control_port => $ctl, deployments => \@deployments });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();

sub location {
    my ($name, $route, $pass) = @_;
    return <<"END";
        location /$name/ {
            llm_route $route;
            rewrite ^/$name(/.*)\$ \$1 break;
            proxy_pass $pass;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            add_header X-Backend \$llm_backend always;
            add_header X-Pool \$llm_pool always;
        }
END
}

my $upstreams = join '', map { <<"END" } qw(big tiny mini flaky);
    upstream $_ {
        llm_balance zone=llm;
        llm_backend $_ http://$_.example:$p{$_} address=127.0.0.1:$p{$_}
                    deployment=$dep{$_} key_file=$dir/k.key
                    tpm=${\ ($_ eq 'big' ? '3k' : $_ eq 'tiny' ? '1500'
                                                             : '100k') };
    }
END

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format fb '\$status \$llm_pool "\$llm_fallback" \$llm_backend';
    access_log $dir/fb.log fb;

$upstreams
    server {
        listen 127.0.0.1:$listen;

${\ location('fb', 'big fallback=mini', 'http://$llm_pool') }
${\ location('chain', 'big fallback=tiny fallback=mini', 'http://$llm_pool') }
${\ location('tinyonly', 'big fallback=tiny', 'http://$llm_pool') }
${\ location('nofb', 'big', 'http://big') }
${\ location('wrong', 'big fallback=mini', 'http://big') }
${\ location('fail', 'flaky fallback=mini', 'http://$llm_pool') }

        location = /status {
            llm_status;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $v1 = '/openai/v1/chat/completions';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello' } ],
                         max_tokens => 1000 });
my $v1body = json_encode({ model => 'gpt-4o',
                           messages => [ { role => 'user',
                                           content => 'hello' } ],
                           max_tokens => 1000 });

sub pool {
    my ($name) = @_;
    my ($s) = llm_status($listen);
    my ($pool) = grep { $_->{name} eq $name } @{ $s->{pools} };
    return $pool;
}

sub window { pool($_[0])->{backends}[0]{window_tokens} }

# big (3k) holds two requests of about 1,010 tokens

for my $i (1, 2) {
    my ($st, $h) = http_post($listen, "/fb$chat", $body);
    is($st, 200, "request $i: 200");
    is($h->{'x-backend'}, 'big', "request $i: served by the route's pool");
    ok(!exists $h->{'x-llm-fallback'}, "request $i: no fallback header");
}
my $est = window('big') / 2;
ok($est > 1000 && $est < 1100, "a request is charged $est tokens");

# the third has no room in big: mini takes it

my ($st, $h, $b) = http_post($listen, "/fb$chat", $body);
is($st, 200, 'the pool is full: 200 all the same');
is($h->{'x-backend'}, 'mini', 'served by the fallback pool');
is($h->{'x-llm-fallback'}, 'mini', 'X-LLM-Fallback names it');
is($h->{'x-pool'}, 'mini', '$llm_pool is the pool that served it');
like($b, qr/"model":\s*"gpt-4o-mini"/, 'the reply is the fallback model\'s');
is(window('big'), 2 * $est, 'the first pool is not charged for it');
is(window('mini'), $est, 'the fallback pool is');
is(pool('mini')->{fallbacks}, 1, 'llm_status counts the fallback');
is(pool('big')->{local_throttled}, 0, 'and no 429 in the first pool');

# the v1 API: the body's model follows the fallback's deployment

($st, $h, $b) = http_post($listen, "/fb$v1", $v1body);
is($st, 200, 'v1: 200');
is($h->{'x-backend'}, 'mini', 'v1: served by the fallback');
my $s = $t->sim_stats->{deployments};
is($s->{mini}{requests}, 2, 'the fallback deployment received both');
is($s->{big}{requests}, 2, 'the first one only its own two');

# without fallback=: a 429

($st, $h) = http_post($listen, "/nofb$chat", $body);
is($st, 429, 'without fallback= the full pool answers 429');
ok($h->{'retry-after'}, 'with Retry-After');

# a chain is tried in order: tiny (1500) first, then mini

($st, $h) = http_post($listen, "/chain$chat", $body);
is($h->{'x-backend'}, 'tiny', 'the chain\'s first pool with room');
($st, $h) = http_post($listen, "/chain$chat", $body);
is($h->{'x-backend'}, 'mini', 'then the next');
is(window('tiny'), $est, 'each charged for what it served');

# every pool of the chain full: one 429, counted in the route's pool

my $before = pool('big')->{local_throttled};
($st, $h, $b) = http_post($listen, "/tinyonly$chat", $body);
is($st, 429, 'no pool of the chain has room: 429');
like($b, qr/"code":\s*"429"|RateLimit|rate limit/i, 'in Azure\'s shape');
is(pool('big')->{local_throttled}, $before + 1,
   'counted in the route\'s pool');
is(window('tiny'), $est, 'nothing charged in the full fallback');

# a proxy_pass that does not follow $llm_pool: an error, and the charge
# given back

my $mini = window('mini');
($st) = http_post($listen, "/wrong$chat", $body);
is($st, 500, 'proxy_pass to the first pool with a fallback: 500');
like($t->error_log, qr/admitted to pool "mini" reached upstream "big".*\$llm_pool/,
     'the error log says what to write');
is(window('mini'), $mini, 'and the fallback\'s charge is given back');
$t->allow_log(qr/reached upstream "big"/);

my @log = split /\n/, $t->read_file('fb.log');
ok((grep { $_ eq '200 mini "mini" mini' } @log),
   '$llm_pool and $llm_fallback in the access log');
ok((grep { $_ eq '200 big "-" big' } @log),
   '$llm_fallback empty when the route\'s pool served');

# every attempt in the pool failed: the fallback pool takes the request
# (a 500, then a 429 once proxy_next_upstream has nothing left to try);
# a client's error (a 400) never falls back

sub fail_over {
    my ($fault) = @_;
    $t->sim_update('flaky', { faults => { $fault => 1 } });
    my $flaky = window('flaky');
    my $mini0 = window('mini');
    my $served = $t->sim_stats->{deployments}{mini}{requests};
    ($st, $h, $b) = http_post($listen, "/fail$chat", $body);
    is($st, 200, "$fault in the pool: 200 from the fallback");
    is($h->{'x-backend'}, 'mini', "$fault: served by the fallback pool");
    is($h->{'x-llm-fallback'}, 'mini', "$fault: X-LLM-Fallback says so");
    like($b, qr/"model":\s*"gpt-4o-mini"/, "$fault: the fallback's answer");
    is(window('mini') - $mini0, $est, "$fault: the fallback is charged");
    # Azure counts a request that fails with a 500, not a 429
    is(window('flaky') - $flaky, $fault eq '500' ? $est : 0,
       "$fault: the failed pool keeps what its backend counted");
    is($t->sim_stats->{deployments}{mini}{requests} - $served, 1,
       "$fault: one request to the fallback");
    $t->sim_update('flaky', { faults => { $fault => 0 } });
}

fail_over('500');

my $old = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01';
($st, $h) = http_post($listen, "/fail$old",
                      json_encode({ messages => [ { role => 'user',
                                                    content => 'hello' } ],
                                    max_tokens => 10, stream => JSON::PP::true,
                                    stream_options => {
                                        include_usage => JSON::PP::true } }));
is($st, 400, 'a 400 from the backend is the client\'s');
ok(!exists $h->{'x-llm-fallback'}, 'no fallback for it');
is($h->{'x-backend'}, 'flaky', 'the route\'s own pool answered it');

# last, as the 429 leaves the backend cooling down

fail_over('overload429');

like($t->error_log, qr/every attempt in "flaky" failed, fallback "mini"/,
     'the error log says why');

###########################################################################
# configuration errors

my $c = LLMTest->new;
my @bad = (
    [ 'big fallback=big', qr/names its own pool as a fallback/ ],
    [ 'big fallback=mini fallback=mini', qr/names a fallback twice/ ],
    [ 'fallback=mini', qr/needs a pool before "fallback="/ ],
    [ 'big fallback=nowhere', qr/names upstream "nowhere" that has no/ ],
    [ 'big mini', qr/invalid parameter "mini"/ ],
);
for my $case (@bad) {
    my ($args, $re) = @$case;
    my ($rc, $out) = $c->test_conf(<<"END");
    llm_zone llm:1m;
$upstreams
    upstream nowhere {
        server 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:1;
        location / {
            llm_route $args;
            proxy_pass http://\$llm_pool;
        }
    }
END
    isnt($rc, 0, "refused: llm_route $args");
    like($out, $re, 'with the reason');
}
$c->cleanup;

$t->done;
