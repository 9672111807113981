#!/bin/sh
# A stream whose events come one read at a time, as a slow generation
# sends them: the same 22 events as bench/overhead.sh's stream (20 text
# deltas, usage, [DONE]), each written by a small backend of its own
# 20 ms after the last, through plain nginx proxying and through the
# module (llm_count estimate), both with proxy_buffering off.  Prints
# nginx's own instructions per request under callgrind (the backend is
# another process) and the module's cost over plain.
#
#   bench/stream_reads.sh [requests]      default 30 (about a minute)
#
# STREAM=azure sends instead the answer as Azure streams it, 25 events
# (bench/lib.sh's bench_azure_stream), one a read; STREAM=openai, as
# OpenAI streams it (bench_openai_stream), 24 events.
# MODULE=FILE.so measures another build of the module (bench/variant.sh).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-30}

. "$top/bench/lib.sh"
bench_setup
bench_bodies 1k

cat >"$work/backend.pl" <<'PL'
use strict; use IO::Socket::INET; use Socket qw(IPPROTO_TCP TCP_NODELAY);
my $srv = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$ARGV[0]",
                                Listen => 16, ReuseAddr => 1) or die;
my $id = '"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
       . '"model":"gpt-4o",';
my @e = (('data: {' . $id . '"choices":[{"index":0,"delta":{"content":'
          . '"Hello"},"finish_reason":null}]}' . "\n\n") x 20,
         'data: {' . $id . '"choices":[],"usage":{"prompt_tokens":250,'
          . '"completion_tokens":20,"total_tokens":270}}' . "\n\n",
         "data: [DONE]\n\n");
# another stream's events, from a file
if ($ARGV[1]) {
    open my $f, '<', $ARGV[1] or die "$ARGV[1]: $!";
    my $s = do { local $/; <$f> };
    @e = $s =~ /(.*?\n\n)/gs;
}
my $len = 0;
$len += length for @e;
while (my $c = $srv->accept) {
    setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1);
    for (;;) {
        my $buf = '';
        while ($buf !~ /\r\n\r\n/) {
            sysread($c, $buf, 65536, length $buf) or last;
        }
        last unless length $buf;
        my ($cl) = $buf =~ /Content-Length: (\d+)/i;
        my $body = substr $buf, index($buf, "\r\n\r\n") + 4;
        while (length $body < $cl) {
            sysread($c, $body, 65536, length $body) or last;
        }
        syswrite $c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     . "Content-Length: $len\r\n\r\n";
        for (@e) {
            syswrite $c, $_;
            select undef, undef, undef, 0.02;
        }
    }
    close $c;
}
PL
events=
case ${STREAM:-} in
azure|openai) events=$work/$STREAM-stream.txt ;;
esac
perl "$work/backend.pl" 18995 $events &
backend=$!
trap 'kill $backend 2>/dev/null || true; rm -rf "$work"' EXIT

{
bench_conf_head "daemon off; master_process off;"
cat <<END
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    llm_zone llm:1m;

    upstream backend { server 127.0.0.1:18995; keepalive 8; }
    upstream pool {
        llm_balance zone=llm keepalive=8;
        llm_backend one http://127.0.0.1:18995;
    }

    server {
        listen 127.0.0.1:18991;
        location /sse-plain/ { proxy_pass http://backend; }
        location /sse-estimate/ {
            llm_route pool;
            llm_count estimate;
            proxy_pass http://pool;
        }
    }
}
END
} >"$work/reads.conf"

echo "== a stream read one event at a time: nginx's instructions per" \
     "request (callgrind, $n requests after 3)"
bench_start "$work/reads.conf" 18991
for mode in sse-plain sse-estimate; do
    set -- $(bench_measure 18991 \
             "/$mode/openai/deployments/gpt-4o/chat/completions" \
             "$work/body-1k.json" "$n")
    [ "$mode" != sse-plain ] || base=$1
    printf '%-13s %8s %6.2fx  module over plain %d, reading the reply %d\n' \
        "$mode" "$1" "$(echo "$1 $base" | awk '{print $1/$2}')" \
        $(($1 - base)) "$7"
done
bench_stop
