#!/usr/bin/perl

# Azure's own signals in a reply, beyond its status:
# - a PTU's azure-openai-deployment-utilization, shown per backend in
#   llm_status (JSON and Prometheus);
# - x-ms-retry-after-ms, Azure's other spelling of retry-after-ms, rests a
#   throttled backend for its milliseconds rather than retry-after's
#   whole seconds;
# - the apim-request-id of an attempt that got a 429 or a 5xx, in
#   $llm_backend_request_id, when the client's reply came from another
#   backend.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my %p = map { $_ => free_port() } qw(ptu xms spare big1 big2 big3);

# rests asked for beyond any integer, in seconds (and as many thousands
# of milliseconds): big1's and big2's milliseconds beyond 2^63, their
# seconds' thousands too; big3's both
my @deployments = (
    { name => 'ptu', kind => 'ptu', tpm => 100000 },
    { name => 'xms', tpm => 100000, retry_ms_header => 'x-ms-retry-after-ms',
      overload_retry_s => 1.5, faults => { overload429 => 1 } },
    { name => 'spare', tpm => 100000 },
    map { { name => "big$_->[0]", tpm => 100000,
            retry_ms_header => 'x-ms-retry-after-ms',
            overload_retry_s => $_->[1], faults => { overload429 => 1 } } }
        [1, 18446744073709552], [2, 9223372036854776],
        [3, 99999999999999999999],
);
for (@deployments) {
    %$_ = (%$_, port => $p{$_->{name}}, host => "$_->{name}.example",
           deployment => 'gpt-4o', api_key => 'k', ttft_ms => [0, 0],
           tokens_per_s => 5000, completion_tokens => 3);
}
$t->start_sim({ control_port => $ctl, deployments => \@deployments });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

sub backend {
    my ($name, $extra) = @_;
    return "llm_backend $name http://$name.example:$p{$name} "
         . "address=127.0.0.1:$p{$name} deployment=gpt-4o "
         . "key_file=$dir/k.key tpm=100k $extra;";
}

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format ids '\$status \$llm_backend "\$llm_backend_request_id" '
                   '\$upstream_http_apim_request_id';
    access_log $dir/ids.log ids;

    upstream p {
        llm_balance zone=llm;
        ${\ backend('ptu', 'ptu') }
    }

    upstream x {
        llm_balance zone=llm;
        ${\ backend('xms', 'priority=1') }
        ${\ backend('spare', 'priority=2') }
    }
${\ join '', map { <<"B" } 1 .. 3 }
    upstream big$_ {
        llm_balance zone=llm;
        ${\ backend("big$_", 'priority=1') }
        ${\ backend('spare', 'priority=2') }
    }
B

    server {
        listen 127.0.0.1:$listen;

        proxy_next_upstream error timeout http_429 non_idempotent;
        proxy_set_header Host \$llm_backend_host;
        proxy_set_header api-key \$llm_backend_key;
        add_header X-Backend \$llm_backend always;
        add_header X-Failed-Id \$llm_backend_request_id always;

        location /p/ {
            llm_route p;
            rewrite ^/p(/.*)\$ \$1 break;
            proxy_pass http://p;
        }

        location /x/ {
            llm_route x;
            rewrite ^/x(/.*)\$ \$1 break;
            proxy_pass http://x;
        }

${\ join '', map { <<"L" } 1 .. 3 }
        location /big$_/ {
            llm_route big$_;
            rewrite ^/big$_(/.*)\$ \$1 break;
            proxy_pass http://big$_;
        }
L

        location = /status {
            llm_status;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user',
                                         content => 'hello' } ],
                         max_tokens => 500 });

sub backend_status {
    my ($pool, $name) = @_;
    my ($s) = llm_status($listen);
    my ($p) = grep { $_->{name} eq $pool } @{ $s->{pools} };
    my ($b) = grep { $_->{name} eq $name } @{ $p->{backends} };
    return $b;
}

###########################################################################
# a PTU's utilization

my ($st, $h) = http_post($listen, "/p$chat", $body);
is($st, 200, 'the PTU answers');
my $sent = $h->{'azure-openai-deployment-utilization'} // '';
like($sent, qr/^\d+\.\d%$/, "it sends its utilization ($sent)");
(my $pct = $sent) =~ s/%$//;

my $ptu = backend_status('p', 'ptu');
is($ptu->{utilization_pct}, $pct + 0, 'llm_status shows it');
ok(defined $ptu->{utilization_age_ms} && $ptu->{utilization_age_ms} < 5000,
   'with its age');
is(backend_status('x', 'spare')->{utilization_pct}, undef,
   'null for a backend that never sent one');

my (undef, undef, $prom) = http_get($listen, '/status?format=prometheus');
my ($ratio) = $prom
    =~ /^llm_backend_utilization_ratio\{pool="p",backend="ptu"\} (\S+)$/m;
ok(defined $ratio && abs($ratio - $pct / 100) < 0.0005,
   'Prometheus: llm_backend_utilization_ratio ' . ($ratio // 'missing'));
unlike($prom, qr/^llm_backend_utilization_ratio\{pool="x"/m,
       'no sample for backends that never sent one');

###########################################################################
# x-ms-retry-after-ms; the 429's request id

($st, $h) = http_post($listen, "/x$chat", $body);
is($st, 200, 'the throttled backend\'s request is retried: 200');
is($h->{'x-backend'}, 'spare', 'on the spare');

my $xms = backend_status('x', 'xms');
is($xms->{backend_throttled}, 1, 'xms answered 429');
ok($xms->{cooldown_ms} > 1000 && $xms->{cooldown_ms} <= 1500,
   "xms rests $xms->{cooldown_ms} ms: x-ms-retry-after-ms (1500), "
   . 'not retry-after (2 s)');

my @recent = @{ $t->sim_stats->{deployments}{xms}{recent} };
my $id429 = $recent[-1]{request_id};
ok($id429, "the 429's apim-request-id: $id429");
is($h->{'x-failed-id'}, $id429, '$llm_backend_request_id is the 429\'s');
isnt($h->{'apim-request-id'}, $id429,
     'the reply\'s own id is the spare\'s');

my @log = grep { length } split /\n/, $t->read_file('ids.log');
my ($spare) = grep { / spare / } @log;
my ($first) = grep { / ptu / } @log;
like($spare, qr/^200 spare "\Q$id429\E" \S+$/,
     'the access log has both ids');
like($first, qr/^200 ptu "-" /, 'no id when no attempt failed');

###########################################################################
# a rest asked for beyond any integer: the longest the pool allows
# (cooldown_max, 60 s), not a product wrapped round to a few seconds

for (1 .. 3) {
    ($st, $h) = http_post($listen, "/big$_$chat", $body);
    is($h->{'x-backend'}, 'spare', "big$_: the spare answers");
    my $rest = backend_status("big$_", "big$_")->{cooldown_ms};
    cmp_ok($rest, '>', 59000, "big$_: rests cooldown_max, $rest ms");
}

$t->done;
