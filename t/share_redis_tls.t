#!/usr/bin/perl

# Budgets shared through Redis over TLS (llm_zone redis=rediss://...),
# with a real redis-server that speaks TLS only and asks for a client
# certificate:
# - two instances verify Redis's certificate, present their own, and
#   share a consumer's limit; a worker's last report at a stop gets
#   through the TLS connection;
# - an untrusted certificate, a name that does not match, no client
#   certificate, or TLS spoken to a plain port: the link is down with the
#   reason in llm_status and a warning, and requests flow on the
#   instance's share;
# - redis_ssl_verify=off connects to a server it cannot verify;
# - configuration errors name the option.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $ga = LLMTest->new;
my $gb = LLMTest->new;
my $echo = $ga->start_echo;
my $pki = $ga->dir;

# a CA, Redis's certificate for "redis.test" and 127.0.0.1, a client's,
# and a CA that signed neither

sub openssl {
    my ($args) = @_;
    my $out = `openssl $args 2>&1`;
    die "openssl $args: $out" if $?;
}

openssl("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca "
        . "-keyout $pki/ca.key -out $pki/ca.crt");
open my $ext, '>', "$pki/server.ext" or die;
print $ext "subjectAltName=DNS:redis.test,IP:127.0.0.1\n";
close $ext;
for my $who (qw(server client)) {
    openssl("req -newkey rsa:2048 -nodes -subj /CN=$who "
            . "-keyout $pki/$who.key -out $pki/$who.csr");
    openssl("x509 -req -in $pki/$who.csr -CA $pki/ca.crt -CAkey $pki/ca.key "
            . "-CAcreateserial -days 2 -out $pki/$who.crt"
            . ($who eq 'server' ? " -extfile $pki/server.ext" : ''));
}
my $rogue = $ga->throwaway_ca;

my $password = 'tls-PASSWORD-secret-9';
my $rport = $ga->start_redis(
    tls => [ "$pki/server.crt", "$pki/server.key", "$pki/ca.crt" ],
    args => [ '--requirepass', $password, '--tls-auth-clients', 'yes' ]);
my $plain = $gb->start_redis;

open my $pw, '>', "$pki/redis.pass" or die;
print $pw "$password\n";
close $pw;

sub redis_cli {
    my (@args) = @_;
    my $tls = "--tls --cacert $pki/ca.crt --cert $pki/client.crt "
            . "--key $pki/client.key";
    my $cmd = "redis-cli -h 127.0.0.1 -p $rport $tls -a $password "
            . "--no-auth-warning @args 2>&1";
    return `$cmd`;
}

sub conf {
    my ($listen, $zone) = @_;
    return <<"END";
    llm_zone $zone;

    upstream pool {
        llm_balance zone=llm;
        llm_backend d http://127.0.0.1:$echo tpm=100m rpm=1m;
    }

    server {
        listen 127.0.0.1:$listen;

        add_header X-Estimate \$llm_tokens_estimate always;

        location / {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            llm_limit \$http_x_app rpm=3;
            proxy_pass http://pool;
        }

        location /wide/ {
            llm_route pool;
            llm_limit \$http_x_app tpm=1m;
            proxy_pass http://pool;
        }

        location = /status {
            llm_status consumers=10;
            access_log off;
        }
    }
END
}

my $good = "llm:1m redis=rediss://127.0.0.1:$rport "
         . "redis_password_file=$pki/redis.pass redis_sync=50ms "
         . "redis_ssl_trusted_certificate=$pki/ca.crt "
         . "redis_ssl_certificate=$pki/client.crt "
         . "redis_ssl_certificate_key=$pki/client.key";

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello there' } ],
                         max_tokens => 100 });

###########################################################################
# two instances over TLS: one consumer's rpm=3 across both

my $pa = free_port();
my $pb = free_port();
$ga->start_nginx(conf($pa, $good), ports => [$pa], workers => 2);
$gb->start_nginx(conf($pb, "$good redis_ssl_name=redis.test"),
                 ports => [$pb], workers => 2);

ok(wait_for(5, sub { (status_redis($pa)->{state} // '') eq 'connected'
                     && (status_redis($pb)->{state} // '') eq 'connected' }),
   'both instances connect over TLS, by address and by name')
    or diag explain status_redis($pa), status_redis($pb);

my @codes;
for my $port ($pa, $pb, $pa, $pb) {
    my ($s) = http_post($port, $chat, $body, 'X-App' => 'app-SECRET-3');
    push @codes, $s;
}
is("@codes", '200 200 200 429', 'rpm=3 holds across both instances');

my $keys = redis_cli('KEYS', "'*'");
like($keys, qr/^llm:llm:[0-9a-f]{64}:r$/m, 'the budgets are in Redis');

# a worker's last report goes out through TLS as it stops

my ($st, $h) = http_post($pa, "/wide$chat", $body, 'X-App' => 'last');
is($st, 200, 'a request just before a stop');
my $est = $h->{'x-estimate'};
$ga->stop_nginx('TERM');
http_post($pb, "/wide$chat", $body, 'X-App' => 'last');
ok(wait_for(2, sub {
       my $c = status_consumer($pb, 'last');
       $c && ($c->{shared}{tokens}{used} // 0) == 2 * $est }),
   'what it spent reached Redis at the stop')
    or diag explain status_consumer($pb, 'last');

# nginx's own debug lines show request headers; ours never show the value
my (undef, $raw) = llm_status($pb);
my $logs = join "\n", grep { !/\[debug\]|^\S+: / }
                      split /\n/, $ga->error_log . $gb->error_log;
unlike($logs . $raw, qr/PASSWORD|SECRET/,
       'no password and no consumer value in the logs or the status');

###########################################################################
# links that must not come up: the reason, a warning, requests flow

my @down = (
    [ 'a certificate from another authority',
      "llm:1m redis=rediss://127.0.0.1:$rport "
      . "redis_password_file=$pki/redis.pass "
      . "redis_ssl_trusted_certificate=$rogue "
      . "redis_ssl_certificate=$pki/client.crt "
      . "redis_ssl_certificate_key=$pki/client.key",
      qr/untrusted certificate: self-signed certificate in certificate chain/ ],
    [ 'the system\'s authorities, which never signed the test CA',
      "llm:1m redis=rediss://127.0.0.1:$rport "
      . "redis_password_file=$pki/redis.pass "
      . "redis_ssl_certificate=$pki/client.crt "
      . "redis_ssl_certificate_key=$pki/client.key",
      qr/untrusted certificate: self-signed certificate in certificate chain/ ],
    [ 'a name the certificate does not carry',
      "$good redis_ssl_name=other.test",
      qr/does not match "other\.test"/ ],
    [ 'no client certificate',
      "llm:1m redis=rediss://127.0.0.1:$rport "
      . "redis_password_file=$pki/redis.pass "
      . "redis_ssl_trusted_certificate=$pki/ca.crt",
      qr/cannot (read|send) over TLS/ ],
    [ 'TLS spoken to a plain Redis',
      "llm:1m redis=rediss://127.0.0.1:$plain redis_ssl_verify=off",
      qr/timed out in the TLS handshake/ ],
    [ 'plain spoken to a TLS Redis',
      "llm:1m redis=redis://127.0.0.1:$rport "
      . "redis_password_file=$pki/redis.pass redis_timeout=300ms",
      qr/closed|timed out|read|not RESP/ ],
);

for my $case (@down) {
    my ($what, $zone, $re) = @$case;
    my $t = LLMTest->new;
    # nginx 1.22 logs this alert of TLS 1.3 at "crit", as it reads
    $t->allow_log(qr/alert certificate required/);
    my $p = free_port();
    $t->start_nginx(conf($p, $zone), ports => [$p]);
    ok(wait_for(3, sub { (status_redis($p)->{state} // '') eq 'down' }),
       "$what: the link is down");
    like(status_redis($p)->{last_error} // '', $re,
         "$what: llm_status says why") or diag explain status_redis($p);
    my ($s) = http_post($p, "/wide$chat", $body, 'X-App' => 'x');
    is($s, 200, "$what: requests flow on the instance's share");
    like($t->error_log,
         qr/\[warn\].*llm: redis 127\.0\.0\.1:\d+\/0 .*fall back/,
         "$what: a warning");
    unlike($t->error_log, qr/PASSWORD/, "$what: without the password");
    $t->cleanup;
}

# verification off: a certificate from any authority will do

{
    my $t = LLMTest->new;
    my $p = free_port();
    $t->start_nginx(conf($p, "llm:1m redis=rediss://127.0.0.1:$rport "
                             . "redis_password_file=$pki/redis.pass "
                             . "redis_ssl_verify=off "
                             . "redis_ssl_trusted_certificate=$rogue "
                             . "redis_ssl_certificate=$pki/client.crt "
                             . "redis_ssl_certificate_key=$pki/client.key"),
                    ports => [$p]);
    ok(wait_for(3, sub { (status_redis($p)->{state} // '') eq 'connected' }),
       'redis_ssl_verify=off connects without verifying');
    $t->cleanup;
}

###########################################################################
# configuration errors

my $c = LLMTest->new;
my @bad = (
    [ "redis=redis://127.0.0.1 "
      . "redis_ssl_trusted_certificate=$pki/ca.crt",
      qr/"redis_ssl_" options without a "rediss:\/\/" URL/ ],
    [ "redis=rediss://127.0.0.1 redis_ssl_certificate=$pki/client.crt",
      qr/needs both "redis_ssl_certificate=" and "redis_ssl_certificate_k/ ],
    [ "redis=rediss://127.0.0.1 redis_ssl_trusted_certificate=/nonexistent",
      qr/nonexistent/ ],
    [ "redis=rediss://127.0.0.1 redis_ssl_verify=maybe",
      qr/invalid parameter "redis_ssl_verify=maybe"/ ],
    [ "redis=rediss://127.0.0.1 redis_ssl_certificate=$pki/client.crt "
      . "redis_ssl_certificate_key=$pki/server.key",
      qr/key values mismatch|private key/i ],
);
for my $case (@bad) {
    my ($opts, $re) = @$case;
    my ($rc, $out) = $c->test_conf(<<"END");
    llm_zone z:1m $opts;
    upstream u {
        llm_balance zone=z;
        llm_backend d http://127.0.0.1:1 tpm=1k;
    }
END
    isnt($rc, 0, "refused: $opts");
    like($out, $re, 'with the reason');
}
$c->cleanup;

$gb->cleanup;
$ga->done;
