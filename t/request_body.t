#!/usr/bin/perl

# llm_route reads the whole client body (memory, temp file, chunked),
# estimates its tokens, refuses what it cannot parse with Azure-style
# errors and otherwise proxies the request unchanged.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Digest::MD5 qw(md5_hex);
use MIME::Base64 qw(encode_base64);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;
my $port = free_port();
my $dir = $t->dir;

$t->start_nginx(<<"END", ports => [$port]);
    log_format llm '\$request_uri \$status m=\$llm_model e=\$llm_prompt_estimate';
    access_log $dir/llm.log llm;
    client_max_body_size 1m;

    server {
        listen 127.0.0.1:$port;

        location /openai/ {
            llm_route;
            llm_max_body_size 64k;
            client_body_buffer_size 1k;
            add_header X-LLM-Model \$llm_model always;
            add_header X-LLM-Estimate \$llm_prompt_estimate always;
            add_header X-LLM-Reserve \$llm_reserve always;
            add_header X-LLM-Prompt \$llm_prompt_tokens always;
            add_header X-LLM-Tokens \$llm_tokens_estimate always;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /gzip/ {
            llm_route;
            gzip on;
            gzip_types application/json;
            gzip_min_length 1;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /reserve/ {
            llm_route;
            llm_completion_reserve 100;
            add_header X-LLM-Estimate \$llm_prompt_estimate always;
            add_header X-LLM-Reserve \$llm_reserve always;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /unbuffered/ {
            llm_route;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            add_header X-LLM-Estimate \$llm_prompt_estimate always;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /plain/ {
            add_header X-LLM-Estimate "[\$llm_prompt_estimate]" always;
            proxy_pass http://127.0.0.1:$echo;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

sub post_json {
    my ($uri, $body, %hdr) = @_;
    my ($st, $h, $b) = http_post($port, $uri, $body, %hdr);
    my $j = eval { json_decode($b) };
    return ($st, $h, $j, $b);
}

# "user" + "Hello world!" = 16 characters -> 4, + 3 framing + 3 reply = 10;
# max_tokens 100 x n 2: the cost guessed is the prompt's tokens + 200
my $body = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
         . '"content":"Hello world!"}],"max_tokens":100,"n":2}';
my ($st, $h, $j) = post_json($chat, $body);
is($st, 200, 'chat request proxied');
is($h->{'x-llm-model'}, 'gpt-4o-mini', '$llm_model from the body');
is($h->{'x-llm-estimate'}, 10, '$llm_prompt_estimate: characters / 4');
is($h->{'x-llm-reserve'}, 100, '$llm_reserve: max_tokens');
is($h->{'x-llm-tokens'} - $h->{'x-llm-prompt'}, 200,
   '$llm_tokens_estimate: prompt + max_tokens x n');
is($j->{body_md5}, md5_hex($body), 'body forwarded unchanged');
is($j->{uri}, $chat, 'URI forwarded unchanged');
is($j->{method}, 'POST', 'method forwarded');

# characters, not bytes: "user" + 5 kana = 9 -> 3, + 6 framing = 9
$body = '{"messages":[{"role":"user","content":"'
      . "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf"
      . '"}],"max_completion_tokens":50,"max_tokens":999}';
($st, $h, $j) = post_json($chat, $body);
is($h->{'x-llm-estimate'}, 9, 'UTF-8 characters, not bytes');
is($h->{'x-llm-reserve'}, 50, 'max_completion_tokens wins over max_tokens');
is($h->{'x-llm-model'}, 'gpt-4o', '$llm_model falls back to the deployment');

# the deployment is after the first "/deployments/", in any case
for my $case (['/openai/Deployments/gpt-4/chat/completions', 'gpt-4'],
              ['/openai/DEPLOYMENTS/o1/chat/completions', 'o1'],
              ['/openai/deploymentsx/deployments/a/deployments/b/chat', 'a'],
              ['/openai/deployments', ''], ['/openai/deployments/', ''])
{
    ($st, $h) = post_json($case->[0], '{"messages":[]}');
    is($h->{'x-llm-model'} // '', $case->[1],
       "deployment of $case->[0]: '$case->[1]'");
}

# content parts: text counts, image parts do not count as characters
$body = '{"messages":[{"role":"user","content":[{"type":"text",'
      . '"text":"abcdefgh"},{"type":"image_url","image_url":{"url":'
      . '"data:image/png;base64,' . ('A' x 4000) . '"}}]}],"max_tokens":1}';
($st, $h) = post_json($chat, $body);
is($h->{'x-llm-estimate'}, 3 + 6, 'base64 image is not counted as text');

# no max_tokens: the default reserve (640), and a configured one
$body = '{"messages":[{"role":"system","content":"abcdef"},'
      . '{"role":"user","content":"abcd","name":"bob"}]}';
# system(6)+abcdef(6)+user(4)+abcd(4)+bob(3) = 23 -> 6, + 2*3 + 3 = 15
($st, $h) = post_json($chat, $body);
is($h->{'x-llm-estimate'}, 15, 'system, name and framing');
is($h->{'x-llm-reserve'}, 640, 'default completion reserve');
($st, $h) = post_json('/reserve/x', $body);
is($h->{'x-llm-reserve'}, 100, 'llm_completion_reserve');

# embeddings reserve nothing
($st, $h) = post_json('/openai/deployments/emb/embeddings',
                      '{"input":["abcd","efgh"]}');
is($h->{'x-llm-estimate'}, 2, 'embeddings: characters / 4');
is($h->{'x-llm-reserve'}, 0, 'embeddings: no reserve');

# audio parts: one token per 100 ms, the duration from the WAV or MP3
# header; an unknown format as 32 kbit/s; the base64 is not characters
sub with_audio {
    my ($data, $format) = @_;
    my $b = '{"messages":[{"role":"user","content":[{"type":"text",'
          . '"text":"abcd"}' . (defined $data ? ',{"type":"input_audio",'
          . '"input_audio":{"data":"' . encode_base64($data, '')
          . '","format":"' . $format . '"}}' : '') . ']}],"max_tokens":1}';
    my ($st, $h) = post_json($chat, $b);
    return ($h->{'x-llm-prompt'}, $h->{'x-llm-estimate'});
}

# 8 kHz, 8 bits, mono: 8000 bytes a second; a LIST chunk before the data
my $wav = sub {
    my ($secs, $list) = @_;
    my $data = "\x80" x int(8000 * $secs);
    my $fmt = pack('v v V V v v', 1, 1, 8000, 8000, 1, 8);
    my $chunks = 'fmt ' . pack('V', length $fmt) . $fmt
               . ($list ? 'LIST' . pack('V', length $list) . $list : '')
               . 'data' . pack('V', length $data) . $data;
    return 'RIFF' . pack('V', 4 + length $chunks) . 'WAVE' . $chunks;
};
# MPEG-1 layer III at 128 kbit/s (16000 bytes a second) after an ID3 tag
my $mp3 = sub {
    my ($secs) = @_;
    my $tag = 'x' x 300;
    return 'ID3' . "\x04\x00\x00" . pack('C4', 0, 0, 300 >> 7, 300 & 0x7f)
         . $tag . "\xff\xfb\x90\x64" . ("\x00" x (16000 * $secs - 4));
};
my ($none, $chars) = with_audio(undef);
my ($got, $c) = with_audio($wav->(2.5), 'wav');
is($got - $none, 25, 'WAV audio of 2.5 s: 25 tokens');
is($c, $chars, 'the audio is not characters');
($got) = with_audio($wav->(1.04, 'INFOjunk'), 'wav');
is($got - $none, 11, 'WAV after a LIST chunk, 1.04 s: 11 tokens');
($got) = with_audio($mp3->(1.5), 'mp3');
is($got - $none, 15, 'MP3 at 128 kbit/s, 1.5 s: 15 tokens');
($got) = with_audio('z' x 8000, 'flac');
is($got - $none, 20, 'unknown audio, 8000 bytes: 2 s at 32 kbit/s');
my $silent = '{"messages":[{"role":"user","content":[{"type":"input_audio",'
      . '"input_audio":{"data":"@@not base64@@","format":"wav"}}]}]}';
($st, $h) = post_json($chat, $silent);
is($st, 200, 'audio that is not base64 is still proxied');

# Responses API
($st, $h) = post_json('/openai/v1/responses',
                      '{"model":"gpt-5","instructions":"abcd",'
                      . '"input":"efgh","max_output_tokens":10}');
is($h->{'x-llm-estimate'}, 2, 'Responses API: instructions, input');
is($h->{'x-llm-reserve'}, 10, 'Responses API: max_output_tokens');
is($h->{'x-llm-model'}, 'gpt-5', 'v1 model from the body');

# a body spilled to a temp file (client_body_buffer_size 1k)
my $long = 'x' x 40000;
$body = '{"messages":[{"role":"user","content":"' . $long . '"}],'
      . '"max_tokens":7}';
($st, $h, $j) = post_json($chat, $body);
is($st, 200, 'temp file body proxied');
is($h->{'x-llm-estimate'}, int((40004 + 3) / 4) + 6, 'temp file estimate');
is($j->{body_md5}, md5_hex($body), 'temp file body forwarded unchanged');
like($t->error_log, qr/a client request body is buffered to a temporary/,
     'the body really was in a temp file');

# chunked, in several chunks, small and spilled to a file
for my $size (100, 30000) {
    my $b = '{"messages":[{"role":"user","content":"' . ('y' x $size)
          . '"}],"max_tokens":5}';
    my @chunks = unpack '(a777)*', $b;
    my $raw = "POST $chat HTTP/1.1\r\nHost: localhost\r\n"
            . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            . join('', map { sprintf("%x\r\n%s\r\n", length, $_) } @chunks)
            . "0\r\n\r\n";
    my ($cst, $ch, $cb) = http_request($port, $raw);
    my $cj = json_decode($cb);
    is($cst, 200, "chunked body of $size proxied");
    is($ch->{'x-llm-estimate'}, int(($size + 4 + 3) / 4) + 6,
       "chunked body of $size estimated");
    is($cj->{body_md5}, md5_hex($b), "chunked body of $size unchanged");
}

# conversations of many sizes and shapes: the parse's pool must hold
# every node and string whatever the body's length (it once did not)
my $failed = 0;
for my $i (0 .. 60) {
    my @msgs = map { { role => $_ % 2 ? 'assistant' : 'user',
                       content => ('w' x (20 + ($i * 7 + $_ * 13) % 190)) } }
               1 .. 20 + $i * 2;
    my $b = json_encode({ messages => \@msgs, max_tokens => 1 });
    my ($cst, $ch) = http_post($port, $chat, $b);
    $failed++ unless $cst == 200 && $ch->{'x-llm-estimate'};
}
is($failed, 0, '61 conversations of 20 to 140 messages all parsed');

# proxy_request_buffering off still gets the whole, unchanged body
($st, $h, $j) = post_json('/unbuffered/x', $body);
is($st, 200, 'unbuffered location proxied');
is($j->{body_md5}, md5_hex($body), 'unbuffered body unchanged');
is($h->{'x-llm-estimate'}, int((40004 + 3) / 4) + 6, 'unbuffered estimate');

# the backend is asked for identity (a gzip reply cannot be scanned for
# usage); nginx's own gzip still answers the client as it asked
($st, $h, my $zipped) = http_post($port, '/gzip/x', $body,
                               'Accept-Encoding' => 'gzip, br');
is($st, 200, 'Accept-Encoding: gzip proxied');
is($h->{'content-encoding'}, 'gzip', 'the client gets gzip from nginx');
gunzip(\$zipped => \my $plain) or die $GunzipError;
$j = json_decode($plain);
is($j->{headers}{'accept-encoding'}, 'identity',
   'the backend is asked for identity');

# GET passes untouched and is not estimated
($st, $h, $j) = (http_get($port, '/openai/models?api-version=2024-10-21'));
is($st, 200, 'GET proxied');
ok(!defined $h->{'x-llm-estimate'}, 'GET is not estimated');

# no llm_route: variables are empty
($st, $h) = post_json('/plain/x', '{"messages":[]}');
is($h->{'x-llm-estimate'}, '[]', 'no llm_route, no estimate');

my $before = () = $t->echo_requests;

# malformed and non-object JSON, empty body: 400, Azure's shape, not proxied
# and an object with bytes after it: a second object, or anything else
# (an object followed by blanks is JSON)
for my $bad ('{"messages": [', '[1,2,3]', '"text"', 'not json at all', '',
             '{"messages":[],"max_tokens":5}{"max_tokens":99999}',
             '{"messages":[]} garbage', "{\"messages\":[]}\n,",
             "{\"messages\":[]}\x00", "{\"messages\":[]} \x0c")
{
    my ($bst, $bh, $bj, $raw) = post_json($chat, $bad);
    is($bst, 400, "400 for '$bad'");
    is($bh->{'content-type'}, 'application/json', "JSON error for '$bad'");
    is($bj->{error}{code}, 'BadRequest', "Azure error shape for '$bad'")
        or diag $raw;
    ok(length $bj->{error}{message}, "error message for '$bad'");
}
like($t->error_log, qr/\[info\].*llm: malformed JSON in client body/,
     'malformed JSON logged at info');

# over llm_max_body_size: by Content-Length, and chunked
$body = '{"messages":[{"role":"user","content":"' . ('z' x 70000) . '"}]}';
($st, $h, $j) = post_json($chat, $body);
is($st, 413, '413 by Content-Length');
is($j->{error}{code}, 'RequestTooLarge', '413 in Azure shape');

my $raw = "POST $chat HTTP/1.1\r\nHost: localhost\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . join('', map { sprintf("%x\r\n%s\r\n", length, $_) }
                   unpack '(a4096)*', $body)
        . "0\r\n\r\n";
($st, $h, my $b) = http_request($port, $raw);
is($st, 413, '413 for a chunked body over the limit');
like($b, qr/"RequestTooLarge"/, 'chunked 413 in Azure shape');

# a compressed body cannot be counted
($st, $h, $j) = post_json($chat, "\x1f\x8b\x08\x00garbage",
                          'Content-Encoding' => 'gzip');
is($st, 415, 'gzip body refused');
is($j->{error}{code}, 'UnsupportedContentEncoding', '415 in Azure shape');

my $after = () = $t->echo_requests;
is($after, $before, 'no refused request reached the backend');
($st) = post_json($chat, "\n {\"messages\":[]} \r\n\t");
is($st, 200, 'blanks around the object are JSON');

# what a model reads is counted wherever the body puts it: a tool call's
# arguments, the Responses API's function calls and their outputs (each
# was 0 or a few tokens, and a consumer's tpm= was passed by sending a
# prompt there)

my $text = 'the quick brown fox jumps over the lazy dog ' x 90;
my ($base) = (post_json($chat, json_encode({ messages => [
    { role => 'user', content => $text } ] })))[1]{'x-llm-estimate'};
cmp_ok($base, '>', 800, "a text of ${\ length $text} characters: $base");

my %where = (
    'a tool call\'s arguments' => [ $chat, { messages => [
        { role => 'user', content => 'go' },
        { role => 'assistant', content => undef, tool_calls => [
            { id => 'c1', type => 'function',
              function => { name => 'f', arguments => $text } } ] },
        { role => 'tool', tool_call_id => 'c1', content => 'done' } ] } ],
    'a legacy function_call\'s arguments' => [ $chat, { messages => [
        { role => 'assistant', content => undef,
          function_call => { name => 'f', arguments => $text } } ] } ],
    'a Responses function_call_output' => [ '/openai/v1/responses',
        { model => 'gpt-4o', input => [
            { type => 'function_call_output', call_id => 'c1',
              output => $text } ] } ],
    'a Responses function_call' => [ '/openai/v1/responses',
        { model => 'gpt-4o', input => [
            { type => 'function_call', call_id => 'c1', name => 'f',
              arguments => $text } ] } ],
);

for my $name (sort keys %where) {
    my ($uri, $b) = @{ $where{$name} };
    my ($st, $h) = post_json($uri, json_encode($b));
    my $e = $h->{'x-llm-estimate'} // 0;
    ok($st == 200 && $e >= 0.9 * $base && $e <= 1.2 * $base + 20,
       "$name: counted ($e, the text alone $base)");
}

$t->stop_nginx;
my $log = $t->read_file('llm.log');
like($log, qr{chat/completions\S* 200 m=gpt-4o-mini e=10$}m,
     'variables in the access log');

$t->done;
