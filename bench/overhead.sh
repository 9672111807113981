#!/bin/sh
# The module's cost against plain nginx proxying, in one run, on the
# same nginx binary, the same backend and the same bodies:
#   plain     proxy_pass to the backend (upstream keepalive)
#   estimate  llm_route with llm_count estimate, through llm_balance
#   exact     llm_route with exact o200k_base counting; every request
#             after the first finds its texts in the repeat cache, as a
#             chat history sent again does
#   nocache   the same with llm_count_cache off: every text tokenized
# The backend is a server of the same nginx returning a chat-completion
# JSON.  Requests/s and latency come from wrk (noisy on a shared
# machine); instructions per request from valgrind --tool=callgrind, as
# the difference between a run of N1 and one of N2 requests (start-up
# cancels out), which is repeatable to the instruction.
#
#   bench/overhead.sh [seconds per wrk run] [N1 N2]
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
n1=${2:-200}
n2=${3:-1200}

sh "$top/build/deps.sh" wrk valgrind >&2
. "$(sh "$top/build/nginx.sh" 1.22)"
sh "$top/build/tokenizer.sh" >/dev/null
vocab=$top/.build/npm/node_modules/tiktoken/encoders

work=$(mktemp -d /tmp/llm-bench-XXXXXX)
chmod 755 "$work"
mkdir -p "$work/logs"
trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# bodies: a ~1 KB and a ~20 KB chat conversation
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
turn = ("how nginx proxies a request to an upstream server and "
        "what keepalive changes. ")
def body(size):
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    i = 0
    while len(json.dumps({"messages": msgs})) < size - 60:
        # every message its own text, as in a real conversation
        msgs.append({"role": "user" if i % 2 == 0 else "assistant",
                     "content": "Step %d: explain %s" % (i, turn * 2)})
        i += 1
    return json.dumps({"model": "gpt-4o", "messages": msgs,
                       "max_tokens": 100})
for name, size in (("1k", 1024), ("20k", 20480)):
    open("%s/body-%s.json" % (work, name), "w").write(body(size))
PY

reply='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":3,"total_tokens":253}}'

conf() {
    cat <<END
${LLM_MODULE:+load_module $LLM_MODULE;}
worker_processes 1;
$1
pid $work/nginx.pid;
error_log $work/error.log error;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy_temp;
    client_max_body_size 2m;
    keepalive_requests 100000;
    client_body_buffer_size 64k;
    $2
    llm_zone llm:1m;

    upstream backend {
        server 127.0.0.1:18992;
        keepalive 32;
    }

    upstream pool {
        llm_balance zone=llm keepalive=32;
        llm_backend be http://127.0.0.1:18992;
    }

    server {
        listen 127.0.0.1:18992;
        location / {
            default_type application/json;
            return 200 '$reply';
        }
    }

    server {
        listen 127.0.0.1:18991;

        location /plain/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /estimate/ {
            llm_route pool;
            llm_count estimate;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /exact/ {
            llm_route pool;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /nocache/ {
            llm_route pool;
            llm_count_cache off;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
END
}

cat >"$work/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
LUA

echo "== requests/s and latency (wrk -t1 -c8, ${secs} s each, same nginx)"
conf "daemon on;" "llm_tokenizer o200k_base $vocab/o200k_base.json;" \
    >"$work/nginx.conf"
"$LLM_NGINX" -p "$work" -c "$work/nginx.conf"
sleep 1

printf '%-6s %-9s %10s %9s %9s %8s\n' body mode 'req/s' 'p50 ms' 'p99 ms' ratio
for size in 1k 20k; do
    base=""
    for mode in plain estimate exact nocache; do
        out=$(BODY="$work/body-$size.json" wrk -t1 -c8 -d"${secs}s" \
              --latency -s "$work/post.lua" \
              "http://127.0.0.1:18991/$mode/openai/deployments/gpt-4o/chat/completions")
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
        p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
        [ -n "$base" ] || base=$rps
        printf '%-6s %-9s %10s %9s %9s %7.1f%%\n' "$size" "$mode" "$rps" \
            "$p50" "$p99" "$(echo "$rps $base" | awk '{print 100*$1/$2}')"
    done
done
rss=$(ps -o rss= -C nginx | sort -n | tail -1)
echo "largest nginx process RSS after the runs: ${rss} KB (vocabulary included)"
kill "$(cat "$work/nginx.pid")"
sleep 1

echo
echo "== instructions per request (callgrind, (I($n2) - I($n1)) / $((n2 - n1)))"

# a keepalive client sending N requests one after another
cat >"$work/client.pl" <<'PL'
use strict; use IO::Socket::INET;
my ($uri, $file, $n) = @ARGV;
open my $f, '<', $file or die; local $/; my $body = <$f>; close $f;
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1:18991') or die "$!";
my $req = "POST $uri HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n$body";
for (1 .. $n) {
    print $s $req;
    my $buf = '';
    while ($buf !~ /\r\n\r\n/ || length($buf) < index($buf, "\r\n\r\n") + 4
           + ($buf =~ /Content-Length: (\d+)/i ? $1 : 0)) {
        sysread($s, $buf, 65536, length $buf) or die "closed";
    }
    die "status: $buf" unless $buf =~ m{^HTTP/1.1 200};
}
PL

instr() {
    mode=$1 size=$2 n=$3
    extra=""
    case $mode in exact|nocache)
        extra="llm_tokenizer o200k_base $vocab/o200k_base.json;" ;;
    esac
    conf "daemon off; master_process off;" "$extra" >"$work/cg.conf"
    rm -f "$work"/callgrind.out
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
        "$LLM_NGINX" -p "$work" -c "$work/cg.conf" 2>/dev/null &
    vg=$!
    i=0
    while ! perl -MIO::Socket::INET -e \
        'exit !IO::Socket::INET->new("127.0.0.1:18991")' 2>/dev/null; do
        sleep 0.5; i=$((i + 1)); [ $i -lt 240 ] || { echo "no start"; exit 1; }
    done
    perl "$work/client.pl" "/$mode/openai/deployments/gpt-4o/chat/completions" \
        "$work/body-$size.json" "$n"
    kill -QUIT $vg
    wait $vg 2>/dev/null || true
    awk '/^summary:/ {print $2}' "$work/callgrind.out"
}

printf '%-6s %-9s %12s %8s\n' body mode 'instr/req' ratio
for size in 1k 20k; do
    base=""
    for mode in plain estimate exact nocache; do
        a=$(instr $mode $size "$n1")
        b=$(instr $mode $size "$n2")
        per=$(( (b - a) / (n2 - n1) ))
        [ -n "$base" ] || base=$per
        printf '%-6s %-9s %12s %7.2fx\n' "$size" "$mode" "$per" \
            "$(echo "$per $base" | awk '{print $1/$2}')"
    done
done
