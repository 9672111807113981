#!/bin/sh
# The module's cost against plain nginx proxying, in one run, on the
# same nginx binary, the same backend and the same bodies:
#   plain     proxy_pass to the backend (upstream keepalive)
#   estimate  llm_route with llm_count estimate, through llm_balance
#   exact     llm_route with exact o200k_base counting; every request
#             after the first finds its texts in the repeat cache, as a
#             chat history sent again does
#   nocache   the same with llm_count_cache off: every text tokenized
#   hedge     estimate with llm_hedge over two backends, its delay never
#             reached: the cost of running the attempt as a subrequest
#   sse-plain, sse-estimate
#             plain and estimate with a streamed answer (SSE, 22 events)
#   azure-plain, azure-estimate
#             the same answer streamed as Azure sends it (25 events,
#             10.7 KB: each delta with its content filter results and
#             "usage":null)
#   openai-plain, openai-estimate
#             the same answer streamed as OpenAI sends it (24 events,
#             7.8 KB: each with a random "obfuscation" string)
#   limit     estimate with an llm_limit line (tpm, rpm) on one consumer,
#             to a backend with tpm= and rpm=
#   shared    the same in a zone shared through a redis-server of its own
#             (llm_zone ... redis=), leases reported every 100 ms
#   shared-quiet
#             the same with reports every 10 s: what the request itself
#             costs; the reports are a cost per unit of time, not per
#             request, and callgrind runs requests ~100 times slower than
#             nginx does, so a report falls on ~100 times fewer requests
#             in production than here: their cost is given apart, per
#             Redis command
# The backend is a server of the same nginx returning a chat-completion
# JSON, or its stream.  Requests/s and latency come from wrk (noisy on a shared
# machine); instructions per request from valgrind --tool=callgrind,
# counted from after a warm-up to the last request (bench/lib.sh), which
# is repeatable to the instruction.
#
#   bench/overhead.sh [seconds per wrk run] [requests under callgrind]
#
# MODULE=FILE.so measures another build of the module (bench/variant.sh).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-5}
n2=${2:-500}

. "$top/bench/lib.sh"
bench_setup
bench_redis
bench_bodies 1k 20k

cat >"$work/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
LUA

echo "== requests/s and latency (wrk -t1 -c8, ${secs} s each, same nginx)"
bench_conf "daemon on;" "llm_tokenizer o200k_base $vocab/o200k_base.json;" \
    >"$work/nginx.conf"
"$LLM_NGINX" -p "$work" -c "$work/nginx.conf"
sleep 1

printf '%-6s %-14s %10s %9s %9s %8s\n' body mode 'req/s' 'p50 ms' 'p99 ms' ratio
for size in 1k 20k; do
    base=""
    for mode in plain estimate exact nocache hedge sse-plain \
                sse-estimate azure-plain azure-estimate openai-plain \
                openai-estimate limit shared shared-quiet; do
        # streamed answers against plain streaming, limits against plain;
        # at 20 KB the limits' 100m tokens a minute run out within the
        # run, and 429s are no measure of speed
        case $size:$mode in 20k:limit|20k:shared*) continue ;; esac
        case $mode in sse-plain|azure-plain|openai-plain) base="" ;; esac
        [ "$mode" != limit ] || base=$plain_rps
        out=$(BODY="$work/body-$size.json" wrk -t1 -c8 -d"${secs}s" \
              --latency -s "$work/post.lua" \
              "http://127.0.0.1:18991/$mode/openai/deployments/gpt-4o/chat/completions")
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        if echo "$out" | grep -q 'Non-2xx'; then
            echo "$size $mode: $(echo "$out" | grep 'Non-2xx')" >&2
        fi
        p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
        p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
        [ -n "$base" ] || base=$rps
        [ "$mode" != plain ] || plain_rps=$rps
        printf '%-6s %-14s %10s %9s %9s %7.1f%%\n' "$size" "$mode" "$rps" \
            "$p50" "$p99" "$(echo "$rps $base" | awk '{print 100*$1/$2}')"
    done
done
# moderate load: one connection, one request at a time; wrk's latency
# in microseconds, to set the module's added p50/p99 against plain's
echo
echo "== latency, one request at a time (wrk -t1 -c1, ${secs} s each)"
printf '%-6s %-9s %10s %10s %10s %10s\n' body mode 'p50 us' 'p99 us' \
    '+p50 us' '+p99 us'
for size in 1k 20k; do
    b50="" b99=""
    for mode in plain estimate exact; do
        out=$(BODY="$work/body-$size.json" wrk -t1 -c1 -d"${secs}s" \
              --latency -s "$work/post.lua" \
              "http://127.0.0.1:18991/$mode/openai/deployments/gpt-4o/chat/completions")
        us() {
            echo "$out" | awk -v q="$1" '$1 == q {
                v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
                print (u == "ms") ? v * 1000 : (u == "s") ? v * 1e6 : v }'
        }
        p50=$(us 50%) p99=$(us 99%)
        [ -n "$b50" ] || { b50=$p50; b99=$p99; }
        printf '%-6s %-9s %10s %10s %10s %10s\n' "$size" "$mode" "$p50" \
            "$p99" "$(echo "$p50 $b50" | awk '{print $1 - $2}')" \
            "$(echo "$p99 $b99" | awk '{print $1 - $2}')"
    done
done

# this run's nginx only: its master and worker, not any other on the box
master=$(cat "$work/nginx.pid")
rss=$( (ps -o rss= -p "$master"; ps -o rss= --ppid "$master") \
      | sort -n | tail -1)
echo "largest nginx process RSS after the runs: ${rss} KB (vocabulary included)"
kill "$(cat "$work/nginx.pid")"
sleep 1

echo
echo "== instructions per request (callgrind, $n2 requests after 3 to warm up)"

bench_conf "daemon off; master_process off;" \
    "llm_tokenizer o200k_base $vocab/o200k_base.json;" >"$work/cg.conf"

# what the runs above spent of the shared budgets is not this one's
[ -z "${bench_redis:-}" ] || redis-cli -p "$bench_redis" flushall >/dev/null

echo "   by where they go: nginx (and the rest), libc, JSON (the walk,"
echo "   our reader and cJSON), counting (tokenizer, guess, repeat cache),"
echo "   the module's own code; reply: of all those, the reading of the"
echo "   reply (its usage, a stream's texts), calls included"
printf '%-6s %-14s %10s %7s %9s %8s %9s %9s %8s %7s\n' body mode instr/req \
    ratio nginx libc json count module reply
bench_start "$work/cg.conf" 18991
for size in 1k 20k; do
    base=""
    for mode in plain estimate exact nocache hedge sse-plain \
                sse-estimate azure-plain azure-estimate openai-plain \
                openai-estimate limit shared shared-quiet; do
        case $mode in sse-plain|azure-plain|openai-plain) base="" ;; esac
        [ "$mode" != limit ] || base=$plain
        c0=$(bench_redis_commands)
        set -- $(bench_measure 18991 \
                 "/$mode/openai/deployments/gpt-4o/chat/completions" \
                 "$work/body-$size.json" "$n2")
        c1=$(bench_redis_commands)
        [ -n "$base" ] || base=$1
        [ "$mode" != plain ] || plain=$1
        [ "$mode" != shared ] || { shared=$1; shared_cmds=$((c1 - c0)); }
        [ "$mode" != shared-quiet ] \
            || { quiet=$1; quiet_cmds=$((c1 - c0)); }
        printf '%-6s %-14s %10s %6.2fx %9s %8s %9s %9s %8s %7s\n' \
            "$size" "$mode" "$1" "$(echo "$1 $base" | awk '{print $1/$2}')" \
            "$2" "$3" "$4" "$5" "$6" "$7"
    done
    # the reports: what /shared/ cost more than /shared-quiet/, per lease
    # script the measurement saw (each one a budget's report)
    if [ "${shared_cmds:-0}" -gt "${quiet_cmds:-0}" ]; then
        echo "$size $shared $quiet $shared_cmds $quiet_cmds $n2" | awk '{
            printf "%-6s reports to Redis: %d in %d requests, " \
                   "%d instructions each\n", $1, $4 - $5, $6,
                   ($2 - $3) * $6 / ($4 - $5) }'
    fi
done
bench_stop
