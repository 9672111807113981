#!/usr/bin/perl

# llm_status in Prometheus's format carries OpenTelemetry's GenAI
# histograms per backend, in front of the simulator: token usage by type
# (gen_ai_client_token_usage), the attempt's duration, the time to the
# first token and per output token, with the provider, the model asked
# for, the operation, the pool and the backend as labels.  Every sample
# is checked against the replies' own usage and the simulator's timing;
# a failed attempt adds nothing; promtool accepts the whole output.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;

my $ctl = free_port();
my $sp = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    map { { name => $_, port => $sp, host => 'sim.example',
            deployment => $_, tpm => 10000000, rpm => 100000,
            api_key => 'k', ttft_ms => [100, 100], tokens_per_s => 100,
            completion_tokens => 7,
            $_ eq 'broken' ? (faults => { 500 => 1 }) : () } }
        qw(gpt-4o emb broken) ] });

open my $fh, '>', "$dir/k.key" or die;
print $fh "k\n";
close $fh;

my $listen = free_port();

my $backend = "http://sim.example:$sp address=127.0.0.1:$sp "
              . "key_file=$dir/k.key tpm=10m rpm=100k";

$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream chat {
        llm_balance zone=llm;
        llm_backend b1 $backend deployment=gpt-4o;
    }

    upstream emb {
        llm_balance zone=llm;
        llm_backend e1 $backend deployment=emb;
    }

    upstream bad {
        llm_balance zone=llm;
        llm_backend x1 $backend deployment=broken;
    }

    server {
        listen 127.0.0.1:$listen;

        location /openai/deployments/gpt-4o/ {
            llm_route chat;
            proxy_pass http://chat;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /openai/deployments/emb/ {
            llm_route emb;
            proxy_pass http://emb;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location /openai/deployments/broken/ {
            llm_route bad;
            proxy_pass http://bad;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }

        location = /status {
            llm_status;
        }
    }
END

my $api = '?api-version=2024-10-21';
my (@prompt, @completion);

sub chat {
    my (%o) = @_;
    my ($st, $h, $b) = http_post($listen,
        "/openai/deployments/gpt-4o/chat/completions$api",
        json_encode({ messages => [ { role => 'user',
                                      content => 'Tell me about nginx, '
                                                 . 'in a few words.' } ],
                      max_tokens => 20, %o }));
    is($st, 200, 'chat: 200' . ($o{stream} ? ', a stream' : ''));
    my $u;
    if ($o{stream}) {
        ($u) = grep { $_ } map { $_->{data} =~ /^\{/
                                 ? json_decode($_->{data})->{usage} : undef }
               LLMTest::sse_events($b);
    } else {
        $u = json_decode($b)->{usage};
    }
    push @prompt, $u->{prompt_tokens};
    push @completion, $u->{completion_tokens};
}

chat() for 1 .. 3;
chat(stream => JSON::PP::true,
     stream_options => { include_usage => JSON::PP::true }) for 1 .. 2;

my ($st, $h, $b) = http_post($listen,
    "/openai/deployments/emb/embeddings$api",
    json_encode({ input => 'a few words to embed' }));
is($st, 200, 'embeddings: 200');
my $emb_prompt = json_decode($b)->{usage}{prompt_tokens};

($st) = http_post($listen,
    "/openai/deployments/broken/chat/completions$api",
    json_encode({ messages => [ { role => 'user', content => 'hi' } ] }));
is($st, 500, 'a failed attempt: 500');

# every request settled: the client has its reply before the log phase
# records it, and the status request may reach another worker first
my $prom;
ok(wait_for(3, sub {
       (undef, undef, $prom) = http_get($listen,
                                        '/status?format=prometheus');
       my @n = $prom =~ /^gen_ai_client_operation_duration_seconds_count\{.*\} (\d+)$/mg;
       my $n = 0;
       $n += $_ for @n;
       $n == 6 }),
   'six successful attempts recorded');

# one histogram's samples, by label set without "le"
sub histogram {
    my ($name, $match) = @_;
    my (%le, $sum, $count);
    for my $line (split /\n/, $prom) {
        next unless $line =~ /^\Q$name\E_(bucket|sum|count)\{(.*)\} (\S+)$/;
        my ($kind, $labels, $v) = ($1, $2, $3);
        next unless $labels =~ $match;
        if ($kind eq 'bucket') {
            my ($le) = $labels =~ /le="([^"]+)"/;
            $le{$le} = $v;
        } elsif ($kind eq 'sum') {
            $sum = $v;
        } else {
            $count = $v;
        }
    }
    return (\%le, $sum, $count);
}

# cumulative buckets agree with the values they count
sub check_buckets {
    my ($what, $le, $count, @values) = @_;
    my $bad = 0;
    for my $bound (keys %$le) {
        my $want = $bound eq '+Inf' ? scalar @values
                                    : grep { $_ <= $bound } @values;
        $bad++ unless $le->{$bound} == $want;
    }
    ok(keys %$le > 10 && !$bad, "$what: every bucket counts its values");
    is($le->{'+Inf'}, $count, "$what: +Inf is the count");
}

my $chat = qr/^gen_ai_provider_name="azure\.ai\.openai",gen_ai_request_model="gpt-4o",pool="chat",backend="b1",gen_ai_operation_name="chat"/;

for my $type ([input => \@prompt], [output => \@completion]) {
    my ($name, $values) = @$type;
    my ($le, $sum, $count) = histogram('gen_ai_client_token_usage',
        qr/$chat,gen_ai_token_type="$name"(?:,|$)/);
    is($count, 5, "token usage, $name: five replies");
    my $total = 0;
    $total += $_ for @$values;
    is($sum, $total, "token usage, $name: the replies' $total tokens");
    check_buckets("token usage, $name", $le, $count, @$values);
}

my ($le, $sum, $count) = histogram('gen_ai_client_operation_duration_seconds',
                                   qr/$chat(?:,le=|$)/);
is($count, 5, 'duration: five attempts');
ok($sum >= 5 * 0.1 && $sum < 5 * 2, "duration: $sum s in all");
is($le->{'0.08'}, 0, 'duration: none under the first token\'s 100 ms');

# a JSON reply's first byte comes with its last token: streams only
($le, $sum, $count) = histogram('gen_ai_server_time_to_first_token_seconds',
                                qr/$chat(?:,le=|$)/);
is($count, 2, 'time to first token: the two streams');
is($le->{'0.08'}, 0, 'time to first token: none under 100 ms');
ok($sum / 2 >= 0.1 && $sum / 2 < 1, 'time to first token: ' . $sum / 2
                                    . ' s on average');

# a stream's seven tokens at 100 a second: 10 ms each
($le, $sum, $count) = histogram('gen_ai_server_time_per_output_token_seconds',
                                qr/$chat(?:,le=|$)/);
is($count, 2, 'time per output token: the two streams');
ok($count && $sum / $count >= 0.005 && $sum / $count < 0.05,
   'time per output token: ' . ($count ? $sum / $count : '-') . ' s');

my $embq = qr/^gen_ai_provider_name="azure\.ai\.openai",gen_ai_request_model="emb",pool="emb",backend="e1",gen_ai_operation_name="embeddings"/;
($le, $sum, $count) = histogram('gen_ai_client_token_usage',
                                qr/$embq,gen_ai_token_type="input"(?:,|$)/);
is($count, 1, 'embeddings: one input sample');
is($sum, $emb_prompt, "embeddings: its $emb_prompt tokens");
($le, $sum, $count) = histogram('gen_ai_client_token_usage',
                                qr/$embq,gen_ai_token_type="output"(?:,|$)/);
is($count, undef, 'embeddings: no output tokens');
($le, $sum, $count) = histogram('gen_ai_server_time_to_first_token_seconds',
                                $embq);
is($count, undef, 'embeddings: no first token');

unlike($prom, qr/^gen_ai_.*backend="x1"/m, 'a failed attempt adds nothing');

for my $family (qw(gen_ai_client_token_usage
                   gen_ai_client_operation_duration_seconds
                   gen_ai_server_time_to_first_token_seconds
                   gen_ai_server_time_per_output_token_seconds)) {
    like($prom, qr/^# TYPE $family histogram$/m, "$family: a histogram");
}

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool';
    open my $out, '>', "$dir/metrics.txt" or die;
    print $out $prom;
    close $out;
    my $check = `/usr/bin/promtool check metrics < $dir/metrics.txt 2>&1`;
    is($?, 0, 'promtool check metrics') or diag $check;
}

$t->done;
