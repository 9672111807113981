#!/bin/sh
# Our gateway beside one that users compare it with, in one run: the
# same static backend, the same 1 KB chat body and the same load through
#   plain     nginx alone: proxy_pass to the backend (upstream keepalive)
#   estimate  the module: llm_route with llm_count estimate
#   exact     the module: exact o200k_base counting, repeat cache warm
#   portkey   Portkey's AI gateway, npm @portkey-ai/gateway 1.15.2 on
#             Node.js: provider "openai" with the backend as its custom
#             host (x-portkey-provider, x-portkey-custom-host)
# The nginx modes are the locations of bench/overhead.sh (bench_conf in
# bench/lib.sh) in one nginx 1.22.1 with the module, whose one worker
# also serves the backend: a server of the same nginx returning a
# chat-completion JSON on any path, Portkey's /v1/chat/completions too.
#
#   sh bench/peers.sh [seconds per run] [rounds]
#
# Defaults 5 3: 3 rounds x 4 modes x 2 runs x 5 s, about two minutes.
# Each round runs every mode once at each load, in an order rotated from
# round to round, so that a burst from another process hits a run, not a
# mode:
#   wrk -t1 -c1   one request at a time: p50 and p99 in microseconds,
#                 and what the gateway adds to plain nginx of the same
#                 round
#   wrk -t1 -c16  saturation: requests/s, and its ratio to plain of the
#                 same round
# The report is the median over rounds.  Not a fair fight at
# saturation on 2 cores: wrk takes one; the nginx modes do the proxy's
# and the backend's work in one worker process, while Node.js and the
# backend's worker are two processes the kernel can run side by side.
# No pinning, priorities or spinners (bench/latency.sh has them): the
# figures are the machine's as it is, noisy when it is shared.
#
# Memory after the runs: RSS of each process (nginx: this run's master
# and worker, the o200k_base vocabulary loaded; the node process), and
# PSS, which counts the pages master and worker share once.
#
# Portkey is installed with npm into .build/peers (from Debian's npm,
# build/tokenizer.sh); if it cannot be installed or does not answer,
# the nginx modes are measured alone and the reason is printed.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
rounds=${2:-3}
portkey_version=1.15.2

# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
bench_setup
bench_bodies 1k

# bench_setup's trap, with the node process added
node_pid=""
trap 'kill $node_pid $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true
      [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

modes="plain estimate exact"

# The gateway, as its README runs it ("npx @portkey-ai/gateway"), from a
# pinned version (npm, like tiktoken, is there after bench_setup)
peers=$top/.build/peers
gateway=$peers/node_modules/@portkey-ai/gateway
portkey=""
installed() {
    node -p "require('$gateway/package.json').version" 2>/dev/null || true
}
if [ "$(installed)" != "$portkey_version" ]; then
    mkdir -p "$peers"
    npm install --loglevel=error --no-update-notifier --no-audit \
        --no-fund --prefix "$peers" \
        "@portkey-ai/gateway@$portkey_version" >/dev/null \
        || portkey="npm install @portkey-ai/gateway@$portkey_version failed"
fi

# a free port on loopback, asked of the kernel
port=$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# start-server.js takes --port= but no address, and @hono/node-server
# then listens on every interface: a benchmark's server stays on
# loopback, so listen() gets 127.0.0.1 where it was given none
cat >"$work/loopback.cjs" <<'JS'
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
    if (typeof port === 'number' && host === undefined) host = '127.0.0.1';
    return listen.call(this, port, host, ...rest);
};
JS

bench_conf "daemon on;" "llm_tokenizer o200k_base $vocab/o200k_base.json;" \
    >"$work/nginx.conf"
"$LLM_NGINX" -p "$work" -c "$work/nginx.conf"

# Portkey's OpenAI provider posts to {custom host}/chat/completions; the
# key is sent on as it is and nobody checks it.  Every gateway gets the
# same request, these headers included (nginx passes them on).
custom_host=http://127.0.0.1:18992/v1
cat >"$work/post.lua" <<LUA
local f = io.open(os.getenv("BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.headers["x-portkey-provider"] = "openai"
wrk.headers["x-portkey-custom-host"] = "$custom_host"
LUA
cat >>"$work/post.lua" <<'LUA'
-- requests, microseconds, errors (non-2xx included), p50, p99 in us
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("%d %d %d %d %d\n", summary.requests,
        summary.duration, e.connect + e.read + e.write + e.status
        + e.timeout, latency:percentile(50), latency:percentile(99)))
end
LUA

# the same path for all: OpenAI's v1 API, the model in the body
url() {
    case $1 in
    portkey) echo "http://127.0.0.1:$port/v1/chat/completions" ;;
    *) echo "http://127.0.0.1:18991/$1/v1/chat/completions" ;;
    esac
}

# one request through a gateway: its HTTP status
status() {
    curl -s -o /dev/null -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' \
        -H 'Authorization: Bearer sk-bench' \
        -H 'x-portkey-provider: openai' \
        -H "x-portkey-custom-host: $custom_host" \
        --data-binary "@$work/body-1k.json" "$(url "$1")" || true
}

if [ -z "$portkey" ]; then
    node -r "$work/loopback.cjs" "$gateway/build/start-server.js" \
        --port="$port" --headless >"$work/portkey.log" 2>&1 &
    node_pid=$!
    # it prints a second of spinner before it says it is ready
    i=0
    while [ "$(status portkey)" != 200 ]; do
        i=$((i + 1))
        if [ $i -ge 40 ] || ! kill -0 $node_pid 2>/dev/null; then
            portkey="no 200 from the gateway on port $port in 20 s"
            portkey="$portkey (with the backend at $custom_host):"
            portkey="$portkey $(status portkey), $(tail -c 300 \
                "$work/portkey.log" | tr '\n' ' ')"
            break
        fi
        sleep 0.5
    done
fi
[ -n "$portkey" ] || modes="$modes portkey"
for m in plain estimate exact; do
    [ "$(status $m)" = 200 ] || { echo "$m: no 200 from nginx" >&2; exit 1; }
done

echo "== gateways side by side, 1 KB chat body, same backend"
echo "nginx:   $("$LLM_NGINX" -v 2>&1 | sed 's/.*version: //'), module" \
     "at $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "node:    $(node --version)"
if [ -z "$portkey" ]; then
    echo "portkey: @portkey-ai/gateway $(installed)"
else
    echo "portkey: skipped: $portkey"
fi
echo "wrk:     $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"

# one run: run MODE CONNECTIONS SECONDS prints the done() line
run() {
    out=$(BODY="$work/body-1k.json" wrk -t1 -c"$2" -d"${3}s" \
          -s "$work/post.lua" "$(url "$1")" | tail -1)
    errors=$(echo "$out" | cut -d' ' -f3)
    [ "$errors" = 0 ] || echo "$1 -c$2: $errors errors" >&2
    echo "$out"
}

# warm-up: connections, the repeat cache, node's JIT
for m in $modes; do run "$m" 16 1 >/dev/null; done

echo "   $rounds rounds x ${secs} s per mode and load, order rotated;" \
     "median over rounds"
: >"$work/runs"
r=0
while [ $r -lt "$rounds" ]; do
    order=$(echo "$modes" | awk -v r=$r '{
        for (i = 0; i < NF; i++) printf "%s ", $((i + r) % NF + 1) }')
    for m in $order; do
        echo "$r $m c1 $(run "$m" 1 "$secs")" >>"$work/runs"
        echo "$r $m c16 $(run "$m" 16 "$secs")" >>"$work/runs"
    done
    r=$((r + 1))
done

python3 - "$work/runs" "$modes" <<'PY'
import sys
runs = {}  # (mode, load, round) -> [requests, us, errors, p50, p99]
for r, m, load, *v in (l.split() for l in open(sys.argv[1])):
    runs[(m, load, int(r))] = [float(x) for x in v]
modes = sys.argv[2].split()
rounds = sorted({k[2] for k in runs})

def med(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[(n - 1) // 2] + xs[n // 2]) / 2

def each(m, load, f):
    return [f(runs[(m, load, r)], runs[("plain", load, r)])
            for r in rounds]

print("\n%-9s %8s %8s %8s %8s %9s %7s" % ("mode", "p50 us", "p99 us",
      "+p50 us", "+p99 us", "req/s", "ratio"))
for m in modes:
    p50 = med(each(m, "c1", lambda x, p: x[3]))
    p99 = med(each(m, "c1", lambda x, p: x[4]))
    a50 = med(each(m, "c1", lambda x, p: x[3] - p[3]))
    a99 = med(each(m, "c1", lambda x, p: x[4] - p[4]))
    rps = med(each(m, "c16", lambda x, p: x[0] / x[1] * 1e6))
    ratio = med(each(m, "c16", lambda x, p: x[0] / x[1] / (p[0] / p[1])))
    print("%-9s %8.0f %8.0f %+8.0f %+8.0f %9.0f %6.1f%%" % (m, p50, p99,
          a50, a99, rps, 100 * ratio))
PY

# kilobytes: rss PID, pss PID (shared pages split among their users)
rss() {
    ps -o rss= -p "$1" | tr -d ' '
}
pss() {
    awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo '?'
}

# this run's nginx only: its master and worker, not any other on the box
master=$(cat "$work/nginx.pid")
worker=$(ps -o pid= --ppid "$master" | tr -d ' ' | head -1)
echo
echo "memory after the runs, KB"
printf '%-9s %-20s %9s %9s\n' gateway processes RSS PSS
printf '%-9s %-20s %9s %9s\n' nginx "master $master" "$(rss "$master")" \
    "$(pss "$master")"
printf '%-9s %-20s %9s %9s\n' nginx "worker $worker" "$(rss "$worker")" \
    "$(pss "$worker")"
printf '%-9s %-20s %9s %9s\n' nginx "both" \
    "$(( $(rss "$master") + $(rss "$worker") ))" \
    "$(( $(pss "$master") + $(pss "$worker") ))"
[ -z "$node_pid" ] || [ -n "$portkey" ] \
    || printf '%-9s %-20s %9s %9s\n' portkey "node $node_pid" \
       "$(rss "$node_pid")" "$(pss "$node_pid")"
