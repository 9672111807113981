#!/bin/bash
# Checks docker/ without Docker (there is no Docker engine in CI): does
# what docker/Dockerfile does, on this machine, and runs the result.
#
#   sh docker/ci-check.sh          (KEEP=1 keeps the work directory)
#
#  1. docker/compose.yaml, read with a small reader of our own: the five
#     services, their build targets, ports, commands and dependencies
#     agree with the Dockerfile, docker/nginx.conf and the sim configs.
#  2. docker/Dockerfile, instruction by instruction: each stage gets a
#     directory as its file system; COPY copies into it (the context
#     filtered by docker/Dockerfile.dockerignore, or --from a stage);
#     the build stage's "RUN sh build/deb.sh" runs as it is, in the
#     stage's WORKDIR, and builds the Debian package against this
#     machine's nginx-dev, which must be the nginx of the Dockerfile's
#     "FROM debian:<suite>"; the gateway's "apt-get install" of the
#     package is done as dpkg would, into the stage's directory, after a
#     check that this machine's nginx gives the ABI the package asks
#     for.  Any other RUN line or instruction is an error.
#  3. The gateway stage's nginx.conf passes nginx -t and runs, with its
#     paths mapped into the stage's directory and the simulators on
#     loopback; the sims run with compose's commands from the tools stage;
#     the load service's command runs for a few seconds; every request
#     must succeed, the access log must be JSON, the status page must
#     agree and refuse other addresses.

# CI runs "sh docker/ci-check.sh": the rest is bash
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"

set -euo pipefail

cd "$(dirname "$0")/.."
top=$(pwd)
start=$(date +%s)
run=$(mktemp -d /tmp/llm-docker-check.XXXXXX)
# nginx's workers (nobody) must reach their temporary directories
chmod 755 "$run"
pids=()

say() {
    echo "ci-check: $*"
}

fail() {
    echo "ci-check: FAILED: $*" >&2
    exit 1
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-}" = 1 ]; then
        echo "ci-check: kept $run"
    else
        rm -rf "$run"
    fi
}
trap cleanup EXIT

# free loopback ports, one a line
free_ports() {
    python3 - "$1" <<'END'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
END
}

# compose's healthcheck of service $1, as Docker runs it in the
# container, with the container's port $2 replaced by the local port $3
health() {
    local test
    mapfile -t test <"$run/health-$1"
    test=("${test[@]//$2/$3}")
    "${test[@]}" >/dev/null 2>&1 || fail "$1: healthcheck ${test[*]} fails"
}

wait_port() {
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}


# -- the Dockerfile, one instruction a line --------------------------------

# "stage<TAB>INSTRUCTION<TAB>arguments": comments dropped, continued
# lines joined (a backslash and its newline removed, as Docker does)
awk '
    /^[ \t]*#/ { next }
    /^[ \t]*$/ && buf == "" { next }
    {
        line = $0
        if (line ~ /\\[ \t]*$/) {
            sub(/\\[ \t]*$/, "", line)
            buf = buf line
            next
        }
        buf = buf line
        sub(/^[ \t]+/, "", buf)
        instr = toupper(buf)
        sub(/[ \t].*/, "", instr)
        args = buf
        sub(/^[^ \t]+[ \t]+/, "", args)
        if (instr == "FROM") {
            n = split(args, w, /[ \t]+/)
            stage = (n == 3 && toupper(w[2]) == "AS") ? w[3] : "-"
        }
        print stage "\t" instr "\t" args
        buf = ""
    }
' docker/Dockerfile >"$run/dockerfile.tsv"

stages=$(awk -F'\t' '$2 == "FROM" { print $1 }' "$run/dockerfile.tsv" \
         | tr '\n' ' ')
[ "$stages" = "build tools gateway " ] \
    || fail "Dockerfile stages are \"$stages\", expected build tools gateway"

# every instruction must be one this script can do outside Docker: find
# out before building anything
while IFS=$'\t' read -r stage instr args; do
    case "$instr:$stage:$args" in
    FROM:*|WORKDIR:*|ENV:*|EXPOSE:*|COPY:*) ;;
    STOPSIGNAL:gateway:SIGQUIT) ;;
    CMD:gateway:'["nginx", "-g", "daemon off;"]') ;;
    RUN:build:"apt-get update") ;;
    RUN:build:"sh build/deb.sh") ;;
    RUN:gateway:*apt-get\ install*) ;;
    RUN:gateway:"ln -sf /dev/stdout /var/log/nginx/access.log"*) ;;
    RUN:*)
        fail "$stage stage: ci-check does not know how to run" \
             "\"RUN $args\" outside Docker" ;;
    *)
        fail "$stage stage: instruction $instr is not emulated" ;;
    esac
done <"$run/dockerfile.tsv"

image_of() {
    awk -F'\t' -v s="$1" '$1 == s && $2 == "FROM" {
        split($3, w, /[ \t]+/); print w[1] }' "$run/dockerfile.tsv"
}

# the package is built against this machine's nginx-dev: the images
# must be this machine's Debian
. /etc/os-release
suite=$VERSION_CODENAME
[ "$(image_of build)" = "debian:$suite" ] \
    || fail "the build stage is $(image_of build), this machine" \
            "debian:$suite"
[ "$(image_of gateway)" = "debian:$suite-slim" ] \
    || fail "the gateway is $(image_of gateway), expected debian:$suite-slim"
say "Dockerfile: stages build (debian:$suite), tools ($(image_of tools)),"\
    "gateway (debian:$suite-slim)"


# -- 1. compose.yaml -------------------------------------------------------

# prints what the later steps need; the commands go to files, one
# argument a line
python3 - docker/compose.yaml docker/Dockerfile docker/nginx.conf \
    "$run" <<'END'
import json, os, re, sys

compose, dockerfile, nginx_conf, out = sys.argv[1:]
here = os.path.dirname(os.path.abspath(compose))
errors = []


def die(msg):
    sys.exit("ci-check: FAILED: " + msg)


def error(msg):
    errors.append(msg)


def read_yaml(path):
    """Block mappings, "- scalar" lists, plain or JSON-quoted scalars and
    flow lists of JSON strings (possibly over several lines); enough for
    our compose file, and an error on anything else."""
    lines = []
    with open(path) as f:
        raw = f.read().split("\n")
    i = 0
    while i < len(raw):
        text = raw[i]
        no = i + 1
        i += 1
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        if "\t" in text:
            die("compose.yaml:%d: a tab" % no)
        if text.rstrip().endswith("[") or (
                "[" in text and text.count("[") > text.count("]")):
            while i < len(raw) and text.count("[") > text.count("]"):
                text += " " + raw[i].strip()
                i += 1
        lines.append((no, len(text) - len(text.lstrip()), text.strip()))

    def scalar(no, s):
        if s.startswith(("[", '"')):
            try:
                return json.loads(s)
            except ValueError:
                die("compose.yaml:%d: not a JSON string or list: %s"
                         % (no, s))
        if s[:1] in "{&*!|>'":
            die("compose.yaml:%d: unsupported YAML: %s" % (no, s))
        return s.split(" #")[0].strip()

    def block(pos, indent):
        no, ind, text = lines[pos]
        if text.startswith("- "):
            items = []
            while pos < len(lines) and lines[pos][1] == indent \
                    and lines[pos][2].startswith("- "):
                no, _, text = lines[pos]
                items.append(scalar(no, text[2:].strip()))
                pos += 1
            return items, pos
        mapping = {}
        while pos < len(lines) and lines[pos][1] == indent:
            no, _, text = lines[pos]
            m = re.fullmatch(r"([A-Za-z0-9_.-]+):(?:\s+(.*))?", text)
            if not m:
                die("compose.yaml:%d: unsupported YAML: %s" % (no, text))
            key, value = m.group(1), m.group(2)
            if key in mapping:
                die("compose.yaml:%d: %s twice" % (no, key))
            pos += 1
            if value:
                mapping[key] = scalar(no, value)
            elif pos < len(lines) and lines[pos][1] > indent:
                mapping[key], pos = block(pos, lines[pos][1])
            else:
                mapping[key] = None
        if pos < len(lines) and lines[pos][1] > indent:
            die("compose.yaml:%d: unexpected indentation" % lines[pos][0])
        return mapping, pos

    doc, pos = block(0, 0)
    if pos != len(lines):
        die("compose.yaml:%d: unexpected indentation" % lines[pos][0])
    return doc


doc = read_yaml(compose)
services = doc.get("services") or {}
want = ["sim1", "sim2", "sim3", "gateway", "load"]
if sorted(services) != sorted(want):
    die("compose.yaml: services %s, expected %s"
             % (sorted(services), want))

stages = re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", open(dockerfile).read())
expose = re.findall(r"(?im)^EXPOSE\s+(\d+)", open(dockerfile).read())

conf = open(nginx_conf).read()
listen = re.findall(r"(?m)^\s*listen\s+(\d+);", conf)
backends = re.findall(r"llm_backend\s+(\S+)\s+http://([^:/\s]+):(\d+)", conf)
if len(listen) != 1:
    error("nginx.conf: expected one \"listen PORT;\", found %s" % listen)
listen = listen[0] if listen else "?"
if expose != [listen]:
    error("Dockerfile EXPOSE %s, nginx.conf listens on %s" % (expose, listen))

for name in want:
    svc = services[name]
    build = svc.get("build") or {}
    ctx = os.path.normpath(os.path.join(here, build.get("context", ".")))
    df = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
    if not os.path.exists(df) or not os.path.samefile(df, dockerfile):
        error("%s: builds %s, not docker/Dockerfile" % (name, df))
    target = "gateway" if name == "gateway" else "tools"
    if build.get("target") != target:
        error("%s: target %r, expected %r (stages: %s)"
              % (name, build.get("target"), target, " ".join(stages)))
    if build.get("target") not in stages:
        error("%s: target %r is no stage of the Dockerfile"
              % (name, build.get("target")))
    test = (svc.get("healthcheck") or {}).get("test")
    if name != "load":
        if not isinstance(test, list) or test[:1] != ["CMD"]:
            error("%s: healthcheck test must be [\"CMD\", ...]" % name)
        else:
            with open(os.path.join(out, "health-" + name), "w") as f:
                f.write("".join(a + "\n" for a in test[1:]))
    cmd = svc.get("command")
    if name != "gateway":
        if not isinstance(cmd, list) or not all(isinstance(a, str)
                                                for a in cmd):
            error("%s: command must be a list of strings" % name)
            continue
        with open(os.path.join(out, "cmd-" + name), "w") as f:
            f.write("".join(a + "\n" for a in cmd))

# each backend of nginx.conf is a simulator service whose config
# listens on the port nginx.conf names, and the gateway waits for it
deps = services["gateway"].get("depends_on") or {}
for bname, host, port in backends:
    cmd = services.get(host, {}).get("command") or []
    if host not in ("sim1", "sim2", "sim3") or "--config" not in cmd:
        error("nginx.conf: llm_backend %s points at %s, no simulator service"
              % (bname, host))
        continue
    cfg = json.load(open(os.path.join(os.path.dirname(here),
                                      cmd[cmd.index("--config") + 1])))
    ports = [d["port"] for d in cfg["deployments"]]
    if ports != [int(port)] or cfg.get("bind") != "0.0.0.0":
        error("%s: the simulator listens on %s (bind %s), nginx.conf says %s"
              % (host, ports, cfg.get("bind"), port))
    if (deps.get(host) or {}).get("condition") != "service_healthy":
        error("gateway: must depend on %s being healthy (nginx resolves "
              "its name at start)" % host)
if sorted(h for _, h, _ in backends) != ["sim1", "sim2", "sim3"]:
    error("nginx.conf: backends %s, expected sim1 sim2 sim3"
          % [h for _, h, _ in backends])

ports = services["gateway"].get("ports") or []
if "%s:%s" % (listen, listen) not in ports:
    error("gateway: ports %s do not publish %s" % (ports, listen))
if ((services["load"].get("depends_on") or {}).get("gateway") or {}) \
        .get("condition") != "service_healthy":
    error("load: must wait for the gateway being healthy")
load = services["load"].get("command") or []
url = load[load.index("--url") + 1] if "--url" in load else ""
if not url.startswith("http://gateway:%s/openai/" % listen):
    error("load: --url %r is not the gateway's http://gateway:%s/openai/..."
          % (url, listen))

if errors:
    die("compose.yaml:\n  " + "\n  ".join(errors))
print("ci-check: compose.yaml: services %s; gateway publishes %s and waits "
      "for healthy %s; load waits for the gateway"
      % (" ".join(want), listen, " ".join(h for _, h, _ in backends)))
with open(os.path.join(out, "listen"), "w") as f:
    f.write(listen + "\n")
END
listen=$(cat "$run/listen")


# -- 2. the Dockerfile, stage by stage -------------------------------------

context=$run/context
mkdir -p "$context"
excludes=()
while IFS= read -r pat; do
    case $pat in
    ''|'#'*) continue ;;
    esac
    pat=${pat#/}
    excludes+=("--exclude=${pat#\*\*/}")
done <docker/Dockerfile.dockerignore
tar -C "$top" -cf - "${excludes[@]}" . | tar -C "$context" -xf -
say "context: $(find "$context" -type f | wc -l) files" \
    "(docker/Dockerfile.dockerignore applied)"

# the directory that stands for a stage's file system
root_of() {
    echo "$run/stage-$1"
}

declare -A workdir

# COPY [--from=stage] src... dest, in stage $1
copy() {
    local stage=$1 from="" dest froot s
    shift
    case $1 in
    --from=*) from=${1#--from=}; shift ;;
    --*) fail "COPY $1 is not emulated" ;;
    esac
    local args=("$@")
    dest=${args[-1]}
    unset 'args[-1]'
    case $dest in
    /*) ;;
    *) dest=${workdir[$stage]:-/}/$dest ;;
    esac
    dest=$(root_of "$stage")$dest
    if [ ${#args[@]} -gt 1 ] || [ "${dest%/}" != "$dest" ]; then
        mkdir -p "$dest"
    else
        mkdir -p "$(dirname "$dest")"
    fi
    for s in "${args[@]}"; do
        case $s in
        *[*?[]*) fail "COPY $s: wildcards are not emulated" ;;
        esac
        if [ -n "$from" ]; then
            case $s in
            /*) froot=$(root_of "$from")$s ;;
            *) froot=$(root_of "$from")${workdir[$from]:-}/$s ;;
            esac
        else
            froot=$context/$s
        fi
        [ -e "$froot" ] || fail "COPY $s: no such file${from:+ in $from}"
        if [ -d "$froot" ]; then
            mkdir -p "$dest"
            cp -a "$froot/." "$dest/"
        else
            cp -a "$froot" "$dest"
        fi
    done
}

# the packages an "apt-get install" line names
packages() {
    echo "$1" | sed -n 's/.*apt-get install\(.*\)/\1/p' | sed 's/&&.*//' \
        | tr ' ' '\n' | grep -v '^-' | grep -v '^$' | tr '\n' ' '
}

# the gateway's "apt-get install": a .deb the stage holds goes into the
# stage's directory as dpkg would unpack it, with the link its postinst
# makes in modules-enabled/ (a copy: an absolute link would leave the
# directory), once this machine's nginx is found to give the ABI it
# depends on; the other packages are installed here
gw=$(root_of gateway)

install_gateway() {
    local p deb abi have conf
    for p in $1; do
        case $p in
        /*.deb)
            deb=$gw$p
            [ -f "$deb" ] || fail "gateway: apt-get install $p: no such file"
            abi=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' \
                  | grep -o 'nginx-abi-[^ ]*' || true)
            have=$(dpkg-query -W -f='${Provides}\n' nginx-core nginx \
                   2>/dev/null | tr ',' '\n' | grep -o 'nginx-abi-[^ ]*' \
                   | head -1 || true)
            [ -n "$abi" ] && [ "$abi" = "$have" ] \
                || fail "gateway: $p wants ${abi:-no nginx-abi}, this" \
                        "machine's nginx gives ${have:-none}"
            dpkg-deb -x "$deb" "$gw"
            mkdir -p "$gw/etc/nginx/modules-enabled"
            for conf in "$gw"/usr/share/nginx/modules-available/*.conf; do
                cp "$conf" "$gw/etc/nginx/modules-enabled/50-${conf##*/}"
            done
            say "gateway stage: $(basename "$p") unpacked ($abi, as this" \
                "machine's nginx)"
            ;;
        *)
            sh build/deps.sh "$p" >/dev/null
            ;;
        esac
    done
}

while IFS=$'\t' read -r stage instr args; do
    case $instr in
    FROM)
        mkdir -p "$(root_of "$stage")"
        ;;
    WORKDIR)
        workdir[$stage]=$args
        mkdir -p "$(root_of "$stage")$args"
        ;;
    COPY)
        # split into words as Docker does, without globbing here
        set -f
        # shellcheck disable=SC2086
        copy "$stage" $args
        set +f
        ;;
    ENV)
        # tools: PYTHONUNBUFFERED, which only shapes the logs
        ;;
    EXPOSE)
        # compared with nginx.conf's listen in step 1
        ;;
    STOPSIGNAL|CMD)
        # checked above: SIGQUIT and nginx -g 'daemon off;', as step 3
        # runs and stops it
        ;;
    RUN)
        case "$stage:$args" in
        build:"apt-get update")
            # the lists build/deb.sh's apt-get needs: this machine's
            ;;
        build:"sh build/deb.sh")
            say "build stage: RUN $args (in ${workdir[build]})"
            if ! (
                cd "$(root_of build)${workdir[build]}"
                sh -c "$args"
            ) 2>&1 | sed 's/^/    /'
            then
                fail "RUN $args"
            fi
            ;;
        gateway:*apt-get\ install*)
            install_gateway "$(packages "$args")"
            ;;
        gateway:"ln -sf /dev/stdout"*)
            # the logs stay files here, for step 3 to read
            ;;
        *)
            fail "$stage stage: ci-check does not know how to run" \
                 "\"RUN $args\" outside Docker"
            ;;
        esac
        ;;
    *)
        fail "$stage stage: instruction $instr is not emulated"
        ;;
    esac
done <"$run/dockerfile.tsv"

so=$gw/usr/lib/nginx/modules/ngx_http_llm_module.so
[ -f "$so" ] || fail "the gateway has no ${so#"$gw"}"
for f in o200k_base cl100k_base; do
    [ -s "$gw/usr/share/nginx-llm/$f.json" ] \
        || fail "the gateway has no /usr/share/nginx-llm/$f.json"
done
[ -n "$(ls "$gw"/etc/nginx/modules-enabled/*mod-http-llm.conf 2>/dev/null)" ] \
    || fail "the package did not enable the module in modules-enabled/"
say "gateway stage: module, vocabularies and modules-enabled/ in place"


# -- 3. the gateway at work ------------------------------------------------

# Debian's nginx layout around what the stage unpacked
mkdir -p "$gw/var/log/nginx" "$gw/var/run" "$gw/var/lib/nginx"
ln -s ../../usr/lib/nginx/modules "$gw/etc/nginx/modules"

tools=$(root_of tools)${workdir[tools]}
mapfile -t ports < <(free_ports 7)
gwport=${ports[0]}

# the simulators, from the tools stage with compose's commands; only
# their ports are this machine's
i=1
declare -A sim_port sim_image_port
for svc in sim1 sim2 sim3; do
    mapfile -t cmd <"$run/cmd-$svc"
    cfg=${cmd[$(( $(printf '%s\n' "${cmd[@]}" | grep -nx -- --config \
                    | cut -d: -f1) ))]}
    sim_port[$svc]=${ports[$i]}
    sim_image_port[$svc]=$(python3 - "$tools/$cfg" "${ports[$i]}" \
                           "${ports[$((i + 3))]}" <<'END'
import json, sys
path, port, control = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = json.load(open(path))
print(cfg["deployments"][0]["port"])
cfg.update(bind="127.0.0.1", control_port=control)
for d in cfg["deployments"]:
    d["port"] = port
json.dump(cfg, open(path, "w"))
END
)
    (cd "$tools" && exec "${cmd[@]}") >"$run/$svc.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
for svc in sim1 sim2 sim3; do
    wait_port "${sim_port[$svc]}" \
        || fail "$svc did not start: $(cat "$run/$svc.log")"
    health "$svc" "${sim_image_port[$svc]}" "${sim_port[$svc]}"
done
say "sims: compose's commands in the tools stage, on 127.0.0.1:" \
    "${sim_port[sim1]}, ${sim_port[sim2]}, ${sim_port[sim3]}; healthchecks pass"

# the image's paths into the stage's directory, the listen port and the
# simulators' names onto loopback
conf=$gw/etc/nginx/nginx.conf
cp "$conf" "$run/nginx.conf.image"
b='[[:blank:]]'
mapped='etc/nginx\|usr/share/nginx-llm\|var/log/nginx\|var/run'
sed_args=(-e "s#\([[:blank:]=]\)/\($mapped\)/#\1$gw/\2/#g"
          -e "s#^\($b*listen$b\+\)$listen;#\1127.0.0.1:$gwport;#")
for svc in sim1 sim2 sim3; do
    addr=address=127.0.0.1:${sim_port[$svc]}
    sed_args+=(-e "s#\(http://$svc:[0-9]\+\)\([[:blank:];]\)#\1 $addr\2#")
done
sed "${sed_args[@]}" "$run/nginx.conf.image" >"$conf"
left=$(grep -v '^[[:blank:]]*\(#\|location\)' "$conf" \
       | grep -o "[[:blank:]=]/[^[:blank:];]*" \
       | grep -v "^.$gw/\|^./dev/" || true)
[ -z "$left" ] || fail "nginx.conf: absolute paths ci-check cannot map:" "$left"
say "nginx.conf: /etc/nginx, /usr/share/nginx-llm, /var/log/nginx, /var/run" \
    "mapped; listen 127.0.0.1:$gwport; sim1..3 at address=127.0.0.1:..."

# the image's nginx is Debian's, as this machine's
sh build/deps.sh nginx >/dev/null
nginx=/usr/sbin/nginx
"$nginx" -t -p "$gw/etc/nginx/" -c "$conf" -e stderr >"$run/nginx-t.log" 2>&1 \
    || fail "nginx -t: $(cat "$run/nginx-t.log")"
say "nginx -t: the configuration of the image is ok"

# the image's CMD
"$nginx" -p "$gw/etc/nginx/" -c "$conf" -e stderr -g 'daemon off;' \
    >"$run/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
wait_port "$gwport" \
    || fail "the gateway did not start: $(cat "$run/gateway.log")"
health gateway "$listen" "$gwport"
say "gateway: started as the image's CMD does; healthcheck passes"

# the load service's command, for 4 s instead of its minute, then again
# for two streamed requests
mapfile -t cmd <"$run/cmd-load"
for j in "${!cmd[@]}"; do
    case ${cmd[$j]} in
    http://gateway:"$listen"/*)
        cmd[j]=http://127.0.0.1:$gwport/${cmd[$j]#http://gateway:"$listen"/} ;;
    esac
    [ "$j" -gt 0 ] && [ "${cmd[$((j - 1))]}" = --duration ] && cmd[j]=4
done
(cd "$tools" && "${cmd[@]}" --json) >"$run/load.json" 2>"$run/load.err" \
    || fail "load: $(cat "$run/load.err")"
(cd "$tools" && "${cmd[@]}" --json --stream --include-usage --rpm 60 \
    --duration 2 --arrivals uniform) >"$run/stream.json" 2>>"$run/load.err" \
    || fail "load --stream: $(cat "$run/load.err")"

python3 - "$run" "$gwport" "$gw/var/log/nginx/access.log" <<'END'
import json, socket, sys, urllib.request

run, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for name in ("load", "stream"):
    r = runs[name] = json.load(open("%s/%s.json" % (run, name)))
    if r["requests"] == 0 or r["ok"] != r["requests"]:
        sys.exit("ci-check: FAILED: %s through the gateway: %s"
                 % (name, r["status"]))
sent = sum(r["requests"] for r in runs.values())
print("ci-check: load: %d requests of the load service's command, %d "
      "streamed: all 200" % (runs["load"]["requests"],
                             runs["stream"]["requests"]))

with urllib.request.urlopen("http://127.0.0.1:%d/llm/status" % port) as r:
    status = json.load(r)
pools = status["pools"]
backends = {b["name"]: b for p in pools for b in p["backends"]}
if sorted(backends) != ["sim1", "sim2", "sim3"]:
    sys.exit("ci-check: FAILED: status page backends %s" % sorted(backends))
ok = sum(b["responses"]["2xx"] for b in backends.values())
used = sum(b["tokens"]["completion"] for b in backends.values())
if ok != sent:
    sys.exit("ci-check: FAILED: status page counts %d 2xx, %d were sent"
             % (ok, sent))
with urllib.request.urlopen("http://127.0.0.1:%d/llm/status?format="
                            "prometheus" % port) as r:
    prom = r.read().decode()
if "llm_backend_requests_total" not in prom:
    sys.exit("ci-check: FAILED: no Prometheus text on the status page")

# the status page is for the container's own loopback only
s = socket.create_connection(("127.0.0.1", port),
                             source_address=("127.0.0.2", 0))
s.sendall(b"GET /llm/status HTTP/1.0\r\nHost: x\r\n\r\n")
line = s.makefile("rb").readline()
s.close()
if b" 403 " not in line:
    sys.exit("ci-check: FAILED: /llm/status from 127.0.0.2: %r" % line)
print("ci-check: status page: %s with %d 2xx and %d completion tokens; "
      "Prometheus text; 403 from 127.0.0.2" % (" ".join(sorted(backends)),
                                               ok, used))

routed = 0
for no, text in enumerate(open(log), 1):
    try:
        e = json.loads(text)
    except ValueError:
        sys.exit("ci-check: FAILED: access log line %d is not JSON: %s"
                 % (no, text))
    if not e["uri"].startswith("/openai/"):
        continue
    routed += 1
    if (e["status"] != 200 or e["backend"] not in backends
            or e["usage_source"] != "reported"
            or not e["prompt_tokens"].isdigit()
            or not int(e["completion_tokens"] or 0)):
        sys.exit("ci-check: FAILED: access log line %d: %s" % (no, text))
if routed != sent:
    sys.exit("ci-check: FAILED: %d /openai/ lines in the access log, %d "
             "requests" % (routed, sent))
print("ci-check: access log: %d JSON lines, each with its backend, exact "
      "prompt tokens and reported usage" % routed)
END

# the image's STOPSIGNAL
kill -QUIT "$gateway"
for i in $(seq 100); do
    kill -0 "$gateway" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$gateway" 2>/dev/null && fail "the gateway did not stop on SIGQUIT"
if grep -E '\[(alert|crit|emerg)\]' "$run/gateway.log" \
        "$gw/var/log/nginx/error.log"
then
    fail "the gateway logged the above"
fi
say "gateway: stopped on SIGQUIT; no [alert], [crit] or [emerg] logged"

say "passed in $(( $(date +%s) - start )) s"
