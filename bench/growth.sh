#!/bin/sh
# How the module's cost grows, in callgrind instructions per request
# (repeatable to the instruction; see bench/overhead.sh for the ratio to
# plain nginx and wrk's requests/s):
#   - with the number of backends in a pool: 1, 8, 64 (1 KB body);
#   - with the body: 1 KB to 1 MB, plain proxying, llm_count estimate,
#     exact counting with the repeat cache warm, and without it;
# and the largest worker's memory after the bodies were sent.
#
#   bench/growth.sh
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/lib.sh"
bench_setup
bench_bodies 1k 10k 100k 1m

pool() {
    echo "    upstream p$1 {"
    echo "        llm_balance zone=llm keepalive=8;"
    i=1
    while [ $i -le "$1" ]; do
        echo "        llm_backend b$i http://127.0.0.1:18982 tpm=100m rpm=10m;"
        i=$((i + 1))
    done
    echo "    }"
}

location() {
    cat <<END
        location /$1/ {
            llm_route $2;
            $3
            proxy_pass http://$2;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
END
}

conf() {
    bench_conf_head "$1"
    cat <<END
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    llm_max_body_size 4m;
    llm_zone llm:4m;
    llm_tokenizer o200k_base $vocab/o200k_base.json;

$(pool 1)
$(pool 8)
$(pool 64)

    upstream plain {
        server 127.0.0.1:18982;
        keepalive 8;
    }

    server {
        listen 127.0.0.1:18982;
        location / {
            default_type application/json;
            return 200 '$reply';
        }
    }

    server {
        listen 127.0.0.1:18981;
        location /plain/ {
            proxy_pass http://plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
$(location estimate1 p1 "llm_count estimate;")
$(location estimate8 p8 "llm_count estimate;")
$(location estimate64 p64 "llm_count estimate;")
$(location exact1 p1 "")
$(location exact8 p8 "")
$(location exact64 p64 "")
$(location nocache1 p1 "llm_count_cache off;")
    }
}
END
}

conf "daemon off; master_process off;" >"$work/cg.conf"
uri=/openai/deployments/gpt-4o/chat/completions

bench_start "$work/cg.conf" 18981

echo "== backends in the pool (1 KB body), instructions per request"
printf '%-9s %10s %10s %10s\n' mode 1 8 64
for mode in estimate exact; do
    row=""
    for n in 1 8 64; do
        set -- $(bench_measure 18981 "/$mode$n$uri" "$work/body-1k.json" 100)
        row="$row $1"
    done
    printf '%-9s %10s %10s %10s\n' $mode $row
done

echo
echo "== body size (1 backend), instructions per request"
printf '%-9s %12s %12s %12s %12s\n' mode 1k 10k 100k 1m
for mode in plain estimate1 exact1 nocache1; do
    row=""
    for size in 1k 10k 100k 1m; do
        case $size in
        1m) n=4 ;;
        100k) n=20 ;;
        *) n=100 ;;
        esac
        set -- $(bench_measure 18981 "/$mode$uri" "$work/body-$size.json" $n)
        row="$row $1"
    done
    printf '%-9s %12s %12s %12s %12s\n' "${mode%1}" $row
done
bench_stop

echo
echo "== memory: the worker's RSS after 20 requests of each body"
conf "daemon on;" >"$work/nginx.conf"
"$LLM_NGINX" -p "$work" -c "$work/nginx.conf"
sleep 1
worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
printf '%-9s %10s\n' after 'RSS KB'
printf '%-9s %10s\n' start "$(ps -o rss= -p "$worker")"
for size in 1k 10k 100k 1m; do
    for mode in estimate1 exact1; do
        perl "$work/client.pl" 18981 "/$mode$uri" "$work/body-$size.json" 20
    done
    printf '%-9s %10s\n' "$size" "$(ps -o rss= -p "$worker")"
done
