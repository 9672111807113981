#!/usr/bin/perl

# Streams read by the reply scanner's fast path, which passes over the
# strings it has no use for 32 bytes at a time: json-skip compares that
# path with the byte-by-byte reading on random texts cut at random; then,
# through nginx, long streams in several spellings (Azure's, OpenAI's
# with a value of its own in every event, Python's ": ", CRLF,
# Responses-style string deltas, the keys looked for inside texts,
# escapes) each sent at once, in random small pieces and an event a
# read: the usage reported, or the text deltas counted, are those the
# events hold.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $skip = $t->top . '/.build/json-skip';

SKIP: {
    skip 'no json-skip (build/json.sh)', 2 unless -x $skip;
    like(`"$skip" 20000 1`, qr/^ok 20000$/, 'json-skip: 20,000 texts');
    like(`"$skip" 20000 2`, qr/^ok 20000$/, 'json-skip: another 20,000');
}

my $head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
         . "Connection: close\r\n\r\n";

# Azure's chunk, and the same in Python's spacing; with null, as Azure
# sends it to a client that asked for usage: its content filter's
# results and "usage":null in every chunk; wide makes the results that
# many bytes longer (the bytes from one text to the next are kept in 512
# bytes, then in 2,048)
sub chunk {
    my ($text, %o) = @_;
    my $sep = $o{python} ? ': ' : ':';
    my $com = $o{python} ? ', ' : ',';
    my $j = JSON::PP->new->canonical;
    my $t = $j->encode($text);
    my $filter = $o{null} ? '"content_filter_results":{"hate":{"filtered":'
        . 'false,"severity":"safe"},'
        . ($o{wide} ? '"other":"' . ('w' x $o{wide}) . '",' : '')
        . '"self_harm":{"filtered":false,"severity":"safe"}},' : '';
    return 'data: {"id"' . $sep . '"chatcmpl-9xY"' . $com . '"object"' . $sep
        . '"chat.completion.chunk"' . $com . '"created"' . $sep . '1733'
        . $com . '"model"' . $sep . '"gpt-4o-2024-08-06"' . $com
        . '"choices"' . $sep . '[{' . $filter . '"index"' . $sep . '0' . $com
        . '"delta"' . $sep . '{"content"' . $sep . $t . '}' . $com
        . '"logprobs"' . $sep . 'null' . $com . '"finish_reason"' . $sep
        . 'null}]' . ($o{null} ? $com . '"usage"' . $sep . 'null' : '') . '}'
        . ($o{crlf} ? "\r\n\r\n" : "\n\n");
}

my @texts = ('Hello', '', ' world', 'He said "content": "x"', '\\',
             "line\nbreak", '"usage":{"prompt_tokens":99}', '',
             "\x{6f22}\x{5b57}", 'delta', '"', 'tab	here', '{"a":"b"}',
             '\\"', 'x' x 70, 'end');

my $usage = 'data: {"id":"chatcmpl-9xY","object":"chat.completion.chunk",'
    . '"created":1733,"model":"gpt-4o","choices":[],"usage":'
    . '{"prompt_tokens":321,"completion_tokens":45,"total_tokens":366}}'
    . "\n\n";

my (%reply, %want);

sub stream {
    my ($name, $usage_too, %o) = @_;
    my $body = '';
    my $n = 0;
    for my $i (1 .. 3) {
        for my $text (@texts) {
            $body .= chunk($text, %o);
            $n++ if length $text;
        }
    }
    $body .= $usage if $usage_too;
    $body .= $o{crlf} ? "data: [DONE]\r\n\r\n" : "data: [DONE]\n\n";
    $reply{$name} = $head . Encode::encode_utf8($body);
    $want{$name} = $usage_too ? [ 'reported', 321, 45 ] : [ 'counted', $n ];
}

require Encode;
stream('/azure', 1);
stream('/azurecount', 0);
stream('/python', 0, python => 1);
stream('/crlf', 0, crlf => 1);
stream('/pythonusage', 1, python => 1);
stream('/azurenull', 1, null => 1);
stream('/azurenullcount', 0, null => 1);
stream('/pythonnull', 0, null => 1, python => 1);
stream('/wide', 1, null => 1, wide => 400);
stream('/widecount', 0, null => 1, wide => 400);
stream('/widest', 1, null => 1, wide => 2100);

# OpenAI's chunk: its service tier ("default", which starts as "delta"
# does) and fingerprint, "usage":null, and in every chunk an
# "obfuscation" string of random letters and length, so that the bytes
# from one text to the next differ in that value only; $obf is the
# value as JSON, $extra what goes after the choices
sub chunk_openai {
    my ($text, $obf, %o) = @_;
    my $sep = $o{python} ? ': ' : ':';
    my $com = $o{python} ? ', ' : ',';
    my $j = JSON::PP->new->canonical;
    my $choice = '{"index"' . $sep . '0' . $com . '"delta"' . $sep
        . '{"content"' . $sep . $j->encode($text) . '}' . $com
        . '"logprobs"' . $sep . 'null' . $com . '"finish_reason"' . $sep
        . 'null}';
    return 'data: {"id"' . $sep . '"chatcmpl-CvQx3b"' . $com . '"object"'
        . $sep . '"chat.completion.chunk"' . $com . '"created"' . $sep
        . '1765100000' . $com . '"model"' . $sep . '"gpt-4o-2024-08-06"'
        . $com . '"service_tier"' . $sep . '"default"' . $com
        . '"system_fingerprint"' . $sep . '"fp_cbf1785567"' . $com
        . '"choices"' . $sep . '[' . $choice . ($o{two} ? $com . $choice : '')
        . ']' . ($o{extra} // '') . $com . '"usage"' . $sep . 'null' . $com
        . '"obfuscation"' . $sep . $obf . "}\n\n";
}

my @letters = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');

# values the scanner must not take as the same where they are not: an
# escape, keys it looks for, JSON's punctuation, a value past a read, a
# number, null; and, beside a new value, a text more (a second choice)
# or a string "content" after the choices
my @tricky = ('"usage"', '"content"', '"delta"', '"dexyz"', '""', '"a\\"b"',
              '"\\\\"', '"x:y,z}{["', '"' . ('o' x 700) . '"', '12',
              'null', '"co"', '"defau"', '"\\u0041"', '"usage\\""');

sub stream_openai {
    my ($name, $usage_too, %o) = @_;
    my $body = '';
    my $n = 0;
    my $i = 0;
    for my $round (1 .. 3) {
        for my $text (@texts) {
            my $obf = '"' . join('', map { $letters[rand @letters] }
                                     0 .. int rand 16) . '"';
            my %e = (python => $o{python});
            if ($o{keyvalue}) {
                # not JSON: a "value" followed by a colon, as a key is,
                # spelt "usage" once, after a plain text ("end")
                my $k = join('', map { $letters[rand 26] } 1 .. 5);
                $k = 'usage' if $i == 31;
                $obf = qq{"$k":{"prompt_tokens":7,"completion_tokens":9}};
            }
            if ($o{tricky}) {
                $obf = $tricky[$i % @tricky] if $i % 2;
                $e{two} = 1 if $i % 9 == 4;
                $e{extra} = ',"x":"content"' if $i % 11 == 6;
            }
            $body .= chunk_openai($text, $obf, %e);
            $n += ($e{two} ? 2 : 1) if length $text;
            $i++;
        }
    }
    $body .= $usage if $usage_too;
    $body .= "data: [DONE]\n\n";
    $reply{$name} = $head . Encode::encode_utf8($body);
    $want{$name} = $o{keyvalue} ? [ 'reported', 7, 9 ]
                 : $usage_too ? [ 'reported', 321, 45 ] : [ 'counted', $n ];
}

srand 5;
stream_openai('/openai', 1);
stream_openai('/openaicount', 0);
stream_openai('/openaipython', 0, python => 1);
stream_openai('/openaitricky', 0, tricky => 1);
stream_openai('/openaitrickyusage', 1, tricky => 1);
stream_openai('/openaikeyvalue', 0, keyvalue => 1);

# events whose bytes between texts change now and then (the scanner
# passes over bytes the same as the last event's without reading them):
# an id that changes every 7 events, a field of 600 bytes every 11th, a
# "usage": null every 13th, an escape in the model's name every 17th
my $varying = '';
my $nvarying = 0;
for my $i (1 .. 90) {
    my $text = $texts[$i % @texts];
    my $c = chunk($text);
    my $id = int($i / 7);
    $c =~ s/chatcmpl-9xY/chatcmpl-$id/;
    $c =~ s/"object"/"pad":"${\('p' x 600)}","object"/ if $i % 11 == 0;
    $c =~ s/"choices"/"usage":null,"choices"/ if $i % 13 == 0;
    $c =~ s/gpt-4o-2024-08-06/gpt-4o-\\u0032024/ if $i % 17 == 0;
    $varying .= $c;
    $nvarying++ if length $text;
}
$reply{'/varying'} = $head . Encode::encode_utf8($varying . "data: [DONE]\n\n");
$want{'/varying'} = [ 'counted', $nvarying ];

# and gaps that differ in a few bytes only, every other event or at
# random: a pad of 1 to 120 bytes, a created time that ticks
srand 11;
my ($varying2, $nvarying2) = ('', 0);
for my $i (1 .. 120) {
    my $text = $texts[int rand @texts];
    my $c = chunk($text);
    my $pad = 'q' x (1 + int rand 120);
    $c =~ s/"object"/"pad":"$pad","object"/ if $i % 2 || rand() < 0.3;
    $c =~ s/"created":1733/"created":${\(1733 + int($i \/ 4))}/;
    $varying2 .= $c;
    $nvarying2++ if length $text;
}
$reply{'/varying2'} = $head . Encode::encode_utf8($varying2
                                                  . "data: [DONE]\n\n");
$want{'/varying2'} = [ 'counted', $nvarying2 ];

# Responses-style events: the text is the string value of "delta"
my $resp = '';
for my $i (1 .. 30) {
    $resp .= "event: response.output_text.delta\n"
        . 'data: {"type":"response.output_text.delta","item_id":"msg_1",'
        . '"output_index":0,"content_index":0,"delta":"'
        . ($i % 5 ? "w$i" : '') . '"}' . "\n\n";
}
$reply{'/responses'} = $head . $resp;
$want{'/responses'} = [ 'counted', 24 ];

# streams cut at given places, each read a piece of the list: where the
# compare must not pass over a value (a text's own, empty last time; a
# value the record spells as a key, when the next read replays the
# record; a record shorter than the last one's value), the counts are
# those of the plain reading
my %cuts;

sub two_texts {
    my ($a, $b) = @_;
    return 'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",'
        . '"choices":[{"index":0,"delta":{"content":"' . $a . '"}},'
        . '{"index":1,"delta":{"content":"' . $b . '"}}]}' . "\n\n";
}

sub with_value {
    my ($text, $k, $v) = @_;
    return 'data: {"choices":[{"delta":{"content":"' . $text . '"}}],'
        . '"' . $k . '":' . $v . ',"z":1}' . "\n\n";
}

sub cut {
    my ($name, $want, @pieces) = @_;
    $reply{$name} = $head . join '', @pieces;
    $cuts{$name} = [ map { length } @pieces ];
    $want{$name} = $want;
}

cut('/cutempty', [ 'counted', 6 ],
    two_texts('Hi', ''), two_texts('Yo', ''), two_texts('Ok', 'abc'),
    two_texts('Zz', ''), two_texts('Qq', ''), "data: [DONE]\n\n");

cut('/cutreplayusage', [ 'counted', 4 ],
    with_value('A', 'k', '"usage":null') . with_value('B', 'k', '"usage":null')
    . 'data: {"choices":[{"delta":{"content":"C"}}],"k":"abcde"',
    ':{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11},"z":1}'
    . "\n\n" . with_value('D', 'k', '"x"') . "data: [DONE]\n\n");

cut('/cutreplaydelta', [ 'counted', 4 ],
    with_value('A', 'k', '"delta":{}') . with_value('B', 'k', '"delta":{}')
    . 'data: {"choices":[{"delta":{"content":"C"}}],"k":"abcde":',
    '"hello","z":1}' . "\n\n" . with_value('D', 'k', '"x"')
    . "data: [DONE]\n\n");

# a value remembered from one record, then a shorter record: 30 KB in
# one read (the location's buffers are 64 KB), so that a compare past
# the record's end would read past the buffer
{
    my $e = sub {
        'data: {"choices":[{"delta":{"content":"' . $_[0] . '"}}],'
        . '"padpadpadpadpadpadpadpad":1,"obfuscation":"' . $_[1] . '"}'
        . "\n\n";
    };
    cut('/cutstale', [ 'counted', 305 ],
        join '', $e->('T1', 'aaaa'), $e->('T2', 'b' x 10), $e->('T3', 'cc'),
        'data: {"choices":[{"delta":{"content":"X"}},{"delta":{"content":'
        . '"Y"}},{"delta":{"contenX":"Z"}}],"padpadpadpadpadpadpadpad":1,'
        . '"obfuscation":"q"}' . "\n\n",
        (map { $e->("w$_", 'o' x ($_ % 7 + 1)) } 1 .. 300),
        "data: [DONE]\n\n");
}

# each path also cut into random pieces, and the chat streams an event
# a read, as a slow generation sends them
for my $name (keys %reply) {
    next if $cuts{$name};
    $reply{"${name}split"} = $reply{$name};
    $want{"${name}split"} = $want{$name};
    next if $name =~ /responses|varying/;
    $reply{"${name}events"} = $reply{$name};
    $want{"${name}events"} = $want{$name};
}

# the length of the piece that starts at $at, 20 ms after the last, so
# that nginx reads each piece alone
sub cut_at {
    my ($lengths, $out, $at) = @_;
    my $off = index($out, "\r\n\r\n") + 4;
    select undef, undef, undef, 0.02;
    for my $l (@$lengths) {
        return $l if $off == $at;
        $off += $l;
    }
    return length($out) - $at;
}

srand 7;
my $bport = $t->start_canned(\%reply, prefix => '/s',
                             slow => qr/(?:split|events|^\/cut.*)$/,
                             piece => sub {
                                 my ($out, $at, $path) = @_;
                                 return cut_at($cuts{$path}, $out, $at)
                                     if $cuts{$path};
                                 return 1 + int rand 97
                                     unless $path =~ /events$/;
                                 my $end = index $out, "\n\n", $at;
                                 return $end < 0 ? length($out) - $at
                                                 : $end + 2 - $at;
                             },
                             pause => 0.001);

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;
    log_format u '\$request_uri|\$status|\$llm_usage_source|'
                 '\$llm_prompt_tokens|\$llm_completion_tokens';
    access_log $dir/u.log u;

    upstream pool {
        llm_balance zone=llm;
        server 127.0.0.1:$bport;
    }

    server {
        listen 127.0.0.1:$listen;

        # unbuffered: each read reaches the filters as it comes
        location /s/ {
            llm_route pool;
            proxy_pass http://pool;
            proxy_buffering off;
        }

        # reads of up to 64 KB
        location /s/cut {
            llm_route pool;
            proxy_pass http://pool;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 64k;
        }

        location = /llm/status {
            llm_status;
        }
    }
END

my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 5, stream => JSON::PP::true });
for my $path (sort keys %reply) {
    my ($st, $h, $b) = http_post($listen, "/s$path", $body);
    is($st, 200, "$path answered");
    is($b, substr($reply{$path}, index($reply{$path}, "\r\n\r\n") + 4),
       "$path passed byte for byte");
}

$t->stop_nginx;
my %log = map { my @f = split /\|/; ($f[0] => \@f) }
          split /\n/, $t->read_file('u.log');

for my $path (sort keys %want) {
    my ($src, @n) = @{ $want{$path} };
    my $l = $log{"/s$path"} // [];
    is($l->[2], $src, "$path: usage $src");
    if ($src eq 'reported') {
        is($l->[3], $n[0], "$path: prompt tokens from usage");
        is($l->[4], $n[1], "$path: completion tokens from usage");
    } else {
        is($l->[4], $n[0], "$path: the non-empty text deltas");
    }
}

$t->done;
