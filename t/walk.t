#!/usr/bin/perl

# The body walk (src/ngx_http_llm_walk.c) counts the usual chat body in
# one pass over its text and leaves any other body to cJSON's tree.  What
# it accepts it must read exactly as the tree does: for generated bodies
# and random mutations of them, two servers that differ only in
# llm_body_walk must give the same status, the same variables taken from
# the body, and the same error or the same body forwarded to the backend
# (llm_stream_usage edits it), counting exactly with either vocabulary
# and by guess.  The backend replies with the body it got, so that the
# usage objects of the bodies, walked too, are compared as a reply's
# (a JSON reply whole in one buffer has its usage read from the end;
# for a reply that is not JSON the two readings may pair its quotes
# differently, so only JSON replies have their usage compared).  A
# debug build logs which bodies were walked: a good share must be, or
# the comparison would prove nothing.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use Encode qw(encode_utf8);
use List::Util qw(shuffle);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $enc = vocab_dir();

plan skip_all => "no vocabularies in $enc (run build/tokenizer.sh)"
    unless -f "$enc/o200k_base.json" && -f "$enc/cl100k_base.json";

# CI also runs a packaged nginx, without a debug log
my $debug = `$ENV{LLM_NGINX} -V 2>&1` =~ /--with-debug/;

my $echo = $t->start_echo(mirror => 1);
my %port = (on => free_port(), off => free_port());

# a backend with a deployment= name: "model" is rewritten on the way, as
# stream_options is added, both at offsets the reading found
my $servers = join '', map { <<"END" } qw(on off);
    server {
        listen 127.0.0.1:$port{$_};
        llm_body_walk $_;
        access_log $dir/$_.log walk;
        add_header X-Model "[\$llm_model]" always;
        add_header X-Prompt "[\$llm_prompt_tokens]" always;
        add_header X-Estimate "[\$llm_prompt_estimate]" always;
        add_header X-Cost "[\$llm_tokens_estimate|\$llm_reserve]" always;

        location /exact/ { llm_route up; proxy_pass http://up; }
        location /estimate/ { llm_route up; llm_count estimate;
                              proxy_pass http://up; }
        location /cl100k/ { llm_route up; llm_encoding cl100k_base;
                            llm_count_cache off; proxy_pass http://up; }
    }
END

# the reply's usage is known only once it has passed: logged
$t->start_nginx(<<"END", ports => [values %port]);
    log_format walk '\$http_x_seq|\$llm_prompt_tokens|\$llm_completion_tokens|'
                    '\$llm_total_tokens|\$llm_cached_tokens|'
                    '\$llm_reasoning_tokens|\$llm_usage_source';
    llm_tokenizer o200k_base $enc/o200k_base.json;
    llm_tokenizer cl100k_base $enc/cl100k_base.json;
    llm_zone llm:1m;
    llm_stream_usage on;

    upstream up {
        llm_balance zone=llm;
        llm_backend echo http://echo.example deployment=dep
                    address=127.0.0.1:$echo;
    }

$servers
END

###########################################################################
# the generator: JSON text built piece by piece, so that blanks, escapes
# and broken bytes go where a serializer would never put them

# LLM_WALK_SEED and LLM_WALK_BODIES make a longer search
srand($ENV{LLM_WALK_SEED} || 20261123);

sub pick { $_[int rand @_] }
sub maybe { rand() < $_[0] }

# blanks: none, JSON's four, or (odd bodies) a byte cJSON takes as blank
my $blanks = 0;
sub ws {
    return '' if !$blanks || maybe(0.4);
    return pick("\f", "\x0b", "\x01") if $blanks == 2 && maybe(0.1);
    return pick(' ', "\n    ", "\t", "\r\n", '  ');
}

sub obj {
    my @m = map { ws() . $_->[0] . ws() . ':' . ws() . $_->[1] } @_;
    return '{' . join(',', @m) . ws() . '}';
}

sub arr { '[' . join(',', map { ws() . $_ } @_) . ws() . ']' }

my $ja = encode_utf8("\x{65e5}\x{672c}\x{8a9e}\x{306e}\x{8cea}\x{554f}"
                     . "\x{3067}\x{3059}\x{3002}");

# a wild body may hold anything; a plain one only what the walk takes,
# so that a good share is walked (and compared) at all
my $wild;
sub choose { my ($plain, $odd) = @_; pick(@$plain, $wild ? @$odd : ()) }

my @texts = ([
    '"Hello, how are you?"', '""', '"You are a helpful assistant."',
    '"trailing blanks   "', '"  leading"', '"lines\n\n"', '"x\r\n"',
    '"tab\there"', '"say \"hi\""', '"back\\\\slash\\\\"', '"a\/b"',
    '"\b\f\r"', '"\u0041\u00e9\u65e5\u672c"', '"nul\u0000after"',
    '"\u0000"', "\"$ja\"", '"' . encode_utf8("\x{1f600}") . ' raw"',
    "\"ctl\x01\x1f\x7f\"", "\"raw\nnewline\"", "\"cut \xe6\x97\"",
    "\"\xff\xfe\"", "\"ends \xe3\"", '"' . ('lorem ipsum dolor ' x 40) . '"',
    q{"it's what we've 123456"}, '"\"\\\\\/"',
    '"\u3053\u3093\u306b\u3061\u306f ' . $ja . '"',
    '"' . 'a' x 37 . '\n' . 'b' x 20 . '\"' . 'c' x 17 . '\u00e9"',
], [
    '"\ud83d\ude00 pair"', '"lone \ud83d high"', '"lone \ude00 low"',
    '"bad \u12g4 hex"', '"bad \x escape"', '"short \u12"',
    "\"nul\x00raw\"", '"' . 'x' x 20 . "\x00" . 'y' x 20 . '"',
    '"' . ('a larger body, read in pieces ' x 700) . '"',
]);
sub text { choose(@texts) }

my @numbers = (['0', '1', '10', '256', '4096', '999999999999999', '128',
    '129', '100000001', 'null', '"100"', 'true'], ['-1', '-0', '0.5',
    '1.0', '1e3', '1E+2', '2e-1', '007', '0.0', '12345678901234567890123',
    '1000000000000000', '-', '1.', '.5', '+1']);
sub number { maybe(0.4) ? int rand 5000 : choose(@numbers) }

sub part {
    pick(obj(['"type"', '"text"'], ['"text"', text()]),
         obj(['"type"', '"image_url"'], ['"image_url"',
             obj(['"url"', '"https://example.com/a.png"'],
                 ['"detail"', pick('"low"', '"high"')])]),
         text(), obj(['"text"', '7']));
}

# role, content, name: strings mostly, else what the walk leaves alone
sub field {
    return text() if maybe(0.8);
    return choose(['null'], ['7', 'true', '[]', obj(['"text"', text()]),
                             arr(map { part() } 0 .. rand 3)]);
}

my $args = '"{\"city\":\"Paris\",\"note\":\"a\\\\nb \\\\u00e9\"}"';
my $calls = arr(obj(['"id"', '"call_1"'], ['"type"', '"function"'],
                    ['"function"', obj(['"name"', '"get_weather"'],
                                       ['"arguments"', $args])]));
my @roles = map { "\"$_\"" } qw(system user assistant tool developer);

my %message = (
    '"role"' => [0.95, sub { maybe(0.8) ? pick(@roles) : field() }],
    '"content"' => [0.95, \&field], '"name"' => [0.2, \&field],
    '"tool_calls"' => [0.08, sub { $calls }],
    '"tool_call_id"' => [0.08, sub { '"call_1"' }],
    '"refusal"' => [0.05, sub { 'null' }],
    '"rol\u0065"' => [0.02, sub { '"user"' }, 'wild'],
);

# members by chance, a few twice in a wild body, in any order
sub members {
    my ($g) = @_;
    my @m = map { [$_, $g->{$_}[1]->()] }
            grep { ($wild || !$g->{$_}[2]) && maybe($g->{$_}[0]) }
            sort keys %$g;
    push @m, map { [$_->[0], $g->{$_->[0]}[1]->()] }
             grep { $wild && maybe(0.03) } @m;
    return obj(shuffle @m);
}

sub message {
    $wild && maybe(0.03) ? pick('"hi"', 'null', '[]', '3')
                         : members(\%message);
}

# a reply's usage: counts, and details that hold one each
sub details {
    my ($name) = @_;
    return maybe(0.9) ? obj([$name, number()], ['"audio_tokens"', '0'])
                      : choose(['null', '[]', '{}'], ["{$name:1,$name:2}"]);
}

# declared first: a usage may hold one of its own, which the reply's
# scanner must not take
my %usage;
%usage = (
    (map { ("\"${_}_tokens\"" => [0.6, \&number]) }
         qw(prompt completion total input output)),
    (map { my $n = $_->[1]; ("\"$_->[0]_tokens_details\"" =>
                             [0.3, sub { details("\"${n}_tokens\"") }]) }
         [prompt => 'cached'], [completion => 'reasoning'],
         [input => 'cached'], [output => 'reasoning']),
    '"prompt\u005ftokens"' => [0.05, \&number, 'wild'],
    '"x"' => [0.05, sub { obj(['"usage"', members(\%usage)]) }],
    # keys that are not "usage" once decoded, nor to the scanner
    '"y"' => [0.05, sub { obj([pick('"usage\n"', '"\"usage"', '"us\"age"',
                                    '"\\usage"'), members(\%usage)]) }],
);

sub deep {
    my $n = choose([10, 60], [70]);
    return maybe(0.5) ? '[' x $n . ']' x $n
                      : '{"a":' x $n . '1' . '}' x $n;
}

my $schema = obj(['"type"', '"json_schema"'], ['"json_schema"',
    obj(['"name"', '"answer"'], ['"schema"', obj(['"type"', '"object"'],
        ['"properties"', obj(['"a"', obj(['"type"', '"string"'])])])])]);
my $tools = sub { arr(obj(['"type"', '"function"'], ['"function"',
    obj(['"name"', '"get_weather"'], ['"description"', text()],
        ['"parameters"', obj(['"type"', '"object"'])])])) };

my %top = (
    '"model"' => [0.9, sub { choose(['"gpt-4o"', '"gpt-4"', '"gpt-4o-mini"',
        '"gpt-35-turbo"', '"o1-mini"', '"text-embedding-3-small"', '""',
        '"gpt\u002d4"', '"gpt-4\u0000o"', '"\u0000"', '4', 'null',
        '["gpt-4"]', '{"a":1}', '"GPT-4O"', "\"$ja\"", '"\u65e5"'],
        ["\"gpt-4\x00\""]) }],
    '"messages"' => [0.93, sub { maybe(0.06)
        ? choose(['null', '[]'], ['{}', '"hi"', '{"a":' . message() . '}'])
        : arr(map { message() } 0 .. rand 4) }],
    '"stream"' => [0.3, sub { pick('true', 'false', '"true"', 'null', '1') }],
    '"stream_options"' => [0.08, sub { pick('{"include_usage":true}',
                                            'null', '{}') }],
    '"response_format"' => [0.08, sub { choose(['{"type":"json_object"}',
        '"text"', 'null', '{"a":{"json_schema":1}}'], [$schema,
        '{"json\u005fschema":{}}', '{"type":"text","json_schema":null}']) }],
    (map { ("\"$_\"" => [0.15, \&number]) }
         qw(max_tokens max_completion_tokens max_output_tokens n best_of)),
    '"temperature"' => [0.3, sub { pick('0.7', '1', '0', '1e-2', '-0') }],
    '"user"' => [0.1, \&text], '"metadata"' => [0.03, \&deep],
    '"seed"' => [0.03, sub { choose(['1' x 40, '1' x 63],
                                    ['1' x 70, '0.' . '5' x 70]) }],
    (map { ("\"$_\"" => [0.03, \&field, 'wild']) }
         qw(prompt input instructions)),
    '"tools"' => [0.05, $tools, 'wild'],
    '"functions"' => [0.03, $tools, 'wild'],
    '"mod\u0065l"' => [0.03, sub { '"gpt-4"' }, 'wild'],
    '"usage"' => [0.5, sub { members(\%usage) }],
    '"usage\n"' => [0.05, sub { members(\%usage) }],
);

sub body {
    $wild = maybe(0.5);
    $blanks = maybe(0.5) ? 0 : ($wild && maybe(0.2)) ? 2 : 1;

    my $b = ws() . members(\%top) . ws();

    # bytes broken in a plain body too: the walk fails deep inside it
    for (1 .. (maybe($wild ? 0.25 : 0.1) ? 1 + rand 3 : 0)) {
        my $at = int rand length $b;
        my $byte = pick('"', '\\', '{', '}', '[', ']', ',', ':', '0', 'e',
                        'n', ' ', "\x00", "\x80", "\xe3", "\n");
        my $how = int rand 3;
        substr($b, $at, $how == 1 ? 0 : 1) = $how == 0 ? '' : $byte;
    }

    return $b unless $wild;

    # what no serializer sends: a cut, a prefix, a suffix
    $b = substr($b, 0, rand length $b) if maybe(0.05);
    $b = "\xef\xbb\xbf$b" if maybe(0.02);
    $b .= pick(' x', '}', ',', '{}', "\x00", "\n", ']',
               ' "a "usage":{"prompt_tokens":5}') if maybe(0.05);
    return $b;
}

###########################################################################

my ($seq, $log_seen, %fh, %logged) = (0, 0);

# the access log line of a request (nginx may write it just after the
# reply): lines are read as they come, whole ones only
sub logged {
    my ($walk, $n) = @_;
    my $fh = $fh{$walk} //= do { open my $f, '<', "$dir/$walk.log" or die; $f };
    for (1 .. 3000) {
        seek $fh, 0, 1;
        while (defined(my $l = <$fh>)) {
            if ($l !~ s/\n$//) { seek $fh, -length $l, 1; last }
            my ($k, $v) = split /\|/, $l, 2;
            $logged{$walk}{$k} = $v;
        }
        return delete $logged{$walk}{$n} if exists $logged{$walk}{$n};
        select undef, undef, undef, 0.001;
    }
    return 'no log line';
}

# what nginx derived from a body, as one text
sub ask {
    my ($walk, $uri, $body, $sse) = @_;
    my ($st, $h, $reply) = http_post($port{$walk}, $uri, $body,
        'X-Seq' => ++$seq, $sse ? ('X-Mirror-Type' => 'text/event-stream')
                                : ());
    my $log = logged($walk, $seq);
    $log = 'not JSON' if $st == 200 && !$sse
                         && !eval { JSON::PP->new->decode($reply); 1 };
    return join "\n", $st, (map { "$_: " . ($h->{"x-$_"} // '-') }
                             qw(model prompt estimate cost mirror-uri)),
                       "log: $log", $reply;
}

# what the debug log says became of the last body
sub how {
    my $new = substr $t->error_log, $log_seen;
    $log_seen += length $new;
    return $new =~ /llm json: (walked|left)/ ? $1 : 'neither';
}

sub show {
    (my $s = shift) =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return $s;
}

# a differing body made smaller while it still differs: pieces of it,
# halving their length, are taken out
sub shrink {
    my ($uri, $body, $sse) = @_;
    for (my $n = int(length($body) / 2) || 1; $n >= 1; $n = int($n / 2)) {
        for (my $at = 0; $at < length $body; ) {
            my $try = $body;
            substr($try, $at, $n) = '';
            ask('on', $uri, $try, $sse) ne ask('off', $uri, $try, $sse)
                ? ($body = $try) : ($at += $n);
        }
    }
    return $body;
}

my $chat = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]';
my $m = '{"model":"gpt-4o","messages":[{"role":"user","content":';

my @picked = (
    [walked => "$chat}"], [walked => '{}'],
    [walked => '{"messages":[{"role":"system","content":"Be brief.",'
               . '"name":"sys"},{"content":null,"role":"tool",'
               . '"tool_call_id":"c1"}],"stream":true,'
               . '"max_tokens":10,"model":"gpt-4"}'],
    # an assistant's calls, read back by the model: the tree counts them
    [left => '{"messages":[{"content":null,"role":"assistant",'
             . "\"tool_calls\":$calls}]}"],
    [left => '{"messages":[{"content":null,"role":"assistant",'
             . '"function_call":{"name":"f","arguments":"{}"}}]}'],
    [walked => '{ "model" : "gpt-4o-mini" , "messages" : [ { "role" : '
               . '"user" , "content" : "\u65e5\n\"\\\\ \u0000x" } ] , '
               . "\"n\" : 2 ,\n\t\"metadata\" : { \"a\" : [ 1.5e3 ] } }"],
    [walked => "$m\"$ja\x01\"}],\"x\":" . '[' x 60 . ']' x 60 . '}'],
    [walked => '{"messages":null,"model":"","stream_options":null}'],
    [walked => "$chat,\"max_tokens\":0,\"best_of\":999999999999999}"],
    [left => "$chat,\"tools\":[]}"], [left => "$chat,\"model\":\"gpt-4\"}"],
    [left => $m . '[{"type":"text","text":"hi"}]}]}'],
    [left => "$chat,\f\"n\":1}"], [left => "$chat,\"max_tokens\":-1}"],
    [left => "$chat,\"max_tokens\":1.5}"], [left => "$chat,\"n\":-0}"],
    [left => $m . '"\ud83d\ude00"}]}'], [left => "$m\"a\x00b\"}]}"],
    [left => "$chat} x"], [left => "\xef\xbb\xbf$chat}"],
    [left => "$chat,\"x\":" . '[' x 70 . ']' x 70 . '}'], [left => "[$chat}]"],
    [left => "$chat,\"response_format\":{\"json_schema\":{}}}"],
);

SKIP: {
    skip 'nginx without --with-debug: no log of the walk', scalar @picked
        unless $debug;

    for my $p (@picked) {
        my ($want, $body) = @$p;
        ask('on', '/exact/v1/chat/completions', $body);
        is(how(), $want, "$want: " . show(length $body > 60
                                         ? '...' . substr($body, -57)
                                         : $body));
    }
}

# stream_options is added on the way, a usage is read from the reply
like(ask('on', '/exact/v1/chat/completions', $picked[2][1]),
     qr/\{"stream_options":\{"include_usage":true\},"messages"/,
     'include_usage added');
like(ask('on', '/exact/v1/chat/completions', "$chat,\"usage\":"
         . '{"prompt_tokens":3,"completion_tokens":4}}'),
     qr/\nlog: 3\|4\|7\|0\|0\|reported\n/, 'usage of the reply');
how();

my @bodies = ((map { $_->[1] } @picked), '', ' ', '[]', '"chat"', 'null',
              '{', '}', $chat, "{\"a\":\"\x00\"}", '{"":1}',
              '{"messages":[{}]}', '{"messages":[{"role":"user"}]}',
              '{"usage":{"prompt_tokens":5,"x":{"usage":{"prompt_tokens":9}}}}',
              '{} "a "usage":{"prompt_tokens":5}');
push @bodies, body() while @bodies < ($ENV{LLM_WALK_BODIES} || 1500);

# the v1 API, embeddings (no reserve), a deployment in the path (the
# model when the body names none), an api-version without stream_options
# (nginx decodes %64 in the path it matches, not in the one it sends)
my $azure = '/openai/%s/%s/chat/completions?api-version=%s';
my @paths = (('/v1/chat/completions') x 5, '/v1/embeddings',
             sprintf($azure, 'deployments', 'gpt-4', '2024-10-21'),
             sprintf($azure, 'deployments', 'o1', '2024-06-01'),
             sprintf($azure, '%64eployments', 'gpt-4', '2024-10-21'));

my (@diff, %status);
my $start = time;

for my $i (0 .. $#bodies) {
    my $u = ('/exact', '/estimate', '/cl100k')[$i % 3]
            . $paths[int($i / 3) % @paths];
    my @ask = ($u, $bodies[$i], $i % 7 == 6);
    my ($on, $off) = map { ask($_, @ask) } qw(on off);
    $status{ (split /\n/, $off)[0] }++;
    push @diff, \@ask if $on ne $off;
}

note sprintf "%d bodies in %.1f s; statuses: %s", scalar @bodies,
     time - $start, join ', ', map { "$_ x $status{$_}" } sort keys %status;
ok($status{200} && $status{400}, 'both answers seen: 200 and 400');
my $usages = () = $t->read_file('on.log') =~ /\|reported$/mg;
cmp_ok($usages, '>', 0.1 * @bodies, "$usages replies with a usage");

SKIP: {
    skip 'nginx without --with-debug: no log of the walk', 3 unless $debug;

    my $log = substr $t->error_log, $log_seen;
    my $walked = () = $log =~ /llm json: walked/g;
    my $left = () = $log =~ /llm json: left to the tree/g;
    my $share = $walked / ($walked + $left || 1);
    note sprintf "walked %d, left to the tree %d (%.0f %% walked)",
                 $walked, $left, 100 * $share;
    cmp_ok($share, '>', 0.3, 'more than 30 % of the bodies walked');
    cmp_ok($left, '>', 0.1 * @bodies, 'and some left to the tree');

    my $end = () = $log =~ /llm usage: read from the end/g;
    cmp_ok($end, '>', 0.3 * $usages, "$end usages read from the end");
}

is(scalar @diff, 0, 'walk on and off: the same for all ' . @bodies
                    . ' bodies');

# the three shortest, made smaller, with the fields that differ
for my $d ((sort { length $a->[1] <=> length $b->[1] } @diff)[0 .. 2]) {
    next unless $d;
    my ($u, $small, $sse) = ($d->[0], shrink(@$d), $d->[2]);
    my @on = split /\n/, ask('on', $u, $small, $sse), 8;
    my @off = split /\n/, ask('off', $u, $small, $sse), 8;
    diag "$u" . ($sse ? ' (SSE) ' : ' ') . show($small) . join '', map {
        "\n  walk on:  " . show($on[$_]) . "\n  walk off: " . show($off[$_])
    } grep { $on[$_] ne $off[$_] } 0 .. $#on;
}

$t->done;
