#!/bin/sh
# The package as a user installs it: a fresh Debian root of this
# machine's release (debootstrap, minbase), "apt-get install ./the.deb
# nginx" in it, then its nginx with the module enabled from
# modules-enabled/ and the packaged vocabularies: "nginx -t", a chat
# request counted exactly and routed to the simulator, "nginx -s reload",
# another request.  Nothing from npm is in that root.
#
#   build/deb-check.sh [DEB]      (default: build/deb.sh builds one)
#
# chroot shares the network: the simulator and curl run here, nginx in
# the root, all on loopback.  Needs root.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

if [ "$(id -u)" != 0 ]; then
    echo "build/deb-check.sh: debootstrap and chroot need root" >&2
    exit 1
fi

deb=${1:-$(sh build/deb.sh)}
sh build/deps.sh debootstrap python3 curl >&2
sh build/tokenizer.sh >/dev/null

. /etc/os-release
suite=$VERSION_CODENAME
root=$top/.build/deb-root
mirror=$(sh build/apt-mirror.sh)

pids=""
cleanup() {
    [ -f "$root/run/nginx.pid" ] && chroot "$root" nginx -s stop 2>/dev/null
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill $pids 2>/dev/null
    true
}
trap cleanup EXIT

fail() {
    echo "build/deb-check.sh: $*" >&2
    exit 1
}

rm -rf "$root"
mkdir -p "$root"
echo "debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" \
    >"$top/.build/deb-root.log" 2>&1 \
    || { tail -20 "$top/.build/deb-root.log" >&2; exit 1; }
chmod 755 "$root"

# a root's packages must not start daemons on the host's ports
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

cp "$deb" "$root/tmp/"
chroot "$root" sh -c "apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends /tmp/$(basename "$deb") nginx" \
    >>"$top/.build/deb-root.log" 2>&1 \
    || { tail -20 "$top/.build/deb-root.log" >&2; exit 1; }

chroot "$root" sh -c 'command -v npm node nodejs' \
    && fail "npm or node in the root"
ls "$root"/etc/nginx/modules-enabled/*mod-http-llm.conf >/dev/null \
    || fail "the module is not enabled in modules-enabled/"
chroot "$root" llm-count --encoding o200k_base </dev/null >/dev/null \
    || fail "llm-count does not find the packaged vocabulary"

# the simulator, and nginx in front of it on loopback ports
sim=18961
ctl=18962
port=18963
cat >"$root/tmp/sim.json" <<END
{"control_port": $ctl, "bind": "127.0.0.1", "deployments": [
  {"name": "d1", "port": $sim, "deployment": "gpt-4o",
   "model": "gpt-4o-2024-11-20", "api_key": "sim-key-not-a-secret",
   "tpm": 60000, "ttft_ms": [5, 10], "tokens_per_s": 5000,
   "completion_tokens": 20, "seed": 1}]}
END
python3 tools/aoai-sim --config "$root/tmp/sim.json" --quiet \
    >"$top/.build/deb-sim.log" 2>&1 &
pids=$!

rm -f "$root/etc/nginx/sites-enabled/default"
mkdir -p "$root/etc/nginx/llm"
printf 'sim-key-not-a-secret\n' >"$root/etc/nginx/llm/sim.key"
cat >"$root/etc/nginx/conf.d/llm.conf" <<END
llm_zone      llm:1m;
llm_tokenizer o200k_base  /usr/share/nginx-llm/o200k_base.json;
llm_tokenizer cl100k_base /usr/share/nginx-llm/cl100k_base.json;

upstream aoai {
    llm_balance zone=llm;
    llm_backend d1 http://127.0.0.1:$sim deployment=gpt-4o tpm=60k
                key_file=/etc/nginx/llm/sim.key;
}

server {
    listen 127.0.0.1:$port;

    add_header X-Prompt-Tokens \$llm_prompt_tokens always;
    add_header X-Backend \$llm_backend always;

    location /openai/ {
        llm_route aoai;
        proxy_pass http://aoai;
        proxy_set_header Host    \$llm_backend_host;
        proxy_set_header api-key \$llm_backend_key;
    }
}
END

chroot "$root" nginx -t || fail "nginx -t failed"
chroot "$root" nginx || fail "nginx did not start"

text='Count these words exactly, please: the packaged vocabulary is loaded.'
body='{"messages":[{"role":"user","content":"'$text'"}],"max_tokens":20}'
want=$(printf '%s' "$body" |
       chroot "$root" llm-count --encoding o200k_base --chat)

q='?api-version=2024-10-21'

request() {
    curl -s -o /dev/null -D - --max-time 10 \
        -H 'Content-Type: application/json' --data "$body" \
        "http://127.0.0.1:$port/openai/deployments/gpt-4o/chat/completions$q"
}

i=0
until curl -s -o /dev/null "http://127.0.0.1:$ctl/sim/stats"; do
    i=$((i + 1))
    [ $i -lt 50 ] || fail "the simulator did not start"
    sleep 0.1
done

for round in start reload; do
    if [ $round = reload ]; then
        chroot "$root" nginx -s reload || fail "nginx -s reload failed"
        sleep 1
    fi
    h=$(request) || fail "no answer after $round"
    echo "$h" | grep -q '^HTTP/1.1 200' \
        || fail "after $round: $(echo "$h" | head -1)"
    echo "$h" | grep -qi '^x-backend: d1' \
        || fail "after $round: not routed to the simulator"
    got=$(echo "$h" | awk -F': ' 'tolower($1) == "x-prompt-tokens" {
                                       print $2 }' | tr -d '\r')
    [ "$got" = "$want" ] \
        || fail "after $round: $got prompt tokens, llm-count says $want"
    echo "after $round: 200 from d1, $got prompt tokens counted exactly" >&2
done

echo "the package installs and routes in a fresh $suite root"
