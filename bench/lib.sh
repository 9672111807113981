# Shared by the benchmark scripts (sourced, not run): a work directory,
# chat bodies of given sizes, and instructions per request measured
# with callgrind.  Expects $top.

bench_setup() {
    sh "$top/build/deps.sh" wrk valgrind >&2
    . "$(sh "$top/build/nginx.sh" 1.22)"
    sh "$top/build/tokenizer.sh" >/dev/null
    vocab=$top/.build/npm/node_modules/tiktoken/encoders

    work=$(mktemp -d /tmp/llm-bench-XXXXXX)
    chmod 755 "$work"
    mkdir -p "$work/logs"
    trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null
          [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

    bench_client
}

# chat conversations of about the given sizes (1k, 20k, 1m ...), every
# message its own text, as in a real conversation:
# $work/body-SIZE.json
bench_bodies() {
    python3 - "$work" "$@" <<'PY'
import json, sys
work = sys.argv[1]
turn = ("how nginx proxies a request to an upstream server and "
        "what keepalive changes. ")
def body(size):
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    i = 0
    while len(json.dumps({"messages": msgs})) < size - 60:
        msgs.append({"role": "user" if i % 2 == 0 else "assistant",
                     "content": "Step %d: explain %s" % (i, turn * 2)})
        i += 1
    return json.dumps({"model": "gpt-4o", "messages": msgs,
                       "max_tokens": 100})
units = {"k": 1024, "m": 1024 * 1024}
for name in sys.argv[2:]:
    size = int(name[:-1]) * units[name[-1]]
    open("%s/body-%s.json" % (work, name), "w").write(body(size))
PY
}

# a keepalive client sending N requests one after another
bench_client() {
    cat >"$work/client.pl" <<'PL'
use strict; use IO::Socket::INET;
my ($port, $uri, $file, $n) = @ARGV;
open my $f, '<', $file or die; local $/; my $body = <$f>; close $f;
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "$!";
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
}

# total instructions of one nginx process (no master, no daemon) under
# callgrind serving N requests: bench_instr CONF PORT URI BODY N
bench_instr() {
    rm -f "$work"/callgrind.out
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
        "$LLM_NGINX" -p "$work" -c "$1" 2>/dev/null &
    vg=$!
    i=0
    while ! perl -MIO::Socket::INET -e \
        "exit !IO::Socket::INET->new('127.0.0.1:$2')" 2>/dev/null; do
        sleep 0.5; i=$((i + 1)); [ $i -lt 240 ] || { echo "no start"; exit 1; }
    done
    perl "$work/client.pl" "$2" "$3" "$4" "$5"
    kill -QUIT $vg
    wait $vg 2>/dev/null || true
    awk '/^summary:/ {print $2}' "$work/callgrind.out"
}

# instructions per request: the difference of N2 and N1 requests, so
# start-up and exit cancel out
bench_per_request() {
    a=$(bench_instr "$1" "$2" "$3" "$4" "$5")
    b=$(bench_instr "$1" "$2" "$3" "$4" "$6")
    echo $(( (b - a) / ($6 - $5) ))
}
