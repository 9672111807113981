#!/usr/bin/perl

# key_file= is read again when the file changes, however it changes: a
# key rewritten in place within the same second as the one a worker read
# (same inode, same length, same mtime in seconds) once went unseen.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $ctl = free_port();
my $p = free_port();
$t->start_sim({ control_port => $ctl, deployments => [
    { name => 'a', port => $p, host => 'a.example', api_key => 'old-key',
      deployment => 'gpt-4o', ttft_ms => [0, 0] } ] });

sub put {
    open my $fh, '>', "$dir/a.key" or die;
    print $fh "$_[0]\n";
    close $fh;
}

put('old-key');

my $listen = free_port();
$t->start_nginx(<<"END", ports => [$listen]);
    llm_zone llm:1m;

    upstream pool {
        llm_balance zone=llm;
        llm_backend a http://a.example key_file=$dir/a.key
                    address=127.0.0.1:$p;
    }

    server {
        listen 127.0.0.1:$listen;

        location / {
            llm_route pool;
            proxy_pass http://pool;
            proxy_set_header Host \$llm_backend_host;
            proxy_set_header api-key \$llm_backend_key;
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';
my $body = json_encode({ messages => [ { role => 'user', content => 'hi' } ],
                         max_tokens => 5 });

# at the start of a second: the worker reads the key, and within the same
# second the file is rewritten in place with a key of the same length
my $s = int(time) + 1;
sleep($s - time + 0.05);
put('old-key');
my ($st) = http_post($listen, $chat, $body);
is($st, 200, 'the key read');
put('new-key');
ok(time < $s + 1, 'rewritten within the same second');
$t->sim_update('a', { api_key => 'new-key' });

# the worker looks at the file at most once a second
sleep 1.5;
($st) = http_post($listen, $chat, $body);
is($st, 200, 'the new key is used');

# replaced by rename, as secret mounts do
put('old-key');
rename "$dir/a.key", "$dir/a.tmp" or die;
open my $fh, '>', "$dir/a.key.new" or die;
print $fh "key-three\n";
close $fh;
rename "$dir/a.key.new", "$dir/a.key" or die;
$t->sim_update('a', { api_key => 'key-three' });
sleep 1.5;
($st) = http_post($listen, $chat, $body);
is($st, 200, 'a key file replaced by rename is read');

$t->allow_log(qr/\[error\].*(401|api-key)/);
$t->done;
