#!/usr/bin/perl

# conf-examples/json-log.conf, run as written (ports, addresses, files
# and CA ours) in front of the simulator over TLS: every line is valid
# JSON whatever happened to the request (served, refused as malformed,
# refused by client_max_body_size before llm_route ran, a GET without a
# body); the token counts are JSON numbers equal to the backend's, or
# null; every variable the README documents is in the format, except the
# two secrets, which are not.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep);
use LLMTest;

my $t = LLMTest->new;
my $file = $t->top . '/conf-examples/json-log.conf';

# every $llm_ variable of the README's "Embedded variables"
{
    open my $fh, '<', $t->top . '/README.md' or die;
    my $readme = do { local $/; <$fh> };
    my ($section) = $readme =~ /^## Embedded variables\n(.*?)^## /ms;
    # the lines that name the variables a paragraph defines
    my %doc = map { $_ => 1 } map { /(\$llm_\w+)/g } $section =~ /^(`\$.*)$/mg;
    open $fh, '<', $file or die;
    my $conf = do { local $/; <$fh> };
    my ($format) = $conf =~ /(log_format llm_json.*?;)/s;
    my %maps = $conf =~ /^\s*map\s+(\$llm_\w+)\s+(\$\w+)/mg;
    ok(keys %doc >= 13, scalar(keys %doc) . ' variables documented');
    for my $var (sort keys %doc) {
        my $secret = $var =~ /^\$llm_backend_(?:key|authorization)$/;
        my $in = $format =~ /\Q$var\E\b/
                 || ($maps{$var} && $format =~ /\Q$maps{$var}\E\b/);
        ok($secret ? !$in : $in, ($secret ? 'not logged: ' : 'logged: ')
                                 . $var);
    }
}

my %sim = $t->start_sim_for_example($file, all => { completion_tokens => 12 });
my $port = $t->start_example($file, %sim);
my $listen = $port->{8080};

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

my ($st) = http_post($listen, $chat, json_encode({
    messages => [ { role => 'user', content => 'hello' } ],
    max_tokens => 30 }));
is($st, 200, 'chat: 200');
($st) = http_post($listen, $chat, '{"messages": [');
is($st, 400, 'malformed: 400');
($st) = http_get($listen, '/openai/models?api-version=2024-10-21');
ok($st, "GET without a body: $st");
($st) = http_request($listen, "POST $chat HTTP/1.1\r\nHost: localhost\r\n"
                              . "Content-Length: 30000000\r\n"
                              . "Connection: close\r\n\r\n");
is($st, 413, 'over client_max_body_size: 413');

# the log is buffered: a second at most
my @lines;
for (1 .. 60) {
    @lines = grep { length } split /\n/, $t->read_file('logs/llm.json');
    last if @lines >= 4;
    sleep 0.05;
}
is(scalar @lines, 4, 'four lines');

my @log;
for my $line (@lines) {
    my $e = eval { json_decode($line) };
    ok($e, 'valid JSON') or diag "$@ $line";
    push @log, $e || {};
}

my %by = map { $_->{status} => $_ } @log;
my $ok = $by{200};
my $truth = $t->sim_stats->{deployments}{ $ok->{backend} // '' } || {};
like(line_of($ok), qr/"prompt_tokens":\d+,/, 'chat: prompt_tokens a number');
is($ok->{prompt_tokens}, $truth->{prompt_tokens},
   'chat: prompt tokens as the backend\'s');
is($ok->{completion_tokens}, 12, 'chat: completion tokens');
is($ok->{total_tokens}, $ok->{prompt_tokens} + 12, 'chat: total');
is($ok->{attempts}, 1, 'chat: one attempt');
like(line_of($ok), qr/"ttft_ms":\d+,/, 'chat: ttft_ms a number');
is($ok->{usage_source}, 'reported', 'chat: usage reported');
ok(length $ok->{apim_request_id}, 'chat: apim-request-id');
is($ok->{region}, $ok->{backend}, 'chat: the region header of the backend');

is($by{400}{tokens_estimate}, undef, 'malformed: tokens_estimate null');
is($by{400}{attempts}, 0, 'malformed: attempts 0');

is($by{413}{attempts}, undef, '413 before llm_route: attempts null');
is($by{413}{model}, '', '413 before llm_route: model empty');

sub line_of {
    my ($e) = @_;
    my ($l) = grep { /"request_id":"\Q$e->{request_id}\E"/ } @lines;
    return $l // '';
}

$t->done;
