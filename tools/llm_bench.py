"""Pieces shared by tools/demo and tools/seed-report: free loopback ports,
the simulator and nginx as child processes, the nginx configuration that
puts plain round-robin and the module side by side over the same
deployments, and runs of tools/aoai-load.

Python 3 standard library only.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "demo-key-not-a-secret"
PATH = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


_given = set()


def free_port():
    # below the kernel's ephemeral range (32768-60999 on Linux): a port
    # from that range may become an outgoing connection's source port
    # before the server that was given it binds it
    for _ in range(1000):
        port = random.randrange(10000, 32000)
        if port in _given:
            continue
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            s.close()
        _given.add(port)
        return port
    raise RuntimeError("no free port")


def wait_port(port, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def fail_timeout(speed):
    """plain nginx's fail_timeout in real seconds: nginx's default 10 s,
    compressed, but whole seconds (nginx takes no less)."""
    return max(1, round(10 / speed))


def nginx_conf(work, module, listen, backends, speed, upstream_header=False,
               tag="", redis=None):
    """One nginx: /openai/ through the module, /plain/ through stock
    round-robin with proxy_next_upstream, both over the same three
    deployments.  With upstream_header, every reply carries nginx's
    $upstream_status (one status per attempt) as X-Upstream-Status.
    tag tells apart the files of several nginx in one directory; redis,
    a port, shares the module's zone through that redis-server."""
    window = max(1000, round(60000 / speed))
    share = (" redis=redis://127.0.0.1:%d redis_sync=%dms"
             % (redis, max(10, round(100 / speed))) if redis else "")
    rest = fail_timeout(speed)
    llm = "\n".join(
        "        llm_backend %s http://localhost deployment=gpt-4o tpm=%d"
        " key_file=%s/%s.key address=127.0.0.1:%d;"
        % (name, tpm, work, name, port) for name, port, tpm in backends)
    plain = "\n".join(
        "        server 127.0.0.1:%d max_fails=1 fail_timeout=%ds;"
        % (port, rest) for _, port, _ in backends)
    load = "load_module %s;\n" % module if module else ""
    status = ("\n            add_header X-Upstream-Status $upstream_status"
              " always;" if upstream_header else "")
    return f"""{load}worker_processes 2;
daemon off;
pid {work}/nginx{tag}.pid;
error_log {work}/error{tag}.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format llm '$time_iso8601 $status backend=$llm_backend '
                   'model=$llm_model estimate=$llm_tokens_estimate '
                   'attempts=$llm_attempts throttle=$llm_throttle';
    access_log {work}/access{tag}.log llm;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;

    llm_zone llm:1m{share};

    upstream aoai {{
        llm_balance zone=llm window={window}ms;
{llm}
        keepalive 32;
    }}

    upstream plain {{
{plain}
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{listen};

        location /openai/ {{
            llm_route aoai;
            proxy_pass http://aoai;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $llm_backend_host;
            proxy_set_header api-key $llm_backend_key;
            proxy_next_upstream error timeout http_429 non_idempotent;{status}
        }}

        location /plain/ {{
            rewrite ^/plain(/.*)$ $1 break;
            proxy_pass http://plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_429 non_idempotent;{status}
        }}
    }}
}}
"""


def deployment(name, port, tpm, seed):
    """A simulated gpt-4o deployment as the demo and the report use it."""
    return {"name": name, "port": port, "deployment": "gpt-4o",
            "model": "gpt-4o-2024-11-20", "api_key": KEY,
            "tpm": tpm, "ttft_ms": [400, 1200],
            "tokens_per_s": 115, "completion_tokens": 300,
            "seed": seed}


def run_load(url, name, rpm, duration, speed, prompt_tokens, stream=False,
             extra=()):
    """tools/aoai-load against url; returns its JSON summary."""
    cmd = [sys.executable, os.path.join(TOP, "tools", "aoai-load"),
           "--url", url, "--header", "api-key: " + KEY,
           "--rpm", str(rpm), "--duration", str(duration),
           "--speed", str(speed), "--prompt-tokens",
           str(prompt_tokens), "--max-tokens", "800",
           "--name", name, "--json"]
    if stream:
        cmd += ["--stream", "--include-usage"]
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run_loads(urls, name, rpm, duration, speed, prompt_tokens,
              stream=False, extra=(), records=None, seed=1):
    """tools/aoai-load against each url at once, the load split evenly,
    each url with its own arrivals (seed, seed + 100, ...); returns one
    summary, as run_load's: counts added, latency percentiles of all the
    200s together; records, a path, gets every request, by start."""
    work = tempfile.mkdtemp(prefix="llm-load-")
    parts = [os.path.join(work, "records-%d" % i) for i in range(len(urls))]
    out = [None] * len(urls)

    def one(i):
        out[i] = run_load(urls[i], name, rpm / len(urls), duration, speed,
                          prompt_tokens, stream,
                          list(extra) + ["--records", parts[i],
                                         "--seed", str(seed + 100 * i)])

    threads = [threading.Thread(target=one, args=(i,))
               for i in range(len(urls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    recs = []
    for part in parts:
        with open(part) as f:
            recs += [json.loads(line) for line in f]
    shutil.rmtree(work, ignore_errors=True)
    recs.sort(key=lambda r: r["start"])
    if records:
        with open(records, "w") as f:
            for r in recs:
                f.write(json.dumps(r, sort_keys=True) + "\n")

    if len(out) == 1:
        return out[0]

    total = dict(out[0])
    for k in ("requests", "ok", "client_429", "client_5xx", "failed"):
        total[k] = sum(o[k] for o in out)
    total["rpm"] = rpm
    total["client_429_share"] = (total["client_429"] / total["requests"]
                                 if total["requests"] else 0.0)
    lat = sorted(r["latency_ms"] for r in recs
                 if r["status"] == 200 and not r["error"])
    # as aoai-load's JSON has them: percentiles named by strings
    total["latency_ms"] = {str(p): round(lat[min(len(lat) - 1,
                                                 int(len(lat) * p / 100))])
                           if lat else None for p in (50, 90, 99)}
    # per minute of the whole run, to the last reply, as aoai-load counts
    ok = [r for r in recs if r["status"] == 200 and not r["error"]]
    minutes = max([r["end"] for r in recs] + [0]) / 60.0
    prompt = sum(r["prompt_tokens"] for r in ok)
    completion = sum(r["completion_tokens"] for r in ok)
    total["tokens_per_min"] = {
        "prompt": round(prompt / minutes) if minutes else 0,
        "completion": round(completion / minutes) if minutes else 0,
        "total": round((prompt + completion) / minutes) if minutes else 0,
    }
    return total


def backend_429s(stats, names=None):
    """429s the simulated deployments (all, or those named) answered."""
    return sum(d["status"].get("429", 0)
               for n, d in stats["deployments"].items()
               if names is None or n in names)


class Bench:
    """A work directory with the simulator and nginx running in it;
    stop() ends both and removes the directory unless keep."""

    def __init__(self, nginx, module, prefix, keep=False):
        self.nginx = nginx
        self.module = module
        self.keep = keep
        self.work = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.work, 0o755)
        os.mkdir(os.path.join(self.work, "logs"))
        self.procs = []
        self.ctl = None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    def path(self, name):
        return os.path.join(self.work, name)

    def start_sim(self, deployments, speed, who, extra=()):
        """aoai-sim with these deployments, time compressed by speed, and
        extra arguments; exits with a message naming who when it does
        not start."""
        self.ctl = free_port()
        for d in deployments:
            with open(self.path(d["name"] + ".key"), "w") as f:
                f.write(KEY + "\n")
        with open(self.path("sim.json"), "w") as f:
            json.dump({"control_port": self.ctl,
                       "deployments": deployments}, f)
        simlog = open(self.path("sim.log"), "w")
        self.procs.append(subprocess.Popen(
            [sys.executable, os.path.join(TOP, "tools", "aoai-sim"),
             "--config", self.path("sim.json"),
             "--speed", str(speed), "--quiet"] + list(extra),
            stdout=simlog, stderr=simlog))
        ports = [self.ctl] + [d["port"] for d in deployments]
        if not all(wait_port(p) for p in ports):
            sys.exit("%s: the simulator did not start; see %s"
                     % (who, self.path("sim.log")))

    def start_nginx(self, conf_text, listen, who, tag=""):
        conf = self.path("nginx%s.conf" % tag)
        with open(conf, "w") as f:
            f.write(conf_text)
        self.procs.append(subprocess.Popen(
            [self.nginx, "-p", self.work, "-c", conf],
            stderr=subprocess.STDOUT,
            stdout=open(self.path("nginx%s.out" % tag), "w")))
        if not wait_port(listen):
            sys.exit("%s: nginx did not start:\n" % who
                     + open(self.path("error%s.log" % tag)).read())

    def start_redis(self, who):
        """A redis-server of its own on a free loopback port, nothing
        saved to disk; returns the port."""
        port = free_port()
        log = open(self.path("redis.log"), "w")
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.work],
            stdout=log, stderr=log))
        if not wait_port(port):
            sys.exit("%s: redis-server did not start; see %s"
                     % (who, self.path("redis.log")))
        return port

    def sim_stats(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/sim/stats"
                                    % self.ctl) as r:
            return json.load(r)

    def sim_reset(self):
        req = urllib.request.Request("http://127.0.0.1:%d/sim/reset"
                                     % self.ctl, data=b"{}", method="POST")
        urllib.request.urlopen(req).read()

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if proc.args[0] == self.nginx
                                 else signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.procs = []
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
