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
    trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true
          kill $(cat "$work/redis.pid" 2>/dev/null) 2>/dev/null || true
          [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

    bench_client
    bench_azure_stream
    bench_openai_stream

    # MODULE=FILE.so: another build of the module (bench/variant.sh)
    LLM_MODULE=${MODULE:-$LLM_MODULE}
}

# the same 20-token answer streamed as Azure sends it, written by the
# simulator's own code (tools/aoai_sim): a prompt_filter_results event,
# the role, 20 deltas each with its content_filter_results and
# "usage":null, the finish, the usage, [DONE]; some 10.7 KB, too long
# for a "return" line: $work/azure-stream.txt, served as a file.
# AZURE_FILTERS=all adds the results of three more filters to every
# event (jailbreak, protected material: code and text), 14.7 KB
bench_azure_stream() {
    python3 - "$top/tools" "$work/azure-stream.txt" \
        "${AZURE_FILTERS:-}" <<'PY'
import sys, types
sys.path.insert(0, sys.argv[1])
from aoai_sim import replies
if sys.argv[3] == 'all':
    for name in ('jailbreak', 'protected_material_code',
                 'protected_material_text'):
        replies.FILTER_OK[name] = {'filtered': False, 'detected': False}
call = types.SimpleNamespace(op='chat', include_usage=True, choices=1,
                             prompt_tokens=250)
reply = replies.Reply(call, 'gpt-4o', 20, 'stop', fixed_ids=True)
with open(sys.argv[2], 'wb') as f:
    for _, data, _ in reply.stream_events():
        f.write(data)
PY
}

# the same answer as OpenAI streams it: its ids, service_tier and
# system_fingerprint, "usage":null, and "obfuscation", a string of
# random letters of random length in every event, which OpenAI adds
# (unless stream_options.include_obfuscation is false) so that an
# event's size does not tell its text's; some 7.8 KB in
# $work/openai-stream.txt, the same each run
bench_openai_stream() {
    python3 - "$work/openai-stream.txt" <<'PY'
import json, random, sys
rnd = random.Random(17)
head = {"id": "chatcmpl-CvQx3bT2kS9m4VnE8pLr1uZ0aYdFh",
        "object": "chat.completion.chunk", "created": 1765100000,
        "model": "gpt-4o-2024-08-06", "service_tier": "default",
        "system_fingerprint": "fp_cbf1785567"}
letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
words = ("Nginx passes each request to an upstream server and keeps the "
         "connection open for the next one").split()
def event(choices, usage=None):
    e = dict(head, choices=choices, usage=usage)
    e["obfuscation"] = "".join(rnd.choice(letters)
                               for _ in range(rnd.randint(1, 16)))
    return "data: " + json.dumps(e, separators=(",", ":")) + "\n\n"
def choice(delta, finish=None):
    return [{"index": 0, "delta": delta, "logprobs": None,
             "finish_reason": finish}]
out = [event(choice({"role": "assistant", "content": "",
                     "refusal": None}))]
for i in range(20):
    out.append(event(choice({"content": (" " if i else "")
                                        + words[i % len(words)]})))
out.append(event(choice({}, "stop")))
out.append(event([], {"prompt_tokens": 250, "completion_tokens": 20,
                      "total_tokens": 270,
                      "prompt_tokens_details": {"cached_tokens": 0,
                                                "audio_tokens": 0},
                      "completion_tokens_details": {
                          "reasoning_tokens": 0, "audio_tokens": 0,
                          "accepted_prediction_tokens": 0,
                          "rejected_prediction_tokens": 0}}))
out.append("data: [DONE]\n\n")
open(sys.argv[1], "w").write("".join(out))
PY
}

# a redis-server of the benchmark's own on 18993, for /shared/ (see
# bench_conf), nothing saved to disk
bench_redis() {
    sh "$top/build/deps.sh" redis-server >&2
    redis-server --port 18993 --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$work/redis.pid" --dir "$work" \
        --logfile "$work/redis.log"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        redis-cli -p 18993 ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    bench_redis=18993
}

# the lease scripts Redis has run so far, one a budget's report (0
# without bench_redis; the commands a script runs count apart)
bench_redis_commands() {
    [ -n "${bench_redis:-}" ] || { echo 0; return; }
    redis-cli -p "$bench_redis" info commandstats \
        | awk -F'[=,]' '/^cmdstat_evalsha:/ { print $2 + 0; n = 1 }
                        END { if (!n) print 0 }'
}

# what every benchmark's nginx.conf starts with, up to inside "http {";
# $1 goes at the top (daemon, master_process), and the backend's reply
# is $reply
bench_conf_head() {
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
    keepalive_requests 1000000;
END
}

reply='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":3,"total_tokens":253}}'

# the same answer streamed: 20 chunks of a word, a usage chunk, [DONE]
# (\n is a line feed for nginx's parser, not for the shell)
sse_chunk='data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
sse=''
i=0
while [ $i -lt 20 ]; do sse="$sse$sse_chunk"; i=$((i + 1)); done
sse="${sse}"'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":250,"completion_tokens":20,"total_tokens":270}}\n\ndata: [DONE]\n\n'

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

# the nginx.conf of bench/overhead.sh and bench/latency.sh, one for both
# so that they measure the same configurations: the backend (a server of
# the same nginx, answering $reply, $sse under /sse-*, or the file of
# bench_azure_stream under /azure-*) and, on port
# 18991, /plain/ (proxy_pass), /estimate/, /exact/, /nocache/,
# /sse-plain/, /sse-estimate/, /azure-plain/ and /azure-estimate/; $1
# goes at the top, $2 into "http {"
bench_conf() {
    shared_zone=llm quiet_zone=llm
    [ -z "${bench_redis:-}" ] || { shared_zone=shared; quiet_zone=quiet; }
    bench_conf_head "$1"
    cat <<END
    client_max_body_size 2m;
    client_body_buffer_size 64k;
    $2
    llm_zone llm:1m;
    ${bench_redis:+llm_zone shared:1m redis=redis://127.0.0.1:$bench_redis;}
    ${bench_redis:+llm_zone quiet:1m redis=redis://127.0.0.1:$bench_redis
                                     redis_sync=10s;}

    # a backend with limits, alone and in a zone shared through Redis
    upstream limited {
        llm_balance zone=llm keepalive=32;
        llm_backend be http://127.0.0.1:18992 tpm=100m rpm=10m;
    }

    upstream shared {
        llm_balance zone=$shared_zone keepalive=32;
        llm_backend be http://127.0.0.1:18992 tpm=100m rpm=10m;
    }

    upstream quiet {
        llm_balance zone=$quiet_zone keepalive=32;
        llm_backend be http://127.0.0.1:18992 tpm=100m rpm=10m;
    }

    upstream backend {
        server 127.0.0.1:18992;
        keepalive 32;
    }

    upstream pool {
        llm_balance zone=llm keepalive=32;
        llm_backend be http://127.0.0.1:18992;
    }

    # llm_hedge needs two backends: the same server under two names
    upstream pair {
        llm_balance zone=llm keepalive=32;
        llm_backend one http://127.0.0.1:18992;
        llm_backend two http://127.0.0.1:18992;
    }

    server {
        listen 127.0.0.1:18992;
        location / {
            default_type application/json;
            return 200 '$reply';
        }
        location ~ ^/sse- {
            default_type text/event-stream;
            return 200 '$sse';
        }
        # a file refuses POST (405): answered with the file instead
        location /azure- {
            error_page 405 =200 /azure-stream.txt;
            return 405;
        }
        location = /azure-stream.txt {
            default_type text/event-stream;
            root $work;
        }
        location /openai- {
            error_page 405 =200 /openai-stream.txt;
            return 405;
        }
        location = /openai-stream.txt {
            default_type text/event-stream;
            root $work;
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

        # estimate with llm_hedge, whose delay never passes here: what
        # running the attempt as a subrequest costs
        location /hedge/ {
            llm_route pair;
            llm_count estimate;
            llm_hedge after=60s;
            proxy_pass http://pair;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # the same with a streamed (SSE) answer of 22 events
        location /sse-plain/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /sse-estimate/ {
            llm_route pool;
            llm_count estimate;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # the same with the stream as Azure sends it (bench_azure_stream)
        location /azure-plain/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /azure-estimate/ {
            llm_route pool;
            llm_count estimate;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # and as OpenAI sends it (bench_openai_stream)
        location /openai-plain/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /openai-estimate/ {
            llm_route pool;
            llm_count estimate;
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # estimate with a consumer limit and a limited backend; the same
        # in a zone shared through Redis when bench_redis started one
        location /limit/ {
            llm_route limited;
            llm_count estimate;
            llm_limit bench tpm=100m rpm=10m;
            proxy_pass http://limited;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        location /shared/ {
            llm_route shared;
            llm_count estimate;
            llm_limit bench tpm=100m rpm=10m;
            proxy_pass http://shared;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # the same with reports every 10 s: the request's own path only
        location /shared-quiet/ {
            llm_route quiet;
            llm_count estimate;
            llm_limit bench tpm=100m rpm=10m;
            proxy_pass http://quiet;
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

# One nginx process (no master, no daemon) under callgrind for all the
# measurements of a configuration: loading a vocabulary under callgrind
# takes a minute, so it is done once.  Each measurement dumps the
# counters after a few warm-up requests, sends N requests and dumps them
# again: the second dump holds those N requests and nothing else.
#   bench_start CONF PORT; bench_measure PORT URI BODY N ...; bench_stop
bench_start() {
    rm -f "$work"/callgrind.out*
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
        "$LLM_NGINX" -p "$work" -c "$1" 2>/dev/null &
    vg=$!
    i=0
    while ! perl -MIO::Socket::INET -e \
        "exit !IO::Socket::INET->new('127.0.0.1:$2')" 2>/dev/null; do
        sleep 0.5; i=$((i + 1)); [ $i -lt 600 ] || { echo "no start"; exit 1; }
    done
}

bench_stop() {
    kill -QUIT $vg
    wait $vg 2>/dev/null || true
}

# instructions per request, in all and by where they were spent (see
# bench_groups): bench_measure PORT URI BODY N
bench_measure() {
    perl "$work/client.pl" "$1" "$2" "$3" 3
    # a dump zeroes the counters; the first one after start-up still
    # holds costs from before (its cost lines add up to more than its
    # summary): it is thrown away
    callgrind_control -d $vg >/dev/null 2>&1
    rm -f "$work"/callgrind.out.*
    perl "$work/client.pl" "$1" "$2" "$3" "$4"
    callgrind_control -d $vg >/dev/null 2>&1
    dump=$(ls -t "$work"/callgrind.out.* | head -1)
    set -- "$4" $(awk '/^summary:/ {print $2}' "$dump") \
           $(bench_groups "$dump")
    rm -f "$dump"
    echo "$@" | awk '{
        for (i = 2; i <= 8; i++)
            printf "%d%s", $i / $1, i < 8 ? " " : "\n" }'
}


# the instructions of a callgrind dump by where they were spent: nginx
# with everything else, libc, JSON (the walk, our reader, cJSON),
# counting (the tokenizer, the guess, the repeat cache), the module's
# own code; and, across those, the reading of the reply
# (ngx_http_llm_scan() and all it calls: usage, a stream's texts)
bench_groups() {
    # self costs from the file itself: a cost line after "calls=" is the
    # call's inclusive cost and is skipped; names are compressed as
    # "(id) name" the first time, "(id)" after
    awk '
        function name(kind, v,    id) {
            if (v ~ /^\([0-9]+\)/) {
                id = kind substr(v, 1, index(v, ")"))
                if (index(v, ") ") > 0) names[id] = substr(v, index(v, ") ") + 2)
                return names[id]
            }
            return v
        }
        /^ob=/ { ob = name("o", substr($0, 4)); next }
        /^fl=/ { fl = name("f", substr($0, 4)); next }
        /^f[ie]=/ { name("f", substr($0, 4)); next }
        /^cob=/ { name("o", substr($0, 5)); next }
        /^cf[il]=/ { name("f", substr($0, 5)); next }
        /^cfn=/ { name("n", substr($0, 5)); next }
        /^fn=/ {
            fn = name("n", substr($0, 4))
            g = "nginx"
            if (ob ~ /libcjson/ || fl ~ /ngx_http_llm_(json|walk)/) g = "json"
            else if (fl ~ /ngx_http_llm_(tokenizer|unicode|script|vocab)/)
                g = "count"
            else if (fl ~ /ngx_http_llm_/ || fn ~ /^ngx_http_llm_/)
                g = "module"
            else if (ob ~ /libc\.so/) g = "libc"
            next
        }
        /^calls=/ { skip = 1; next }
        /^[0-9+*-]/ {
            # the reply'"'"'s reading, calls included
            if (fn == "ngx_http_llm_scan") scan += $2
            if (skip) { skip = 0; next }
            sum[g] += $2
        }
        END {
            printf "%d %d %d %d %d %d\n", sum["nginx"], sum["libc"],
                   sum["json"], sum["count"], sum["module"], scan
        }' "$1"
}
