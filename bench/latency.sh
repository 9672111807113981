#!/bin/sh
# Latency the module adds to plain nginx proxying at moderate load, with
# the noise of a shared machine in view:
#
#   sh bench/latency.sh [rounds] [seconds per slice] [connections] [delay ms]
#
# Defaults 8 4 4 1: 8 rounds x 4 configurations x 4 s, a little over two
# minutes.  With no delay (sh bench/latency.sh 8 3 8 0) the connections
# saturate nginx, and the requests/s ratio to plain of the same round is
# the throughput the module keeps, measured with the same controls.
# Each slice also reads the CPU time the worker ran (schedstat), per
# request: at moderate load, what a request costs; saturated, about the
# inverse of requests/s (the worker is never idle), and as noisy on a
# shared VM, where the time the host takes the CPU away counts as run
# time.  BODY=20k takes another body size; PIN=0, PRIO=nice or none,
# SPIN=0 turn off the noise controls below one by one, and
# MODE=production turns them all off: the machine as a production host
# runs nginx, no CPU pinned, no busy loops, normal priority (what a user
# sees, AVX power-up and idle CPUs' wake-ups included).
#
# One nginx 1.22.1 binary (build/nginx.sh), the same backend (a server
# of the same nginx returning a chat completion) and the same locations
# as bench/overhead.sh, 1 KB chat body:
#   plain     proxy_pass to the backend (upstream keepalive)
#   estimate  llm_route with llm_count estimate, through llm_balance
#   exact     llm_route with exact o200k_base counting, repeat cache warm
#   plain2    plain again: an A/A control, whose difference from plain
#             is the method's own noise (and bias) on this machine
# CONFIGS="..." picks others among bench/overhead.sh's locations (the
# first is the one the others are set against, e.g. CONFIGS="sse-plain
# sse-estimate"), and VARIANT=FILE.so starts a second nginx with that
# build of the module (bench/variant.sh) on ports 18981-18982, whose
# configurations are named with "@v": VARIANT=/tmp/sse2.so
# CONFIGS="plain estimate estimate@v plain2" weighs two builds of the
# estimate in the same rounds.
#
# Load: wrk -t1 with 4 keepalive connections, each waiting a fixed
# delay (wrk's Lua delay() hook, whole ms) after every reply before its
# next request: with 4 x 1 ms about 2,800 requests/s, a sixth of what
# plain nginx serves here at saturation, so requests rarely queue behind
# one another.  wrk times a request from its write to its reply; the
# delay is not in the latency.  Debian's wrk has no -R (that is wrk2):
# the rate is set by the think time, not by a schedule.
#
# Noise: the configurations are interleaved in short slices, in an order
# rotated and reversed from round to round (each comes first, last and
# after each of the others), so a burst from another process hits a
# slice, not a configuration.  Each slice gives its own p50/p99/p99.9
# (wrk's done() hook, microseconds); the report is the median over
# rounds of each configuration's figures and of the per-round
# differences (configuration minus plain of the same round), with the
# interquartile range and the extremes (and with SPIN=0 the CPU
# pressure of the machine over the run, /proc/pressure/cpu).  The
# requests/s ratio also gets a 95 % confidence interval of its median
# (order statistics, no assumption on the distribution): the interval
# narrows with the square root of the rounds, so a claim such as "at
# least 95 % of plain" is made by running rounds until the interval
# clears the line or crosses it.
#
# Noise controls, measured on the project's shared 2-core machine (a
# VM) while other sessions ran tests and fuzzers:
# - Idle spinners (SPIN=1): a busy loop on each CPU at SCHED_IDLE,
#   which every other task preempts at once.  Most of the p99 here is
#   not nginx's: at moderate load the CPUs go idle between requests,
#   the VM's CPUs halt, and waking one takes the hypervisor up to
#   milliseconds.  Kept awake, plain's p99 was 370-420 us against
#   1.3-2.6 ms, and the A/A difference of p99 had an interquartile range
#   of tens of us against about 1 ms (4 rounds x 2 s, alternated).  The
#   loops take only time nobody else wants, but they do keep both CPUs
#   at 100 % for the run.
# - SCHED_FIFO 50 for nginx and wrk (chrt, PRIO=rt): a request no
#   longer waits behind another process's time slice.  Under others'
#   load, plain's p99 0.4-0.8 ms against 3.5-8.6 ms at normal priority
#   and 1.8 ms with nice -20 (6 rounds x 2 s each).  The kernel's
#   real-time throttling (95 %) keeps the machine usable; at this load
#   nginx and wrk take a fraction of a CPU.  Needs root; without it the
#   script runs at normal priority.
# - Pinning (taskset, PIN=1: nginx, master and its one worker, which
#   serves both the proxy and the backend, on CPU 0, wrk on CPU 1) made
#   the A/A difference of p50 tighter (interquartile range about 15 us
#   against about 40 us unpinned) and did not measurably change p99's.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-8}
secs=${2:-4}
conns=${3:-4}
delay=${4:-1}
if [ "${MODE:-}" = production ]; then
    PIN=0 PRIO=none SPIN=0
fi
pin=${PIN:-1}
prio=${PRIO:-rt}
spin=${SPIN:-1}
size=${BODY:-1k}
configs=${CONFIGS:-plain estimate exact plain2}

# shellcheck source=bench/lib.sh
. "$top/bench/lib.sh"
bench_setup
bench_bodies "$size"

if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    on_nginx="taskset -c 0" on_wrk="taskset -c 1"
    pinning="nginx on CPU 0, wrk on CPU 1"
else
    on_nginx="" on_wrk="" pinning="not pinned"
fi
# idle spinners: one busy loop a CPU at SCHED_IDLE, which any other
# task preempts, so that no CPU halts (see the header)
spinners=""
trap 'kill $spinners $(cat "$work/nginx.pid" "$work/nginx-v.pid" 2>/dev/null) \
          2>/dev/null || true
      [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
trap 'exit 1' INT TERM
if [ "$spin" = 1 ]; then
    c=0
    while [ $c -lt "$(nproc)" ]; do
        taskset -c $c chrt -i 0 sh -c 'while :; do :; done' &
        spinners="$spinners $!"
        c=$((c + 1))
    done
    idle=", CPUs kept awake"
else
    idle=""
fi

# real-time priority needs root (CAP_SYS_NICE): without it, none
[ "$prio" != rt ] || chrt -f 50 true 2>/dev/null || prio=none
case $prio in
nice) on_nginx="$on_nginx nice -n -20" on_wrk="$on_wrk nice -n -20"
      pinning="$pinning, nice -20" ;;
rt)   on_nginx="$on_nginx chrt -f 50" on_wrk="$on_wrk chrt -f 50"
      pinning="$pinning, SCHED_FIFO 50" ;;
*)    ;;
esac

bench_conf "daemon on;" "llm_tokenizer o200k_base $vocab/o200k_base.json;" \
    >"$work/nginx.conf"

cat >"$work/latency.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
wrk.headers["Content-Type"] = "application/json"
f:close()
local ms = tonumber(os.getenv("DELAY_MS"))
function delay() return ms end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("%d %d %d %d %d %d\n", summary.requests,
        summary.duration, e.connect + e.read + e.write + e.status
        + e.timeout, latency:percentile(50), latency:percentile(99),
        latency:percentile(99.9)))
end
LUA

# shellcheck disable=SC2086
$on_nginx "$LLM_NGINX" -p "$work" -c "$work/nginx.conf"
if [ -n "${VARIANT:-}" ]; then
    sed -e "s|^load_module .*|load_module $VARIANT;|" \
        -e 's|18991|18981|; s|18992|18982|' \
        -e "s|$work/nginx.pid|$work/nginx-v.pid|" \
        -e "s|$work/error.log|$work/error-v.log|" \
        "$work/nginx.conf" >"$work/nginx-v.conf"
    # shellcheck disable=SC2086
    $on_nginx "$LLM_NGINX" -p "$work" -c "$work/nginx-v.conf"
fi
sleep 1

# each instance's worker (it serves the proxy and the backend alike) and
# the time it has run on a CPU, nanoseconds (/proc/PID/schedstat, exact
# where the clock ticks of /proc/PID/stat are 10 ms)
worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
[ -z "${VARIANT:-}" ] \
    || worker_v=$(pgrep -P "$(cat "$work/nginx-v.pid")" | head -1)
ran() {
    cut -d' ' -f1 "/proc/$1/schedstat"
}

# one slice: slice CONFIG SECONDS prints
#   requests/s p50 p99 p99.9 (us) CPU-per-request (ns)
slice() {
    loc=${1%@v} port=18991 w=$worker
    [ "$loc" = "$1" ] || port=18981 w=$worker_v
    [ "$loc" = plain2 ] && loc=plain
    cpu0=$(ran "$w")
    # shellcheck disable=SC2086
    out=$(BODY="$work/body-$size.json" DELAY_MS=$delay $on_wrk \
          wrk -t1 -c"$conns" -d"${2}s" -s "$work/latency.lua" \
          "http://127.0.0.1:$port/$loc/openai/deployments/gpt-4o/chat/completions" \
          | tail -1)
    cpu1=$(ran "$w")
    echo "$out" | awk -v c="$1" -v cpu=$((cpu1 - cpu0)) '{
        if ($3 != 0) { print c ": " $3 " errors" > "/dev/stderr"; exit 1 }
        printf "%.0f %d %d %d %.0f\n", $1 / ($2 / 1e6), $4, $5, $6,
               cpu / $1 }'
}

echo "== added latency, $size body: $rounds rounds x $secs s per" \
     "configuration, order rotated"
echo "   wrk -t1 -c$conns, ${delay} ms between a reply and the next" \
     "request; $pinning$idle"

# the time some task waited for a CPU (ours included), microseconds
stalled() {
    awk -F'total=' '/^some/ {print $2}' /proc/pressure/cpu 2>/dev/null \
        || echo 0
}

# warm-up: connections, the repeat cache, the worker's pools
for c in $configs; do slice "$c" 1 >/dev/null; done

: >"$work/slices"
stall0=$(stalled) t0=$(date +%s)
r=0
while [ $r -lt "$rounds" ]; do
    # rotate the order by one configuration every two rounds, and run
    # it backwards every other round: over 8 rounds each configuration
    # comes first twice, last twice and after each of the others
    order=$(echo "$configs" | awk -v r=$r '{
        k = int(r / 2)
        for (i = 0; i < NF; i++)
            printf "%s ", $((r % 2 ? NF - 1 - i + k : i + k) % NF + 1) }')
    for c in $order; do
        echo "$r $c $(slice "$c" "$secs")" >>"$work/slices"
    done
    r=$((r + 1))
done

stall1=$(stalled) t1=$(date +%s)

python3 - "$work/slices" "$configs" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
configs = sys.argv[2].split()
by = {}  # (config, round) -> [rps, p50, p99, p999, cpu ns/request]
for r, c, *v in rows:
    by[(c, int(r))] = [float(x) for x in v]
rounds = sorted({k[1] for k in by})

def q(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    i = int(k)
    return xs[i] if i + 1 >= len(xs) else xs[i] + (xs[i + 1] - xs[i]) * (k - i)

def cell(xs):
    return "%6.0f [%4.0f-%4.0f]" % (q(xs, .5), q(xs, .25), q(xs, .75))

print("\nper configuration, microseconds: median over rounds"
      " [interquartile range]")
print("%-9s %7s  %-18s %-18s %-18s" % ("config", "req/s", "p50", "p99",
                                        "p99.9"))
for c in configs:
    v = [by[(c, r)] for r in rounds]
    print("%-9s %7.0f  %-18s %-18s %-18s" % (c, q([x[0] for x in v], .5),
          cell([x[1] for x in v]), cell([x[2] for x in v]),
          cell([x[3] for x in v])))

# a 95 % confidence interval of a median, free of any assumption on
# the distribution: the order statistics whose ranks the binomial
# distribution of n fair coins puts 1.96 standard deviations from n/2
def ci(xs):
    xs = sorted(xs)
    n = len(xs)
    h = 1.96 * n ** .5 / 2
    lo, hi = int(n / 2 - h), int(n / 2 + h + 1)
    if lo < 0 or hi >= n:
        return "   (too few)  "
    return "<%5.1f-%5.1f>" % (xs[lo], xs[hi])

print("\nrequests/s against %s of the same round: median" % configs[0] +
      " [interquartile range] <95 % confidence\ninterval of the median>"
      " (min to max)")
for c in configs[1:]:
    x = [100 * by[(c, r)][0] / by[(configs[0], r)][0] for r in rounds]
    print("%-9s %5.1f %% [%5.1f-%5.1f] %s (%5.1f to %5.1f)" % (c,
          q(x, .5), q(x, .25), q(x, .75), ci(x), min(x), max(x)))

print("\nCPU time of the worker per request (it serves the backend too),"
      " microseconds: median [interquartile range];\n%s's over the"
      " configuration's, same round" % configs[0])
for c in configs:
    x = [by[(c, r)][4] / 1000 for r in rounds]
    y = [100 * by[(configs[0], r)][4] / by[(c, r)][4] for r in rounds]
    print("%-9s %6.2f [%5.2f-%5.2f] us   %5.1f %% [%5.1f-%5.1f]" % (c,
          q(x, .5), q(x, .25), q(x, .75), q(y, .5), q(y, .25), q(y, .75)))

print("\nadded to %s of the same round, microseconds: median" % configs[0] +
      " [interquartile range] (min to max)")
print("%-9s %-29s %-29s %s" % ("config", "+p50", "+p99", "rounds +p99<=100"))
for c in configs[1:]:
    d = [[by[(c, r)][i] - by[(configs[0], r)][i] for r in rounds]
         for i in (1, 2)]
    cells = ["%s (%+.0f to %+.0f)" % (cell(x), min(x), max(x)) for x in d]
    print("%-9s %-29s %-29s %d/%d" % (c, cells[0], cells[1],
          sum(x <= 100 for x in d[1]), len(rounds)))
PY

# (with the spinners, which wait whenever anything else runs, it says
# nothing about the others)
[ "$spin" = 1 ] || echo "$stall0 $stall1 $t0 $t1" | awk '$2 > 0 && $4 > $3 {
    printf "\nCPU pressure over the rounds: some task waited for a CPU %.0f %%" \
           " of the time (/proc/pressure/cpu)\n",
           100 * ($2 - $1) / 1e6 / ($4 - $3) }'
kill "$(cat "$work/nginx.pid")"
[ -z "${VARIANT:-}" ] || kill "$(cat "$work/nginx-v.pid")"
