#!/usr/bin/perl

# A large body is read and counted in nginx's thread pool
# (llm_count_threads): the worker goes on serving its other connections
# meanwhile, and the count is the same as counted in the worker itself.
# One worker; a small request is timed while large bodies are counted,
# with threads and without.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(sleep time);
use LLMTest;

my $t = LLMTest->new;
my $dir = $t->dir;
my $enc = vocab_dir();

plan skip_all => "no vocabularies in $enc (run build/tokenizer.sh)"
    unless -f "$enc/o200k_base.json";
plan skip_all => 'nginx without threads'
    unless `$ENV{LLM_NGINX} -V 2>&1` =~ /--with-threads/;

my $asan = `$ENV{LLM_NGINX} -V 2>&1` =~ /-fsanitize=/;

my $echo = $t->start_echo;
my $port = free_port();

$t->start_nginx(<<"END", ports => [$port]);
    llm_tokenizer o200k_base $enc/o200k_base.json;
    client_max_body_size 16m;
    client_body_buffer_size 16m;

    server {
        listen 127.0.0.1:$port;

        location /threads/ {
            llm_route;
            llm_max_body_size 16m;
            llm_count_threads min=64k;
            llm_count_cache off;
            add_header X-Tokens \$llm_prompt_tokens always;
            rewrite ^/threads(/.*)\$ \$1 break;
            proxy_pass http://127.0.0.1:$echo;
        }

        location /inline/ {
            llm_route;
            llm_max_body_size 16m;
            llm_count_threads off;
            llm_count_cache off;
            add_header X-Tokens \$llm_prompt_tokens always;
            rewrite ^/inline(/.*)\$ \$1 break;
            proxy_pass http://127.0.0.1:$echo;
        }

        location = /small {
            return 200 "ok\\n";
        }
    }
END

my $chat = '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21';

my @words = map { join '', map { ('a' .. 'z')[rand 26] } 1 .. 3 + rand 8 }
            1 .. 2000;

sub body {
    my ($text) = @_;
    return json_encode({ messages => [ { role => 'user',
                                         content => $text } ] });
}

my %bodies = (
    '1 MB of words' => body(join ' ', map { $words[rand @words] }
                                      1 .. 150_000),
    'one 7 MB word' => body('x' . join('', map { $words[rand @words] }
                                       1 .. ($asan ? 20_000 : 1_000_000))),
);

# the same counts with and without threads

for my $name (sort keys %bodies) {
    my ($s1, $h1) = http_post($port, "/threads$chat", $bodies{$name});
    my ($s2, $h2) = http_post($port, "/inline$chat", $bodies{$name});
    is($s1, 200, "$name, in a thread: 200");
    is($s2, 200, "$name, in the worker: 200");
    cmp_ok($h1->{'x-tokens'}, '>', 1000, "$name: counted");
    is($h1->{'x-tokens'}, $h2->{'x-tokens'}, "$name: the same count");
}

# a small request, timed every 5 ms while a large body is counted: the
# longest wait tells how long the worker stopped

sub stall {
    my ($where, $body) = @_;
    my $big = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
        or die "connect: $!";
    my $raw = "POST /$where$chat HTTP/1.1\r\nHost: x\r\n"
            . "Content-Type: application/json\r\nConnection: close\r\n"
            . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my $start = time;
    my $off = 0;
    while ($off < length $raw) {
        $off += syswrite($big, $raw, 1 << 20, $off) // die "write: $!";
    }
    my $sel = IO::Select->new($big);
    my ($worst, @waits) = (0);
    until ($sel->can_read(0)) {
        my $t0 = time;
        my ($st) = http_get($port, '/small');
        my $w = time - $t0;
        die "small request: $st" unless $st == 200;
        push @waits, $w;
        $worst = $w if $w > $worst;
        last if time - $start > 60;
        sleep 0.005;
    }
    my $took = time - $start;
    my $reply = '';
    1 while sysread($big, $reply, 65536, length $reply);
    my ($status) = $reply =~ m{^HTTP/1.1 (\d+)};
    @waits = sort { $a <=> $b } @waits;
    my $p99 = @waits ? $waits[int(0.99 * $#waits)] : 0;
    return ($status, $worst * 1000, $took, scalar @waits, $p99 * 1000);
}

# the small request alone, for the p99 to compare with

my @alone;
for (1 .. 100) {
    my $t0 = time;
    http_get($port, '/small');
    push @alone, time - $t0;
}
@alone = sort { $a <=> $b } @alone;
my $alone = $alone[98] * 1000;
diag sprintf "the small request alone: p99 %.1f ms", $alone;

for my $name (sort keys %bodies) {
    for my $where ('threads', 'inline') {
        my ($st, $worst, $took, $n, $p99) = stall($where, $bodies{$name});
        is($st, 200, "$name, $where: answered");
        diag sprintf "%s, %s: counted in %.0f ms; %d small requests "
                   . "meanwhile, p99 %.1f ms, the longest %.1f ms",
                     $name, $where, $took * 1000, $n, $p99, $worst;
        next unless $where eq 'threads';
        # a p99, not the longest wait: a loaded machine may pause any
        # process now and then; counting in the worker stops it for
        # the whole count, tens of milliseconds to seconds
        cmp_ok($p99, '<', $asan ? 200 : 30,
               "$name: the worker kept serving");
    }
}

# a bad body counted in a thread is refused and logged like any other

my $bad = '{"messages":[{"role":"user","content":"' . ('y' x 100_000) . '"}';
my ($st, $h, $raw) = http_post($port, "/threads$chat", $bad);
is($st, 400, 'a malformed large body: 400');
like($t->error_log, qr/\[info\].*malformed JSON in client body/,
     'logged from the thread');

# a worker told to exit while a body is counted answers it first

SKIP: {
    skip 'a long count only without sanitizers', 2 if $asan;

    my $big = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port")
        or die "connect: $!";
    my $body = $bodies{'one 7 MB word'};
    my $req = "POST /threads$chat HTTP/1.1\r\nHost: x\r\n"
            . "Content-Type: application/json\r\nConnection: close\r\n"
            . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my $off = 0;
    $off += syswrite($big, $req, 1 << 20, $off) // die "write: $!"
        while $off < length $req;
    # the word takes some 400 ms to count (3 s before the merge by
    # lists): the reload comes while it is counted
    sleep 0.1;
    kill 'HUP', $t->{nginx_pid};    # a reload: the old worker exits
    my $reply = '';
    my $sel = IO::Select->new($big);
    while ($sel->can_read(30)) {
        sysread($big, $reply, 65536, length $reply) or last;
    }
    like($reply, qr{^HTTP/1.1 200}, 'reload while counting: answered');
    ($st) = http_get($port, '/small');
    is($st, 200, 'the new worker serves');
}

$t->done;
