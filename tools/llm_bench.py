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


def nginx_conf(work, module, listen, backends, speed, upstream_header=False):
    """One nginx: /openai/ through the module, /plain/ through stock
    round-robin with proxy_next_upstream, both over the same three
    deployments.  With upstream_header, every reply carries nginx's
    $upstream_status (one status per attempt) as X-Upstream-Status."""
    window = max(1000, round(60000 / speed))
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
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format llm '$time_iso8601 $status backend=$llm_backend '
                   'model=$llm_model estimate=$llm_tokens_estimate '
                   'attempts=$llm_attempts throttle=$llm_throttle';
    access_log {work}/access.log llm;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;

    llm_zone llm:1m;

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

    def start_sim(self, deployments, speed, who):
        """aoai-sim with these deployments, time compressed by speed;
        exits with a message naming who when it does not start."""
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
             "--speed", str(speed), "--quiet"],
            stdout=simlog, stderr=simlog))
        ports = [self.ctl] + [d["port"] for d in deployments]
        if not all(wait_port(p) for p in ports):
            sys.exit("%s: the simulator did not start; see %s"
                     % (who, self.path("sim.log")))

    def start_nginx(self, conf_text, listen, who):
        conf = self.path("nginx.conf")
        with open(conf, "w") as f:
            f.write(conf_text)
        self.procs.append(subprocess.Popen(
            [self.nginx, "-p", self.work, "-c", conf],
            stderr=subprocess.STDOUT,
            stdout=open(self.path("nginx.out"), "w")))
        if not wait_port(listen):
            sys.exit("%s: nginx did not start:\n" % who
                     + open(self.path("error.log")).read())

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
