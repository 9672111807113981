#!/usr/bin/perl

# tools/aoai-sim: HTTP behaviour as docs/azure.md sections 3-6 describe it.
# Routing by Host, keys, Azure error bodies, JSON replies and usage
# shapes, SSE framing with and without include_usage, pacing (TTFT and
# tokens per second), keep-alive, chunked request bodies, live updates.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/../lib";
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;

my $ctl = free_port();
my $shared = free_port();      # main and other share a port, Host decides
my %dep = (
    main  => { port => $shared, api_key => 'k-main', bearer => 't-main' },
    other => { port => $shared, api_key => 'k-other' },
    slow  => { port => free_port(), api_key => 'k-slow', ttft_ms => [2000, 2000],
               tokens_per_s => 40, completion_tokens => 40 },
);
my @deployments;
for my $name (sort keys %dep) {
    my $d = $dep{$name};
    %$d = (name => $name, host => "res-$name.openai.azure.com",
           deployment => 'gpt-4o', model => 'gpt-4o-2024-11-20',
           ttft_ms => [0, 0], tokens_per_s => 1000, completion_tokens => 6,
           tpm => 60000, %$d);
    push @deployments, $d;
}
$t->start_sim({ control_port => $ctl, deployments => \@deployments },
              '--speed', 10);

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $hello = json_encode({ messages => [ { role => 'user', content => 'hello' } ],
                          max_tokens => 10 });

sub call {
    my ($name, $uri, $body, %hdr) = @_;
    my $d = $dep{$name};
    my $host = delete $hdr{Host} // $d->{host};
    %hdr = ('api-key' => $d->{api_key}, %hdr);
    delete $hdr{$_} for grep { !defined $hdr{$_} } keys %hdr;
    my ($st, $h, $b) = LLMTest::post_host($d->{port}, $host, $uri,
                                          ref $body ? json_encode($body) : $body,
                                          %hdr);
    my $j = eval { json_decode($b) };
    return ($st, $h, $j, $b);
}

sub remaining { (call('main', $chat, $hello))[1]{'x-ratelimit-remaining-tokens'} }

###########################################################################
# routing, keys and Azure's error bodies

{
    my ($st, $h, $j, $b) = call('main', $chat, $hello);
    is($st, 200, 'chat completion');
    is($h->{'content-type'}, 'application/json', 'JSON content type');
    is($h->{'x-ms-region'}, 'main', 'x-ms-region names the deployment');
    like($h->{'apim-request-id'}, qr/^[0-9a-f-]{36}$/, 'apim-request-id');
    like($h->{'x-request-id'}, qr/^[0-9a-f-]{36}$/, 'x-request-id');
    for (qw(remaining-tokens remaining-requests limit-tokens limit-requests)) {
        like($h->{"x-ratelimit-$_"}, qr/^\d+$/, "x-ratelimit-$_ on 200");
    }
    is($j->{object}, 'chat.completion', 'object');
    is($j->{model}, 'gpt-4o-2024-11-20', 'model');
    is($j->{choices}[0]{message}{role}, 'assistant', 'assistant message');
    is($j->{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
    is_deeply($j->{usage}{prompt_tokens_details}, { audio_tokens => 0, cached_tokens => 0 },
              'prompt_tokens_details.cached_tokens 0');
    is($j->{usage}{completion_tokens_details}{reasoning_tokens}, 0, 'reasoning_tokens 0');
    is($j->{usage}{prompt_tokens}, 9, 'prompt tokens: 3 + user 1 + hello 2 + 3');
    is($j->{usage}{completion_tokens}, 6, 'completion_tokens as configured');
    is($j->{usage}{total_tokens}, 15, 'total_tokens');
    is($j->{prompt_filter_results}[0]{prompt_index}, 0, 'prompt_filter_results');

    ($st, $h, $j) = call('main', $chat, { messages => [ { role => 'user', content => 'hello' } ],
                                          max_tokens => 4 });
    is($j->{usage}{completion_tokens}, 4, 'reply length = min(max_tokens, completion_tokens)');
    is($j->{choices}[0]{finish_reason}, 'length', 'finish_reason length');
    is($j->{choices}[0]{message}{content}, 'The quick brown fox', 'one word per token');

    my $before = remaining();

    ($st, $h, $j, $b) = call('main', $chat, $hello, 'api-key' => undef);
    is($st, 401, 'no key: 401');
    is($j->{error}{code}, '401', '401 code');
    like($j->{error}{message}, qr/^Access denied due to invalid subscription key or wrong API endpoint\./,
         '401 message');
    is($h->{'x-ratelimit-remaining-tokens'}, $before, '401 carries remaining tokens');

    ($st) = call('main', $chat, $hello, 'api-key' => 'k-other');
    is($st, 401, "another deployment's key: 401");
    ($st) = call('main', $chat, $hello, 'api-key' => undef, Authorization => 'Bearer t-main');
    is($st, 200, 'bearer token: 200');
    ($st) = call('main', $chat, $hello, 'api-key' => undef, Authorization => 'Bearer nope');
    is($st, 401, 'wrong bearer: 401');
    ($st) = call('main', $chat, $hello, 'api-key' => undef, Authorization => 'Bearer k-main');
    is($st, 401, 'key as bearer outside v1: 401');
    ($st, $h, $j) = call('main', '/openai/v1/chat/completions',
                         { model => 'gpt-4o', messages => [ { role => 'user', content => 'hi' } ],
                           max_tokens => 5 },
                         'api-key' => undef, Authorization => 'Bearer k-main');
    is($st, 200, 'v1: the key as a bearer token, deployment from "model"');
    is($h->{'x-ms-region'}, 'main', 'v1: routed by Host');
    my $after_v1 = $h->{'x-ratelimit-remaining-tokens'};

    ($st, $h, $j, $b) = call('main', $chat, $hello, Host => 'res-nowhere.openai.azure.com');
    is($st, 404, 'wrong Host: 404');
    is($b, '{"error":{"code":"404","message":"Resource not found"}}', 'wrong Host: body');

    ($st, $h, $j) = call('main', '/openai/deployments/gpt-5/chat/completions?api-version=2024-10-21',
                         $hello);
    is($st, 404, 'unknown deployment: 404');
    is($j->{error}{code}, 'DeploymentNotFound', 'DeploymentNotFound');
    ($st, $h, $j) = call('main', '/openai/v1/chat/completions',
                         { model => 'gpt-5', messages => [ { role => 'user', content => 'hi' } ] });
    is($j->{error}{code}, 'DeploymentNotFound', 'v1: unknown model is DeploymentNotFound');

    ($st) = call('main', '/openai/deployments/gpt-4o/chat/completions', $hello);
    is($st, 404, 'missing api-version: 404');
    ($st) = call('main', '/openai/deployments/gpt-4o/images?api-version=2024-10-21', $hello);
    is($st, 404, 'unknown operation: 404');

    ($st, $h, $j) = call('main', $chat, '{"messages": [');
    is($st, 400, 'malformed JSON: 400');
    ok(exists $j->{error}{message} && exists $j->{error}{code}, 'malformed JSON: Azure error shape');
    is($h->{'x-ratelimit-remaining-tokens'}, $after_v1,
       '400 carries remaining tokens; nothing charged since the last 200');
    ($st, $h, $j) = call('main', $chat, { max_tokens => 5 });
    is($st, 400, 'no messages: 400');
    is($j->{error}{param}, 'messages', 'no messages: param');

    my $so = { messages => [ { role => 'user', content => 'hi' } ], max_tokens => 5,
               stream => JSON::PP::true(),
               stream_options => { include_usage => JSON::PP::true() } };
    ($st, $h, $j) = call('main', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01', $so);
    is($st, 400, 'stream_options before api-version 2024-09-01-preview: 400');
    like($j->{error}{message}, qr/stream_options/, 'names stream_options');
    ($st) = call('main', '/openai/deployments/gpt-4o/chat/completions?api-version=2024-09-01-preview', $so);
    is($st, 200, 'stream_options with 2024-09-01-preview: 200');

    # bearer 200: 13, v1 200: 2 + 5, stream_options 200: 2 + 5, this one: 13
    is(remaining(), $before - 13 - 7 - 7 - 13, 'only the answered requests were charged');

    # the same port, another Host: another deployment with its own key
    ($st, $h) = call('other', $chat, $hello);
    is($st, 200, 'shared port: Host chooses the other deployment');
    is($h->{'x-ms-region'}, 'other', 'shared port: x-ms-region');
    ($st) = call('other', $chat, $hello, 'api-key' => 'k-main');
    is($st, 401, "shared port: main's key refused by other");

    my $s = $t->sim_stats;
    my $m = $s->{deployments}{main};
    my $o = $s->{deployments}{other};
    is($o->{api_keys}{'k-main'}, 1, 'stats: a key sent to the wrong deployment is recorded');
    is($o->{api_keys}{'k-other'}, 1, 'stats: api_keys');
    is($m->{bearers}{'t-main'}, 1, 'stats: bearers');
    is($m->{hosts}{'res-main.openai.azure.com'} + 0 > 10, 1, 'stats: hosts');
    is($s->{unrouted}{hosts}{'res-nowhere.openai.azure.com'}, 1,
       'stats: a Host no deployment owns is counted apart');
    is($m->{paths}{'/openai/v1/chat/completions'}, 2, 'stats: paths');
    is($m->{api_versions}{'2024-06-01'}, 1, 'stats: api_versions');
    is($m->{status}{401}, 4, 'stats: status 401');
    is($m->{status}{404}, 4, 'stats: status 404');
    is($m->{status}{400}, 3, 'stats: status 400');
    # five "hello" (3 + 1 + 2 + 3) and two "hi" (3 + 1 + 1 + 3) answered
    is($m->{prompt_tokens}, 9 * 5 + 8 * 2, 'stats: reported prompt tokens');
}

###########################################################################
# other operations

{
    my ($st, $h, $j) = call('main', '/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21',
                            { input => [ 'one', 'two' ] });
    is($j->{object}, 'list', 'embeddings: list');
    is(scalar @{ $j->{data} }, 2, 'embeddings: one vector per input');
    is_deeply([ sort keys %{ $j->{usage} } ], [ 'prompt_tokens', 'total_tokens' ],
              'embeddings: usage {prompt_tokens, total_tokens}');

    ($st, $h, $j) = call('main', '/openai/deployments/gpt-4o/completions?api-version=2024-10-21',
                         { prompt => 'Say this', max_tokens => 3 });
    is($j->{object}, 'text_completion', 'legacy completions');
    is($j->{choices}[0]{text}, 'The quick brown', 'legacy completions: text');
    is($j->{usage}{completion_tokens}, 3, 'legacy completions: usage');

    ($st, $h, $j) = call('main', '/openai/responses?api-version=2025-04-01-preview',
                         { model => 'gpt-4o', input => 'hello', instructions => 'Be brief.' });
    is($st, 200, 'Responses API on /openai/responses');
    is($j->{object}, 'response', 'Responses API: object');
    is($j->{output}[0]{content}[0]{type}, 'output_text', 'Responses API: output_text');
    is_deeply([ sort keys %{ $j->{usage} } ],
              [ qw(input_tokens input_tokens_details output_tokens output_tokens_details total_tokens) ],
              'Responses API: usage shape');
    is($j->{usage}{input_tokens}, (3 + 2 + 3) + (3 + 1 + 2) + 3,
       'Responses API: instructions count as a system message');
}

###########################################################################
# SSE framing

sub stream_body { { messages => [ { role => 'user', content => 'hello' } ],
                    stream => JSON::PP::true(), @_ } }

{
    my ($st, $h, $j, $b) = call('main', $chat, stream_body(max_tokens => 10));
    is($st, 200, 'stream: 200');
    like($h->{'content-type'}, qr{^text/event-stream}, 'stream: text/event-stream');
    is($h->{'transfer-encoding'}, 'chunked', 'stream: chunked');
    is($h->{'x-accel-buffering'}, 'no', 'stream: x-accel-buffering no');
    ok($h->{'x-ratelimit-remaining-tokens'} =~ /^\d+$/, 'stream: remaining tokens');
    unlike($b, qr/\r/, 'stream: LF line ends');
    like($b, qr/\A(data: [^\n]+\n\n)+\z/, 'stream: data: lines, a blank line after each');

    my @ev = LLMTest::sse_events($b);
    is($ev[-1]{data}, '[DONE]', 'stream: [DONE] last');
    my @js = map { json_decode($_->{data}) } @ev[0 .. $#ev - 1];
    is_deeply($js[0]{choices}, [], 'first event: choices []');
    is($js[0]{id}, '', 'first event: empty id');
    is($js[0]{created}, 0, 'first event: created 0');
    ok($js[0]{prompt_filter_results}, 'first event: prompt_filter_results');
    is(scalar(grep { exists $_->{usage} } @js), 0, 'no usage member without include_usage');
    my @deltas = grep { @{ $_->{choices} } && defined $_->{choices}[0]{delta}{content}
                        && length $_->{choices}[0]{delta}{content} } @js;
    is(scalar @deltas, 6, 'one delta event per token');
    is(join('', map { $_->{choices}[0]{delta}{content} } @deltas), 'The quick brown fox jumps over',
       'deltas carry the reply');
    my @fin = grep { @{ $_->{choices} } && $_->{choices}[0]{finish_reason} } @js;
    is(scalar @fin, 1, 'one chunk with finish_reason');
    is($fin[0]{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
    is($js[-1], $fin[0], 'finish chunk is the last JSON event');
    is($js[1]{object}, 'chat.completion.chunk', 'chunk object');

    ($st, $h, $j, $b) = call('main', $chat, stream_body(max_tokens => 10,
                             stream_options => { include_usage => JSON::PP::true() }));
    @ev = LLMTest::sse_events($b);
    is($ev[-1]{data}, '[DONE]', 'include_usage: [DONE] last');
    @js = map { json_decode($_->{data}) } @ev[0 .. $#ev - 1];
    my $u = pop @js;
    is_deeply($u->{choices}, [], 'include_usage: usage chunk has choices []');
    is($u->{usage}{prompt_tokens}, 9, 'include_usage: prompt_tokens');
    is($u->{usage}{completion_tokens}, 6, 'include_usage: completion_tokens');
    is($u->{usage}{total_tokens}, 15, 'include_usage: total_tokens');
    is($u->{usage}{prompt_tokens_details}{cached_tokens}, 0, 'include_usage: cached_tokens');
    is(scalar(grep { exists $_->{usage} && !defined $_->{usage} } @js), scalar @js,
       'include_usage: every other chunk has "usage": null');
    like($b, qr/"usage":null/, 'include_usage: literally null');
    ok($js[-1]{choices}[0]{finish_reason}, 'include_usage: finish chunk before the usage chunk');

    # n = 2: deltas for both choices
    ($st, $h, $j, $b) = call('main', $chat, stream_body(max_tokens => 3, n => 2));
    @js = map { json_decode($_->{data}) } grep { $_->{data} ne '[DONE]' } LLMTest::sse_events($b);
    my %per;
    $per{ $_->{choices}[0]{index} } .= $_->{choices}[0]{delta}{content} // ''
        for grep { @{ $_->{choices} } } @js;
    is_deeply(\%per, { 0 => 'The quick brown', 1 => 'The quick brown' }, 'n=2: two choices streamed');

    # legacy completions stream
    ($st, $h, $j, $b) = call('main', '/openai/deployments/gpt-4o/completions?api-version=2024-10-21',
                             { prompt => 'x', max_tokens => 2, stream => JSON::PP::true() });
    @js = map { json_decode($_->{data}) } grep { $_->{data} ne '[DONE]' } LLMTest::sse_events($b);
    is(join('', map { $_->{choices}[0]{text} // '' } grep { @{ $_->{choices} } } @js), 'The quick',
       'legacy completions stream: text deltas');

    # Responses API stream: named events, usage in response.completed
    ($st, $h, $j, $b) = call('main', '/openai/v1/responses',
                             { model => 'gpt-4o', input => 'hello', stream => JSON::PP::true() });
    @ev = LLMTest::sse_events($b);
    is($ev[0]{event}, 'response.created', 'responses stream: response.created first');
    is(scalar(grep { ($_->{event} // '') eq 'response.output_text.delta' } @ev), 6,
       'responses stream: one delta per token');
    is($ev[-1]{event}, 'response.completed', 'responses stream: response.completed last');
    my $r = json_decode($ev[-1]{data});
    is($r->{response}{usage}{output_tokens}, 6, 'responses stream: usage in response.completed');
    is($r->{response}{usage}{input_tokens}, 9, 'responses stream: input_tokens');

    # HTTP/1.0: no chunked encoding, the end of the connection ends the stream
    my $raw = LLMTest::raw_post($dep{main}{host}, $chat, json_encode(stream_body()),
                                'api-key' => 'k-main');
    $raw =~ s{ HTTP/1\.1\r\n}{ HTTP/1.0\r\n};
    ($st, $h, $b) = http_request($shared, $raw);
    ok(!exists $h->{'transfer-encoding'}, 'HTTP/1.0 client: not chunked');
    like($b, qr/data: \[DONE\]\n\n\z/, 'HTTP/1.0 client: whole stream until close');

    my $m = $t->sim_stats->{deployments}{main};
    is($m->{streams}, 7, 'stats: streams');
    is($m->{include_usage}, 2, 'stats: streams with include_usage');
}

###########################################################################
# pacing: TTFT 2000 ms and 40 tokens at 40/s, at --speed 10 -> 0.2 s + 0.1 s

# send a request and timestamp every read: (status line time, [event
# text, arrival time]...) relative to the send
sub timed_stream {
    my ($port, $raw) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    binmode $s;
    my $t0 = time;
    print $s $raw;
    my ($buf, @reads) = ('');
    my $sel = IO::Select->new($s);
    while ($sel->can_read(5)) {
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        push @reads, [ length $buf, time - $t0 ];
        last if $buf =~ /\r\n0\r\n\r\n\z/;
    }
    my @events;
    while ($buf =~ /(data: [^\n]*)\n\n/g) {
        my $end = pos $buf;
        my ($at) = map { $_->[1] } grep { $_->[0] >= $end } @reads;
        push @events, [ $1, $at ];
    }
    return ($reads[0][1], @events);
}

{
    my $body = json_encode(stream_body(max_tokens => 100));
    my ($ttfb, @ev) = timed_stream($dep{slow}{port},
        LLMTest::raw_post($dep{slow}{host}, $chat, $body, 'api-key' => 'k-slow'));
    ok($ttfb >= 0.19 && $ttfb < 0.6, sprintf('stream: first byte after the TTFT (%.3f s)', $ttfb));
    my @tok = grep { $_->[0] =~ /"delta":\{"content":"[^"]+"/ } @ev;
    is(scalar @tok, 40, 'stream: 40 tokens');
    my $spread = $tok[-1][1] - $tok[0][1];
    ok($spread >= 0.08 && $spread < 0.5,
       sprintf('stream: tokens paced at the generation rate (%.3f s for 39 gaps)', $spread));
    ok($tok[0][1] - $ttfb < 0.05, 'stream: first token with the first event');
    my @mid = grep { $_->[1] > $tok[0][1] + 0.02 && $_->[1] < $tok[-1][1] - 0.02 } @tok;
    ok(@mid >= 10, 'stream: events flushed as produced, not at the end (' . @mid . ' in between)');

    my $t0 = time;
    my ($st) = call('slow', $chat, { messages => [ { role => 'user', content => 'x' } ] });
    my $dt = time - $t0;
    is($st, 200, 'JSON reply');
    ok($dt >= 0.29 && $dt < 0.8, sprintf('JSON reply after TTFT + tokens / rate (%.3f s)', $dt));
}

###########################################################################
# keep-alive and chunked request bodies

{
    my $before = $t->sim_stats->{deployments}{other}{connections};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $shared)
        or die "connect: $!";
    binmode $s;
    my $req = LLMTest::raw_post($dep{other}{host}, $chat, $hello, 'api-key' => 'k-other');
    $req =~ s/Connection: close\r\n//;
    my @st;
    for my $i (1 .. 3) {
        my $r = $req;
        if ($i == 3) {       # a chunked body, in three chunks
            my @parts = (substr($hello, 0, 7), substr($hello, 7, 20), substr($hello, 27));
            $r =~ s/Content-Length: \d+\r\n/Transfer-Encoding: chunked\r\n/;
            $r =~ s/\r\n\r\n.*\z/"\r\n\r\n" . join('', map { sprintf("%x\r\n%s\r\n", length, $_) } @parts)
                                . "0\r\n\r\n"/se;
        }
        print $s $r;
        my $buf = '';
        while (!LLMTest::response_complete($buf)) {
            sysread($s, $buf, 65536, length $buf) or last;
        }
        my ($status, $h, $b) = LLMTest::parse_response($buf);
        push @st, $status;
        is(json_decode($b)->{usage}{prompt_tokens}, 9, "keep-alive request $i answered in full")
            if $status == 200;
    }
    close $s;
    is("@st", '200 200 200', 'three requests on one connection (the last one chunked)');
    is($t->sim_stats->{deployments}{other}{connections} - $before, 1,
       'stats: one connection');
}

###########################################################################
# live updates

{
    my $new = $t->sim_update(main => { tpm => 12000 });
    is($new->{tpm}, 12000, 'update: returns the new settings');
    my ($st, $h) = call('main', $chat, $hello);
    is($h->{'x-ratelimit-limit-tokens'}, 12000, 'update: tpm changed live');
    is($h->{'x-ratelimit-limit-requests'}, 12, 'update: the request limit follows tpm');
    my ($cs) = http_post($ctl, '/sim/deployments/main', '{"port": 1}');
    is($cs, 400, 'update: port cannot change');
    ($cs) = http_post($ctl, '/sim/deployments/nope', '{}');
    is($cs, 404, 'update: unknown deployment');
}

$t->done;
