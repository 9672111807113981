#!/usr/bin/perl

# Budgets too small to lease ahead (rpm=3), shared through Redis by two
# instances of 2 workers each: each request is reserved in Redis as it
# comes.  The reports (redis_sync=10ms, so that they often fall between
# a reservation and its charge) must neither give a reservation back
# while its request spends it, nor make the instance hold more than it
# spends: over many fresh consumers, in two orders of requests, exactly
# three are admitted, none is refused with room, and Redis counts three.
# And a token budget as small, charged more by a reply's usage than the
# estimate: the next request asks for its own estimate only, since the
# report it goes with settles what was over.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use Digest::SHA qw(sha256_hex);
use LLMTest;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;
my $rport = $ga->start_redis;

sub conf {
    my ($listen) = @_;
    return <<"END";
    llm_zone llm:1m redis=redis://127.0.0.1:$rport redis_sync=10ms;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        add_header X-Estimate \$llm_tokens_estimate always;

        location / {
            llm_route pool;
            llm_limit \$http_x_app rpm=3;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=5;
            access_log off;
        }
    }
END
}

my $pa = free_port();
my $pb = free_port();

$ga->start_nginx(conf($pa), ports => [$pa], workers => 2);
$gb->start_nginx(conf($pb), ports => [$pb], workers => 2);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 10 });

ok(wait_for(5, sub { (status_redis($pa)->{state} // '') eq 'connected'
                     && (status_redis($pb)->{state} // '') eq 'connected' }),
   'both instances connect to Redis');

my $replies = status_redis($pa)->{replies} // 0;

# aabb: the first instance's two must leave one for the second;
# abbb: the first instance's one must be in Redis before the second
# spends the rest

my $trials = 40;
my (@wrong, $skipped, @apps);

for my $i (1 .. $trials) {
    for my $seq ('aabb', 'abbb') {
        my $app = "small-$i-$seq";
        my $before = redis_trouble($pa, $pb);
        my @got;
        for my $x (split //, $seq) {
            my ($s) = http_post($x eq 'a' ? $pa : $pb, $chat, $body,
                                'X-App' => $app);
            push @got, $s;
        }
        if (redis_trouble($pa, $pb) != $before) {
            $skipped++;
            next;
        }
        push @apps, $app;
        push @wrong, "$seq: @got" if "@got" ne '200 200 200 429';
    }
}

diag("skipped $skipped sequences: Redis answered late") if $skipped;
ok(@apps >= $trials, scalar(@apps) . ' sequences without trouble');
is(scalar @wrong, 0, 'three admitted of rpm=3 in every sequence, none '
                     . 'refused with room')
    or diag join "\n", @wrong;
ok((status_redis($pa)->{replies} // 0) > $replies,
   'llm_status counts the replies');

# what Redis holds once every report is in: each consumer's window
# counts its three requests once (a script sums each key's slots)

# (a key's last bytes tell the consumer's window length apart)

my %key = map { /^llm:llm:([0-9a-f]{48})/ ? ($1 => $_) : () }
          split /\n/, $ga->redis_cli($rport, '--scan', '--pattern',
                                      "'llm:llm:*:r'");
my @keys = map { $key{substr sha256_hex("\$http_x_app\0$_"), 0, 48} // 'none' }
           @apps;
my $sum = q{"local r = {} for i, k in ipairs(KEYS) do local n = 0 }
        . q{local a = redis.call('HGETALL', k) for j = 1, #a, 2 do }
        . q{if string.sub(a[j], 1, 1) == 's' then n = n + a[j + 1] end }
        . q{end r[i] = n end return r"};
my @counts;
ok(wait_for(3, sub {
       @counts = split /\n/, $ga->redis_cli($rport, 'EVAL', $sum,
                                             scalar @keys, @keys);
       return @counts == @keys && !grep { $_ != 3 } @counts;
   }), 'Redis counts three requests for each consumer')
    or diag join ' ', map { "$apps[$_]=$counts[$_]" }
                      grep { ($counts[$_] // 0) != 3 } 0 .. $#apps;

###########################################################################
# usage beyond the estimate on a budget too small to lease ahead: the
# instance's credit goes below zero; its next request must ask for its
# own estimate, not for that debt too, which Redis settles with the
# report and never below an empty lease (asking for both held the debt
# as a lease, and the other instance was refused with room).  Reports
# every 10 s: the debt is still there when the next request asks.

my ($st, $h) = http_post($pa, $chat, $body, 'X-App' => 'probe');
my $est = $h->{'x-estimate'} // 0;
ok($est > 10 && $est < 40, "a request is charged $est tokens");

# the usage of /big: three estimates; the limit: room for five, so that
# after /big and one more only one is left
my $usage = 3 * $est;
my $limit = 5 * $est + int($est / 2);

# two sizes of request for a budget of mixed sizes, below
my $small_body = json_encode({ messages => [ { role => 'user',
                                               content => 'hello there' } ],
                               max_tokens => 150 });
my $big_body = json_encode({ messages => [ { role => 'user',
                                             content => 'hello there' } ],
                             max_tokens => 800 });
my (undef, $sh) = http_post($pa, $chat, $small_body, 'X-App' => 'probe');
my (undef, $bh) = http_post($pa, $chat, $big_body, 'X-App' => 'probe');
my ($small, $big) = ($sh->{'x-estimate'} // 0, $bh->{'x-estimate'} // 0);

# room for the big one, not for both; an eighth below the small one
my $mixed = $big + int($small / 2);
ok($small > 100 && $big > 7 * $small / 4 && $mixed < 8 * $small,
   "requests of $small and $big tokens, tpm=$mixed");

my $json = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
         . "Connection: close\r\n\r\n";
my $canned = $ga->start_canned({
    '/big' => $json . '{"choices":[],"usage":{"prompt_tokens":'
              . ($usage - 2) . ',"completion_tokens":2,"total_tokens":'
              . $usage . '}}',
    '/exact' => $json . '{"choices":[]}',
    '/mixed' => $json . '{"choices":[]}',
});

my $gc = LLMTest->new;
my $gd = LLMTest->new;
my $pc = free_port();
my $pd = free_port();

for my $g ([$gc, $pc], [$gd, $pd]) {
    $g->[0]->start_nginx(<<"END", ports => [$g->[1]], workers => 2);
    llm_zone debt:1m redis=redis://127.0.0.1:$rport redis_sync=10s;

    upstream pool {
        llm_balance zone=debt;
        llm_backend d http://127.0.0.1:$canned tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$g->[1];

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=$limit;
            proxy_pass http://pool;
        }

        location /mixed/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=$mixed;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=5;
            access_log off;
        }
    }
END
}

ok(wait_for(5, sub { (status_redis($pc)->{state} // '') eq 'connected'
                     && (status_redis($pd)->{state} // '') eq 'connected' }),
   'two more instances connect');

# each request's charge settled before the next: the client has its
# answer a moment before the worker corrects the charge to the usage,
# and on a loaded machine the next request, in the other worker, asked
# Redis before the debt was there to go with its report
my @debt;
my %charged;
for my $step (['big', $pc], ['exact', $pc], ['exact', $pd], ['exact', $pd]) {
    my ($path, $port) = @$step;
    my ($s) = http_post($port, "/$path$chat", $body, 'X-App' => 'debt');
    push @debt, $s;
    next unless $s == 200;
    $charged{$port} += ($path eq 'big') ? $usage : $est;
    wait_for(5, sub {
        (status_consumer($port, 'debt') // {})->{window_tokens} // 0
            >= $charged{$port}
    });
}
is("@debt", '200 200 200 429',
   "tpm=$limit: usage of $usage then $est on one instance leaves $est "
   . 'for the other');

###########################################################################
# a request that asks for more than is left gets nothing: part of what
# it lacks would cover no request of its size, and held as a lease it
# would keep from the other instance what its smaller requests could use

my @mixed;
for my $step ([$small_body, $pc], [$big_body, $pc], [$small_body, $pd],
              [$small_body, $pd])
{
    my ($s) = http_post($step->[1], "/mixed$chat", $step->[0],
                        'X-App' => 'mixed');
    push @mixed, $s;
}
is("@mixed", '200 429 200 200',
   "tpm=$mixed: after $small, $big is refused and leaves the rest to "
   . 'the other instance');

$gd->cleanup;
$gc->cleanup;
$gb->cleanup;
$ga->done;
