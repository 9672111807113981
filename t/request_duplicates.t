#!/usr/bin/perl

# A member that the module counts, named twice, is read first by the
# module and last by the backend: {"max_tokens":5,"max_tokens":100000}
# would be charged 5 and cost 100,000.  Such a body gets a 400 in
# Azure's shape naming the member, and nothing reaches the backend;
# members the module does not read may repeat, as before.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use LLMTest;

my $t = LLMTest->new;
my $echo = $t->start_echo;
my $port = free_port();

$t->start_nginx(<<"END", ports => [$port]);
    server {
        listen 127.0.0.1:$port;

        location /openai/ {
            llm_route;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /tree/ {
            llm_route;
            llm_body_walk off;
            rewrite ^/tree(/.*)\$ \$1 break;
            proxy_pass http://127.0.0.1:$echo;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $msgs = '"messages":[{"role":"user","content":"hi"}]';

my @cases = (
    [ 'max_tokens', qq({$msgs,"max_tokens":5,"max_tokens":100000}) ],
    [ 'max_tokens', qq({$msgs,"max_tokens":5,"max\\u005ftokens":100000}) ],
    [ 'max_completion_tokens',
      qq({$msgs,"max_completion_tokens":5,"max_completion_tokens":9}) ],
    [ 'max_output_tokens',
      qq({"input":"hi","max_output_tokens":5,"max_output_tokens":9}) ],
    [ 'messages', qq({$msgs,$msgs}) ],
    [ 'n', qq({$msgs,"n":1,"n":50}) ],
    [ 'stream', qq({$msgs,"stream":true,"stream":false}) ],
    [ 'stream_options', qq({$msgs,"stream":true,)
                        . qq("stream_options":{"include_usage":true},)
                        . qq("stream_options":null}) ],
    [ 'model', qq({$msgs,"model":"gpt-4o","model":"gpt-4o-mini"}) ],
    [ 'tools', qq({$msgs,"tools":[],"tools":[]}) ],
    [ 'input', qq({"input":"hi","input":"hello"}) ],
    [ 'prompt', qq({"prompt":"hi","prompt":"hello"}) ],
    [ 'content', qq({"messages":[{"role":"user","content":"hi",)
                 . qq("content":"a much longer text"}]}) ],
    [ 'role', qq({"messages":[{"role":"user","role":"system",)
              . qq("content":"hi"}]}) ],
    [ 'text', qq({"messages":[{"role":"user","content":[{"type":"text",)
              . qq("text":"hi","text":"a much longer text"}]}]}) ],
    [ 'url', qq({"messages":[{"role":"user","content":[{"type":)
             . qq("image_url","image_url":{"url":"https://x/a.png",)
             . qq("detail":"low","url":"https://x/b.png"}}]}]}) ],
    [ 'description', qq({$msgs,"tools":[{"type":"function","function":)
                     . qq({"name":"f","description":"d",)
                     . qq("description":"a much longer one"}}]}) ],
    [ 'content', qq({"input":[{"role":"user","content":"hi",)
                 . qq("content":"a much longer text"}]}) ],
);

for my $prefix ('', '/tree') {
    for my $c (@cases) {
        my ($name, $body) = @$c;
        my $before = () = $t->echo_requests;
        my ($st, $h, $raw) = http_post($port, "$prefix$chat", $body);
        is($st, 400, "$prefix $name twice: 400") or diag $raw;
        my $j = eval { json_decode($raw) } // {};
        like($j->{error}{message} // '', qr/"\Q$name\E"/,
             "$prefix $name twice: the message names it");
        is($j->{error}{code}, 'BadRequest', "$prefix $name: Azure's shape");
        my $after = () = $t->echo_requests;
        is($after, $before, "$prefix $name twice: not proxied");
    }
}

# members the module does not read may repeat; the backend decides

my ($st) = http_post($port, $chat,
                     qq({$msgs,"temperature":0.1,"temperature":0.2}));
is($st, 200, 'an uncounted member twice passes');

($st) = http_post($port, $chat,
                  qq({$msgs,"metadata":{"a":1},"tools_x":1,"max_tokens":5}));
is($st, 200, 'names that only begin like counted ones pass');

like($t->error_log, qr/\[info\].*client body names "max_tokens" twice/,
     'logged at info');

$t->done;
