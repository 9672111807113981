#!/bin/sh
# The module's JSON reader against cJSON 1.7.15 on the benchmark's chat
# bodies: user-space instructions per byte (callgrind, repeatable) and
# the fastest of N parses on the clock (noisy on a shared machine).
# The reader allocates from an arena, as it does from the worker's pool
# in nginx; cJSON mallocs and frees, as it would without our hooks.
#
#   bench/json.sh [N]
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-200}

sh "$top/build/deps.sh" valgrind libcjson-dev python3 >&2
work=$(mktemp -d /tmp/llm-json-XXXXXX)
trap 'rm -rf "$work"' EXIT

cc -O2 -std=c99 -Wall -Wextra -Werror -I"$top/src" -o "$work/json-bench" \
    "$top/bench/json_bench.c" "$top/src/ngx_http_llm_json_reader.c" -lcjson

# the bodies of bench/overhead.sh, and Japanese as Python's json.dumps
# escapes it (\uXXXX), the way SDKs send it
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
turn = ("how nginx proxies a request to an upstream server and "
        "what keepalive changes. ")
ja = "\u65e5\u672c\u306e\u9996\u90fd\u306f\u3069\u3053\u3067\u3059\u304b\u3002"
def body(size, text):
    msgs = [{"role": "system", "content": "You are a helpful assistant."}]
    i = 0
    while len(json.dumps({"messages": msgs})) < size - 60:
        msgs.append({"role": "user" if i % 2 == 0 else "assistant",
                     "content": "Step %d: %s" % (i, text * 2)})
        i += 1
    return json.dumps({"model": "gpt-4o", "messages": msgs,
                       "max_tokens": 100})
for name, size, text in (("1k", 1024, turn), ("20k", 20480, turn),
                         ("20k-ja", 20480, ja * 4)):
    open("%s/%s.json" % (work, name), "w").write(body(size, text))
PY

printf '%-8s %8s %14s %14s %9s %12s %12s\n' body bytes 'reader instr' \
    'cJSON instr' ratio 'reader MB/s' 'cJSON MB/s'
for body in 1k 20k 20k-ja; do
    f=$work/$body.json
    bytes=$(wc -c <"$f")
    for how in reader cjson; do
        # instructions of 1 parse and of 11: the difference is 10 parses
        for k in 1 11; do
            valgrind --tool=callgrind --callgrind-out-file="$work/cg" \
                "$work/json-bench" "$how" "$f" "$k" >/dev/null 2>&1
            eval "i$k=\$(awk '/^summary:/ {print \$2}' \"$work/cg\")"
        done
        eval "ins_$how=\$(( (i11 - i1) / 10 ))"
        eval "mbs_$how=\$(\"$work/json-bench\" $how \"$f\" $n |
                          awk '{print \$(NF - 1)}')"
    done
    printf '%-8s %8s %14s %14s %8.2fx %12s %12s\n' "$body" "$bytes" \
        "$ins_reader" "$ins_cjson" \
        "$(echo "$ins_cjson $ins_reader" | awk '{print $1 / $2}')" \
        "$mbs_reader" "$mbs_cjson"
done
