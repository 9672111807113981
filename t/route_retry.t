#!/usr/bin/perl

# Token-aware routing through three TLS deployments with different
# hostnames, certificates, keys and deployment names: a 429 retry chain
# in which each backend sees exactly its own Host, SNI, key and path; the
# client's key never leaves nginx; backends that said 429 cool down and
# do not count toward max_fails; local admission answers 429 in Azure's
# shape when no backend has room; all throttled on a retry is one 429.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $certs = "$dir/certs";

my $ctl = free_port();
my @names = qw(alpha beta gamma);
my %port = map { $_ => free_port() } @names;
my $shared = free_port();

my @deployments = map {
    { name => $_, port => $port{$_}, tls => JSON::PP::true(),
      host => "res-$_.openai.azure.com", api_key => "key-$_",
      deployment => "dep-$_", tpm => 100000, ttft_ms => [0, 0],
      tokens_per_s => 2000, completion_tokens => 5 }
} @names;

# a fourth deployment whose only credential is a bearer token
push @deployments, { name => 'delta', port => free_port(),
    tls => JSON::PP::true(), host => 'res-delta.openai.azure.com',
    bearer => 'tok-delta', deployment => 'dep-delta', tpm => 100000,
    ttft_ms => [0, 0], tokens_per_s => 2000, completion_tokens => 5 };

# small ones for local admission, plain http
push @deployments, { name => 'small', port => free_port(),
    host => 'res-small.openai.azure.com', api_key => 'key-small',
    deployment => 'dep-small', tpm => 2000, ttft_ms => [0, 0],
    tokens_per_s => 2000, completion_tokens => 5 };

$t->start_sim({ control_port => $ctl, tls_dir => $certs,
                deployments => \@deployments });

for my $n (@names, 'small') {
    open my $fh, '>', "$dir/$n.key" or die;
    print $fh "key-$n\n";
    close $fh;
}
open my $fh, '>', "$dir/delta.token" or die;
print $fh "tok-delta\n";
close $fh;

my %p = map { $_->{name} => $_->{port} } @deployments;
my $listen = free_port();

my $proxy = <<"END";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
            proxy_set_header Authorization \$llm_backend_authorization;
            proxy_ssl_server_name on;
            proxy_ssl_name \$llm_backend_host;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            proxy_next_upstream error timeout http_429 non_idempotent;
            add_header X-Backend \$llm_backend always;
            add_header X-Attempts \$llm_attempts always;
            add_header X-Throttle \$llm_throttle always;
END

# nothing listens there
my $dead = free_port();

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream azure {
        llm_balance zone=llm;
        llm_backend alpha https://res-alpha.openai.azure.com
                    deployment=dep-alpha tpm=100k key_file=$dir/alpha.key
                    weight=3
                    address=127.0.0.1:$p{alpha};
        llm_backend beta https://res-beta.openai.azure.com
                    deployment=dep-beta tpm=100k key_file=$dir/beta.key
                    weight=2
                    address=127.0.0.1:$p{beta};
        llm_backend gamma https://res-gamma.openai.azure.com
                    deployment=dep-gamma tpm=100k key_file=$dir/gamma.key
                    weight=1
                    address=127.0.0.1:$p{gamma};
        keepalive 8;
    }

    upstream bearer {
        llm_balance zone=llm;
        llm_backend delta https://res-delta.openai.azure.com
                    deployment=dep-delta tpm=100k
                    bearer_file=$dir/delta.token
                    address=127.0.0.1:$p{delta};
    }

    # a backend that refuses connections, marked down by its first
    # failure, and one that answers
    upstream halfdown {
        llm_balance zone=llm;
        llm_backend dead http://res-dead.openai.azure.com
                    deployment=dep-small key_file=$dir/small.key
                    address=127.0.0.1:$dead max_fails=1 fail_timeout=30s;
        llm_backend small http://res-small.openai.azure.com
                    deployment=dep-small key_file=$dir/small.key
                    priority=2 address=127.0.0.1:$p{small};
    }

    upstream small {
        llm_balance zone=llm;
        llm_backend small http://res-small.openai.azure.com
                    deployment=dep-small tpm=2000 key_file=$dir/small.key
                    address=127.0.0.1:$p{small};
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/ {
            llm_route azure;
            proxy_pass https://azure;
$proxy
        }

        location /bearer/ {
            llm_route bearer;
            rewrite ^/bearer(/.*)\$ \$1 break;
            proxy_pass https://bearer;
$proxy
        }

        location /halfdown/ {
            llm_route halfdown;
            rewrite ^/halfdown(/.*)\$ \$1 break;
            proxy_pass http://halfdown;
$proxy
        }

        location /small/ {
            llm_route small;
            rewrite ^/small(/.*)\$ \$1 break;
            proxy_pass http://small;
$proxy
        }
    }
END

my $chat = '/openai/deployments/client-name/chat/completions'
         . '?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 10 });

sub call {
    my ($uri, $b, %h) = @_;
    my ($st, $hd, $raw) = http_post($listen, $uri, $b // $body,
                                    'api-key' => 'client-secret',
                                    'Authorization' => 'Bearer client-tok',
                                    %h);
    return ($st, $hd, $raw);
}

###########################################################################
# the first request goes to one backend, rewritten for it

my ($st, $h, $raw) = call($chat);
is($st, 200, 'routed') or diag $raw;
is($h->{'x-attempts'}, 1, 'one attempt');
my $first = $h->{'x-backend'};
ok((grep { $_ eq $first } @names), "backend $first chosen");

my $s = $t->sim_stats->{deployments}{$first};
is_deeply($s->{hosts}, { "res-$first.openai.azure.com" => 1 }, 'its Host');
is_deeply($s->{sni}, { "res-$first.openai.azure.com" => 1 }, 'its SNI');
is_deeply($s->{api_keys}, { "key-$first" => 1 }, 'its key');
is_deeply([keys %{ $s->{paths} }],
          ["/openai/deployments/dep-$first/chat/completions"],
          'its deployment in the path') or diag explain $s->{paths};

###########################################################################
# a retry chain: two backends answer 429, the third 200

$t->sim_reset;
$t->sim_update($_, { faults => { overload429 => 1 } }) for qw(alpha beta);

# room x weight orders them: alpha (3), beta (2), gamma (1)

($st, $h, $raw) = call($chat);
is($st, 200, 'retry chain ends in 200') or diag $raw;
is($h->{'x-backend'}, 'gamma', 'gamma answered');
is($h->{'x-attempts'}, 3, 'three attempts');
is($h->{'x-throttle'}, 'backend', '$llm_throttle backend');

my $stats = $t->sim_stats->{deployments};
for my $n (@names) {
    my $d = $stats->{$n};
    is($d->{requests}, 1, "$n saw one request");
    is_deeply($d->{hosts}, { "res-$n.openai.azure.com" => 1 },
              "$n saw its own Host");
    is_deeply($d->{sni}, { "res-$n.openai.azure.com" => 1 },
              "$n saw its own SNI");
    is_deeply($d->{api_keys}, { "key-$n" => 1 }, "$n saw only its own key");
    is_deeply($d->{bearers} // {}, {}, "$n saw no bearer token");
    is_deeply([keys %{ $d->{paths} }],
              ["/openai/deployments/dep-$n/chat/completions"],
              "$n saw its own deployment path");
}
is($stats->{alpha}{status}{429}, 1, 'alpha said 429');
is($stats->{beta}{status}{429}, 1, 'beta said 429');

# cooling down: the next request goes straight to gamma
($st, $h) = call($chat);
is($h->{'x-backend'}, 'gamma', 'throttled backends cool down');
is($h->{'x-attempts'}, 1, 'no new attempt on them');

my $log = $t->error_log;
unlike($log, qr/upstream server temporarily disabled/,
       'a 429 does not count toward max_fails');
like($log, qr/\[warn\].*backend "alpha" of "azure" answered 429, cooling/,
     'the 429 is logged at warn');

$t->sim_update($_, { faults => { overload429 => 0 } }) for qw(alpha beta);

###########################################################################
# bearer credentials

($st, $h, $raw) = call("/bearer$chat");
is($st, 200, 'bearer backend') or diag $raw;
$s = $t->sim_stats->{deployments}{delta};
is_deeply($s->{bearers}, { 'tok-delta' => 1 }, 'its bearer token');
is_deeply($s->{api_keys} // {}, {}, 'no api-key sent to a bearer backend');

###########################################################################
# local admission: the small backend has 2,000 TPM, each request 993

my $heavy = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                          max_tokens => 985 });
my @st;
for (1 .. 3) {
    my ($s1, $h1, $r1) = call("/small$chat", $heavy);
    push @st, [$s1, $h1, $r1];
}
is($st[0][0], 200, 'first fits');
is($st[1][0], 200, 'second fits');
is($st[2][0], 429, 'third refused by nginx');
my $j = json_decode($st[2][2]);
is($j->{error}{code}, '429', 'Azure shape, code "429"');
like($j->{error}{message}, qr/Please retry after \d+ seconds/, 'message');
like($st[2][1]{'retry-after'}, qr/^\d+$/, 'Retry-After');
cmp_ok($st[2][1]{'retry-after'}, '>=', 55, 'Retry-After: the window');
cmp_ok($st[2][1]{'retry-after'}, '<=', 61, 'Retry-After: not more');
cmp_ok($st[2][1]{'retry-after-ms'}, '>', 55000, 'retry-after-ms');
is($st[2][1]{'x-throttle'}, 'local', '$llm_throttle local');
$s = $t->sim_stats->{deployments}{small};
is($s->{requests}, 2, 'the refused request never reached the backend');
is($s->{status}{429} // 0, 0, 'the backend never said 429');

###########################################################################
# the v1 API: the deployment is the body's "model", spliced per backend;
# a body in a temp file too; the simulator answers 404 for a wrong model

sleep 2.5;    # the cool-downs of the chain above end
$t->sim_reset;
$t->sim_update('alpha', { faults => { overload429 => 1 } });

my $v1 = '/openai/v1/chat/completions';
for my $size (10, 40000) {
    my $b1 = json_encode({ model => 'client-model', max_tokens => 5,
                           messages => [ { role => 'user',
                                           content => 'y' x $size } ] });
    ($st, $h, $raw) = call($v1, $b1);
    is($st, 200, "v1, $size: routed") or diag $raw;
    is($h->{'x-backend'}, 'beta', "v1, $size: beta, alpha being throttled");
}
$stats = $t->sim_stats->{deployments};
is($stats->{alpha}{status}{429}, 1, 'v1: alpha refused the first, then cooled down');
is($stats->{beta}{status}{200}, 2, 'v1: beta took both with its model');
is_deeply([keys %{ $stats->{beta}{paths} }], [$v1], 'v1: path unchanged');
$t->sim_update('alpha', { faults => { overload429 => 0 } });

###########################################################################
# the deployment the backend gets is always the one admitted and charged:
# a "model" key spelled with an escape is replaced too, "/deployments/"
# in the query is not the path's, and a path with dot segments goes out
# as nginx read it, not as the client spelt it

sleep 1.5;
$t->sim_reset;
my $mb = '{"m\\u006fdel":"client-model","max_tokens":5,'
       . '"messages":[{"role":"user","content":"hi"}]}';
($st, $h, $raw) = call($v1, $mb);
is($st, 200, 'v1, escaped "model": the backend\'s own model') or diag $raw;

# a UTF-8 BOM first, which cJSON and Python's reader both skip
($st, $h, $raw) = call($v1, "\xEF\xBB\xBF" . json_encode({
    model => 'client-model', max_tokens => 5,
    messages => [ { role => 'user', content => 'hi' } ] }));
is($st, 200, 'v1, a BOM first: the backend\'s own model') or diag $raw;

($st, $h, $raw) = call("$v1?x=/openai/deployments/elsewhere/",
                       json_encode({ model => 'client-model', max_tokens => 5,
                                     messages => [ { role => 'user',
                                                     content => 'hi' } ] }));
is($st, 200, 'v1, "/deployments/" in the query: the body\'s model replaced')
    or diag $raw;

for my $path ('/openai/deployments/anything/../client-name/chat/completions',
              '/openai/deployments/anything/%2E%2E/client-name/'
              . 'chat/completions',
              '/openai/./deployments/client-name/chat/completions')
{
    ($st, $h, $raw) = call("$path?api-version=2024-10-21");
    is($st, 200, "$path: 200") or diag $raw;
    my $b = $h->{'x-backend'} // '';
    my $paths = $t->sim_stats->{deployments}{$b}{paths} // {};
    ok($paths->{"/openai/deployments/dep-$b/chat/completions"},
       "$path: sent as /openai/deployments/dep-$b/chat/completions")
        or diag explain $paths;
    $t->sim_reset;
}

###########################################################################
# every backend throttled on a retry: one 429, not nginx's 502

$t->sim_update($_, { faults => { overload429 => 1 } }) for @names;
sleep 2.5;    # the cool-downs of the chain above end

($st, $h, $raw) = call($chat);
is($st, 429, 'all throttled: 429') or diag $raw;
$j = eval { json_decode($raw) };
is($j->{error}{code}, '429', 'all throttled: Azure shape');
ok($h->{'retry-after'} >= 1, 'all throttled: Retry-After');
is($h->{'content-type'}, 'application/json', 'all throttled: JSON');
$t->sim_update($_, { faults => { overload429 => 0 } }) for @names;

# one backend down (its connection refused, max_fails), the other
# throttled: a 429 with the throttled one's Retry-After, not nginx's 502

($st, $h, $raw) = call("/halfdown$chat");
is($st, 200, 'half down: the live backend answers') or diag $raw;
is($h->{'x-backend'}, 'small', 'half down: after the dead one failed');
$t->sim_update('small', { faults => { overload429 => 1 } });
($st, $h, $raw) = call("/halfdown$chat");
is($st, 429, 'half down, the other throttled: 429') or diag $raw;
$j = eval { json_decode($raw) };
is($j->{error}{code}, '429', 'half down, the other throttled: Azure shape');
ok(($h->{'retry-after'} // 0) >= 1,
   'half down, the other throttled: Retry-After');
$t->sim_update('small', { faults => { overload429 => 0 } });

$t->done;
