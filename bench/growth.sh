#!/bin/sh
# How the module's cost grows, in callgrind instructions per request
# (repeatable to the instruction; see bench/overhead.sh for the ratio to
# plain nginx and wrk's requests/s):
#   - with the number of backends in a pool: 1, 8, 64 (1 KB body);
#   - with the body: 1 KB to 1 MB, plain proxying, llm_count estimate,
#     exact counting with the repeat cache warm, and without it;
#   - with the consumers of llm_limit in the zone: 1, 1,000, 100,000
#     distinct keys warmed in before measuring (1 KB body, estimate);
# and the largest worker's memory after the bodies were sent, and after
# the consumers were warmed in.
#
#   bench/growth.sh [backends] [body] [consumers] [memory]
#
# Without arguments, every part.  CONSUMERS="1 1000" measures fewer
# consumers (100,000 take a few minutes to warm in).
set -eu

parts=${*:-backends body consumers memory}
consumers=${CONSUMERS:-1 1000 100000}

want() {
    case " $parts " in
    *" $1 "*) return 0 ;;
    esac
    return 1
}

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
    llm_zone consumers:80m;
    llm_tokenizer o200k_base $vocab/o200k_base.json;

$(pool 1)
$(pool 8)
$(pool 64)

    # the measured requests carry no X-App: they are app-1's
    map \$http_x_app \$app {
        ""       app-1;
        default  \$http_x_app;
    }

    upstream pc {
        llm_balance zone=consumers keepalive=8;
        llm_backend b1 http://127.0.0.1:18982 tpm=100m rpm=10m;
    }

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
$(location consumers pc "llm_count estimate; llm_limit \$app tpm=100m;")
    }
}
END
}

conf "daemon off; master_process off;" >"$work/cg.conf"
uri=/openai/deployments/gpt-4o/chat/completions

# keepalive requests whose X-App goes from key FROM to key TO: the
# consumers warmed into the zone
cat >"$work/keys.pl" <<'PL'
use strict; use IO::Socket::INET;
my ($port, $uri, $file, $from, $to) = @ARGV;
open my $f, '<', $file or die; local $/; my $body = <$f>; close $f;
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "$!";
for my $k ($from .. $to) {
    print $s "POST $uri HTTP/1.1\r\nHost: x\r\nX-App: app-$k\r\n"
           . "Content-Type: application/json\r\n"
           . "Content-Length: " . length($body) . "\r\n\r\n$body";
    my $buf = '';
    while ($buf !~ /\r\n\r\n/ || length($buf) < index($buf, "\r\n\r\n") + 4
           + ($buf =~ /Content-Length: (\d+)/i ? $1 : 0)) {
        sysread($s, $buf, 65536, length $buf) or die "closed";
    }
    die "status: $buf" unless $buf =~ m{^HTTP/1.1 200};
}
PL

# warm_keys PORT N: consumers app-1 .. app-N in the zone (those already
# there are not sent again)
warmed=0
warm_keys() {
    if [ "$2" -gt $warmed ]; then
        perl "$work/keys.pl" "$1" "/consumers$uri" "$work/body-1k.json" \
            $((warmed + 1)) "$2"
        warmed=$2
    fi
}

if want backends || want body || want consumers; then
    bench_start "$work/cg.conf" 18981
fi

if want backends; then
    echo "== backends in the pool (1 KB body), instructions per request"
    printf '%-9s %10s %10s %10s\n' mode 1 8 64
    for mode in estimate exact; do
        row=""
        for n in 1 8 64; do
            set -- $(bench_measure 18981 "/$mode$n$uri" \
                                   "$work/body-1k.json" 100)
            row="$row $1"
        done
        printf '%-9s %10s %10s %10s\n' $mode $row
    done
    echo
fi

if want body; then
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
            set -- $(bench_measure 18981 "/$mode$uri" \
                                   "$work/body-$size.json" $n)
            row="$row $1"
        done
        printf '%-9s %12s %12s %12s %12s\n' "${mode%1}" $row
    done
    echo
fi

if want consumers; then
    # warming runs without instrumentation: only the measured requests
    # (app-1, the oldest consumer, found in a zone of N) are counted
    echo "== consumers of llm_limit in the zone (1 KB body, estimate)," \
         "instructions per request"
    printf '%-9s' consumers
    for n in $consumers; do
        printf ' %10s' "$n"
    done
    printf '\n'
    row=""
    for n in $consumers; do
        callgrind_control -i off $vg >/dev/null 2>&1
        warm_keys 18981 "$n"
        callgrind_control -i on $vg >/dev/null 2>&1
        set -- $(bench_measure 18981 "/consumers$uri" \
                               "$work/body-1k.json" 100)
        row="$row $1"
    done
    printf '%-9s' limit
    for v in $row; do
        printf ' %10s' "$v"
    done
    printf '\n'
    echo
fi

if want backends || want body || want consumers; then
    bench_stop
fi

want memory || exit 0

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

# shared memory counts in RSS once the worker has touched it
echo
echo "== memory: the worker's RSS with consumers of llm_limit in the zone"
printf '%-9s %10s\n' consumers 'RSS KB'
warmed=0
for n in $consumers; do
    warm_keys 18981 "$n"
    printf '%-9s %10s\n' "$n" "$(ps -o rss= -p "$worker")"
done
