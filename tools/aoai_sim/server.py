"""HTTP(S) servers of the simulator, request handling, faults, control port, main().

One listener per configured port.  On a port shared by several deployments
the Host header chooses the deployment (and, with TLS, the SNI chooses the
certificate).  Each connection is served by its own thread with HTTP/1.1
keep-alive; request bodies may use Content-Length or chunked encoding.
"""

import argparse
import json
import math
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import parse_qs, unquote

from . import accounting, certs, config, replies
from .limits import Deployment, retry_headers

# (path pattern, operation, style); style "deployments" takes the deployment
# from the path, "v1" and "responses" from the body's "model"
ROUTES = [
    (re.compile(r'/openai/deployments/([^/]+)/chat/completions'), 'chat', 'deployments'),
    (re.compile(r'/openai/deployments/([^/]+)/completions'), 'completions', 'deployments'),
    (re.compile(r'/openai/deployments/([^/]+)/embeddings'), 'embeddings', 'deployments'),
    (re.compile(r'/openai/v1/chat/completions'), 'chat', 'v1'),
    (re.compile(r'/openai/v1/completions'), 'completions', 'v1'),
    (re.compile(r'/openai/v1/embeddings'), 'embeddings', 'v1'),
    (re.compile(r'/openai/v1/responses'), 'responses', 'v1'),
    (re.compile(r'/openai/responses'), 'responses', 'responses'),
]

# stream_options is refused by api-versions before this one (docs/azure.md, 5)
STREAM_OPTIONS_SINCE = '2024-09-01'

GARBAGE = b'\x00\xff\xfe SIM-GARBAGE \x15\x03\x01\x00\x02\x02\x28 not an HTTP response \x07\r\n\r\n'


def match_route(path):
    for pattern, op, style in ROUTES:
        m = pattern.fullmatch(path)
        if m:
            return op, style, unquote(m.group(1)) if m.groups() else None
    return None


def host_of(value):
    """The Host header's name, lower case, without a port."""
    h = (value or '').strip().lower()
    if h.startswith('['):
        return h.split(']')[0] + ']'
    name, sep, port = h.rpartition(':')
    return name if sep and port.isdigit() else h


def bearer_of(value):
    if value and value[:7].lower() == 'bearer ':
        return value[7:].strip()
    return None


class Answer(Exception):
    """Ends request checking with a JSON answer."""

    def __init__(self, status, body, headers=()):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, list(headers)


class ClientGone(Exception):
    pass


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'aoai-sim'
    sys_version = ''
    timeout = 120                   # idle keep-alive connections

    def setup(self):
        super().setup()
        self.sni = getattr(self.connection, 'sim_sni', None)
        self.conn_seen = set()      # deployments served on this connection

    def log_message(self, fmt, *args):
        pass                        # one line per request is written by done()

    def version_string(self):
        return self.server_version

    def do_POST(self):
        self.exchange()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    # -- I/O helpers -----------------------------------------------------

    def read_body(self):
        if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ValueError('end of stream in a chunked body')
                size = int(line.split(b';')[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b'\r\n', b'\n', b''):
                        pass            # trailers
                    return b''.join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else b''
        if len(body) < length:
            raise ValueError('short body')
        return body

    def send_head(self, status, headers):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def send_json(self, status, obj, headers, record=None):
        """With a record, the request is counted before the body goes out,
        so a client that has the whole reply also sees it in /sim/stats."""
        body = replies.dumps(obj)
        self.send_head(status, self.base_headers() + list(headers) + [
            ('Content-Type', 'application/json'), ('Content-Length', str(len(body)))])
        if record is not None:
            self.done(status, record)
        self.wfile.write(body)

    def pause(self, seconds):
        """Sleep, but notice at once a client that closes meanwhile (a
        gateway cancelling the slower of two attempts)."""
        end = time.monotonic() + seconds
        sock = self.connection
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            if not select.select([sock], [], [], left)[0]:
                continue
            try:
                gone = not sock.recv(1, socket.MSG_PEEK)
            except ValueError:           # TLS: what comes is close_notify
                gone = True
            except OSError:
                gone = True
            if gone:
                raise ClientGone()
            time.sleep(min(left, 0.01))  # a byte too early: not a close

    def write(self, data):
        try:
            if self.chunked:
                self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data) if data else b'0\r\n\r\n')
            else:
                self.wfile.write(data)
        except (OSError, ValueError) as e:
            raise ClientGone() from e

    def base_headers(self):
        h = [('apim-request-id', self.rid), ('x-ms-client-request-id', self.rid),
             ('x-request-id', self.rid2)]
        if self.dep is not None:
            h += [('x-ms-region', self.dep.name),
                  ('azureml-model-session', 'sim-' + self.dep.name)]
        return h

    # -- one request -----------------------------------------------------

    def exchange(self):
        self.t0 = time.monotonic()
        self.rid, self.rid2 = str(uuid.uuid4()), str(uuid.uuid4())
        self.chunked = False
        self.dep = None
        sim = self.server.sim
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send_error(400, 'bad request body')
            return

        path, _, query = self.path.partition('?')
        api_version = parse_qs(query).get('api-version', [None])[0]
        host = host_of(self.headers.get('Host'))
        api_key = self.headers.get('api-key')
        bearer = bearer_of(self.headers.get('Authorization'))
        route = match_route(path)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        on_port = self.server.deployments
        resource = [d for d in on_port if d.host is None or d.host == host]
        name = None
        if route:
            name = route[2] if route[1] == 'deployments' else (
                data.get('model') if isinstance(data, dict) else None)
        target = next((d for d in resource if d.deployment == name), None)
        self.dep = target or (resource[0] if len(resource) == 1 else None) or (
            on_port[0] if len(on_port) == 1 else None)

        info = {'host': host, 'sni': self.sni, 'api_key': api_key, 'bearer': bearer,
                'path': path, 'api_version': api_version,
                'tls': self.server.ssl_ctx is not None}
        record = {'time': round(time.time(), 3), 'method': self.command, 'path': path,
                  'query': query, 'host': host, 'sni': self.sni, 'api_key': api_key,
                  'bearer': bearer, 'deployment': name, 'body_bytes': len(body),
                  'request_id': self.rid,
                  'client_request_id': self.headers.get('x-ms-client-request-id')}
        if isinstance(data, dict):
            record['model'] = data.get('model')
        if self.dep is not None:
            self.dep.count_arrival(info, self.conn_seen)
        else:
            sim.count_unrouted(info)

        try:
            call = self.check(route, resource, target, data, api_key, bearer, api_version)
            self.serve_call(target, call, api_version, record)
        except Answer as a:
            self.send_json(a.status, a.body, a.headers, record)

    def check(self, route, resource, target, data, api_key, bearer, api_version):
        """The Azure checks in order: resource, key, path, body, deployment."""
        if not resource:
            raise Answer(404, replies.not_found())
        rate = target.rate_headers() if target else []

        def allowed(d):
            s = d.cfg
            if s['api_key'] is None and s['bearer'] is None:
                return True
            if api_key is not None and api_key == s['api_key']:
                return True
            if bearer is not None and (bearer == s['bearer'] or (
                    route and route[1] == 'v1' and bearer == s['api_key'])):
                return True
            return False

        if not any(allowed(d) for d in ([target] if target else resource)):
            raise Answer(401, replies.unauthorized(bearer is not None and api_key is None), rate)
        if route is None or self.command != 'POST':
            raise Answer(404, replies.not_found())
        op, style, _ = route
        if style != 'v1' and not api_version:
            raise Answer(404, replies.not_found())
        if not isinstance(data, dict):
            raise Answer(400, replies.bad_request(
                'We could not parse the JSON body of your request. (HINT: This likely'
                ' means you aren\'t using your HTTP library correctly. The OpenAI API'
                ' expects a JSON payload.)', code='BadRequest'), rate)
        if target is None:
            if style != 'deployments' and not data.get('model'):
                raise Answer(400, replies.bad_request(
                    "Missing required parameter: 'model'.", 'model'))
            raise Answer(404, replies.deployment_not_found())
        try:
            call = accounting.Call(op, data, target.cfg['default_max_tokens'])
        except accounting.BadRequest as e:
            raise Answer(400, replies.bad_request(str(e), e.param), rate)
        if (call.has_stream_options and api_version
                and re.match(r'\d{4}-\d\d-\d\d', api_version)
                and api_version[:10] < STREAM_OPTIONS_SINCE):
            raise Answer(400, replies.bad_request(
                'Unrecognized request argument supplied: stream_options',
                'stream_options'), rate)
        return call

    def serve_call(self, dep, call, api_version, record):
        settings = dep.cfg
        speed = self.server.sim.speed
        ttft, fault = dep.draw()
        forced = self.headers.get('x-sim-fault')
        if forced:
            fault = forced if forced in config.FAULT_KINDS else None
        record.update(stream=call.stream, include_usage=call.include_usage,
                      max_tokens=call.max_tokens, n=call.choices, fault=None,
                      ttft_ms=round(ttft * 1000 * speed))

        if fault and fault != 'cut':
            record['fault'] = fault
            self.fault(dep, fault, record)
            return

        adm = dep.admit(call)       # a cut reply is accepted (and charged) first
        if not adm.ok:
            secs = max(1, math.ceil(adm.retry - 1e-9))
            h = adm.headers + retry_headers(adm.retry, reset_tokens=adm.reason != 'call',
                                            ms_header=dep.cfg['retry_ms_header'])
            if adm.reason != 'utilization':
                h.append(('policy-id', 'DeploymentRatelimit-'
                          + ('Call' if adm.reason == 'call' else 'Token')))
            record['throttled'] = adm.reason
            raise Answer(429, replies.throttled(call.op, api_version or 'v1', adm.reason, secs), h)

        per_choice, finish = call.completion_per_choice(settings['completion_tokens'])
        reply = replies.Reply(call, settings['model'], per_choice, finish,
                              settings['fixed_ids'])
        rate = settings['tokens_per_s'] * speed
        record['charge'] = adm.charge
        cut = fault == 'cut'
        record['fault'] = fault
        sent = 0
        settled = []

        def settle(tokens):
            # counted before the last bytes go out: a client that has the
            # whole reply finds it in /sim/stats already
            if settled:
                return
            settled.append(tokens)
            record['prompt_tokens'], record['completion_tokens'] = call.prompt_tokens, tokens
            dep.complete(adm, call.prompt_tokens, tokens)
            self.done(200, record)

        try:
            if call.stream:
                sent = self.stream(reply, adm.headers, ttft, rate, cut, settle,
                                   settings['head_first'], record)
            else:
                self.pause(ttft + (per_choice / rate if call.op != 'embeddings' else 0))
                body = replies.dumps(reply.json_body())
                h = self.base_headers() + adm.headers + [
                    ('Content-Type', 'application/json'), ('Content-Length', str(len(body)))]
                self.send_head(200, h)
                record['head_at'] = time.time()
                if not cut:
                    settle(reply.completion_tokens)
                self.write(body[:len(body) // 2] if cut else body)
                sent = 0 if cut else reply.completion_tokens
        except ClientGone:
            record['client_closed'] = True
            record['closed_at'] = time.time()
            self.close_connection = True
        if cut:
            self.close_connection = True
        settle(sent)

    def stream(self, reply, rate_headers, ttft, rate, cut, settle, head_first,
               record):
        """Send SSE events paced at the generation rate; returns tokens sent.
        With head_first the headers and the events that carry no token yet
        (prompt filter results, the role) go out before the wait for the
        first token, as a gateway racing on first tokens must expect."""
        events = reply.stream_events()
        if cut:
            events = events[:len(events) // 2]
        if not head_first:
            self.pause(ttft)
        h = self.base_headers() + rate_headers + [
            ('Content-Type', 'text/event-stream; charset=utf-8'),
            ('Cache-Control', 'no-cache'), ('x-accel-buffering', 'no')]
        if self.request_version == 'HTTP/1.0':
            self.close_connection = True         # no chunked encoding: EOF ends it
            h.append(('Connection', 'close'))
        else:
            self.chunked = True
            h.append(('Transfer-Encoding', 'chunked'))
        try:
            self.send_head(200, h)
        except OSError as e:
            raise ClientGone() from e
        record['head_at'] = time.time()
        if head_first:
            while events and events[0][2] == 0 and events[0][0] == 0:
                self.write(events.pop(0)[1])
            self.wfile.flush()
            self.pause(ttft)
        start = time.monotonic()
        sent = 0
        for due, data, tokens in events:
            wait = start + due / rate - time.monotonic()
            if wait > 0.002:                     # closer events go out as a burst
                time.sleep(wait)
            self.write(data)
            if tokens and not sent:
                record['token_at'] = time.time()
            sent += tokens
        if not cut:
            settle(sent)
            self.write(b'')
        return sent

    def fault(self, dep, kind, record):
        """Misbehave as asked; nothing is charged."""
        speed = self.server.sim.speed
        if kind == '500':
            self.send_json(500, replies.server_error(), dep.rate_headers(), record)
        elif kind == '503':
            self.send_json(503, replies.model_overloaded(), dep.rate_headers(), record)
        elif kind == 'overload429':
            retry = dep.cfg['overload_retry_s'] / speed
            self.send_json(429, replies.overloaded_429(max(1, math.ceil(retry - 1e-9))),
                           dep.rate_headers()
                           + retry_headers(retry, ms_header=dep.cfg['retry_ms_header']),
                           record)
        elif kind == 'reset':
            self.done('reset', record)
            self.abort(rst=True)
        elif kind == 'garbage':
            self.done('garbage', record)
            try:
                self.wfile.write(GARBAGE + bytes(range(256)))
            except OSError:
                pass
            self.abort()
        elif kind == 'hang':
            self.hang()
            self.done('hang', record)
            self.abort()

    def abort(self, rst=False):
        """Close the connection now; with rst, by a TCP reset (SO_LINGER 0)."""
        self.close_connection = True
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack('ii', 1, 0))
            self.rfile.close()                   # drop makefile()'s reference
            self.connection.close()
        except OSError:
            pass

    def hang(self):
        """Answer nothing until the client closes, the sim stops or 300 s pass."""
        deadline = time.monotonic() + 300
        stopping = self.server.sim.stopping
        self.connection.settimeout(0.5)
        while time.monotonic() < deadline and not stopping.is_set():
            try:
                if not self.connection.recv(4096):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def done(self, status, record):
        ms = int((time.monotonic() - self.t0) * 1000)
        record['status'] = status
        record['ms'] = ms
        sim = self.server.sim
        if self.dep is not None:
            self.dep.count_end(status, record)
        else:
            sim.count_unrouted_end(status)
        sim.record(self.dep.name if self.dep else None, record)
        sim.log(f"{self.dep.name if self.dep else '-'} {self.command} {self.path}"
                f" host={record['host'] or '-'} sni={record['sni'] or '-'} -> {status}"
                f" charge={record.get('charge', 0)} usage={record.get('prompt_tokens', 0)}"
                f"+{record.get('completion_tokens', 0)}"
                f"{' fault=' + record['fault'] if record.get('fault') else ''}"
                f"{' throttled=' + record['throttled'] if record.get('throttled') else ''}"
                f" {ms}ms")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def server_bind(self):
        TCPServer.server_bind(self)              # no reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (OSError, ssl.SSLError)):
            return                               # clients vanish: not our problem
        super().handle_error(request, client_address)


class ApiServer(QuietServer):
    def __init__(self, address, sim, deployments, ssl_ctx):
        self.sim, self.deployments, self.ssl_ctx = sim, deployments, ssl_ctx
        super().__init__(address, ApiHandler)

    def finish_request(self, request, client_address):
        if self.ssl_ctx is None:
            return super().finish_request(request, client_address)
        try:
            request.settimeout(10)
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.sim.log(f'port {self.server_port}: TLS handshake failed: {e}')
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'aoai-sim-control'
    sys_version = ''

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj, indent=1, sort_keys=True).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        sim = self.server.sim
        path = self.path.split('?')[0]
        if path == '/sim/stats':
            self.reply(200, sim.stats())
        elif path == '/sim/config':
            self.reply(200, {'speed': sim.speed, 'deployments': {
                d.name: d.settings() for d in sim.deployments}})
        else:
            self.reply(404, {'error': 'unknown control path'})

    def do_POST(self):
        sim = self.server.sim
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else b''
        path = self.path.split('?')[0]
        m = re.fullmatch(r'/sim/deployments/([^/]+)', path)
        if path == '/sim/reset':
            sim.reset()
            self.reply(200, {'reset': True})
        elif m:
            dep = sim.by_name.get(unquote(m.group(1)))
            if dep is None:
                return self.reply(404, {'error': 'no such deployment'})
            try:
                self.reply(200, dep.update(json.loads(body or b'{}')))
            except (ValueError, config.ConfigError) as e:
                self.reply(400, {'error': str(e)})
        else:
            self.reply(404, {'error': 'unknown control path'})


class ControlServer(QuietServer):
    def __init__(self, address, sim):
        self.sim = sim
        super().__init__(address, ControlHandler)


def new_unrouted():
    return {'requests': 0, 'status': Counter(), 'hosts': Counter(),
            'paths': Counter(), 'sni': Counter()}


class Simulator:
    """The deployments, requests nobody owned, and the log."""

    def __init__(self, cfg, speed, quiet, records=None):
        self.speed = speed
        self.quiet = quiet
        self.records = open(records, 'a', buffering=1) if records else None
        self.deployments = [Deployment(d, speed) for d in cfg['deployments']]
        self.by_name = {d.name: d for d in self.deployments}
        self.lock = threading.Lock()
        self.unrouted = new_unrouted()
        self.stopping = threading.Event()

    def record(self, name, record):
        """--records: every request's record as a JSON line, keys left out."""
        if self.records is None:
            return
        line = {k: v for k, v in record.items() if k not in ('api_key', 'bearer')}
        line['name'] = name
        with self.lock:
            self.records.write(json.dumps(line, sort_keys=True) + '\n')

    def log(self, line):
        if not self.quiet:
            with self.lock:
                sys.stderr.write(time.strftime('%H:%M:%S ') + line + '\n')
                sys.stderr.flush()

    def count_unrouted(self, info):
        with self.lock:
            u = self.unrouted
            u['requests'] += 1
            u['hosts'][info['host']] += 1
            u['paths'][info['path']] += 1
            if info['tls']:
                u['sni'][info['sni'] or '(none)'] += 1

    def count_unrouted_end(self, status):
        with self.lock:
            self.unrouted['status'][str(status)] += 1

    def reset(self):
        for d in self.deployments:
            d.reset()
        with self.lock:
            self.unrouted = new_unrouted()

    def stats(self):
        with self.lock:
            unrouted = {k: dict(v) if isinstance(v, Counter) else v
                        for k, v in self.unrouted.items()}
        return {'speed': self.speed, 'unrouted': unrouted,
                'deployments': {d.name: d.snapshot() for d in self.deployments}}


def record_sni(sock, server_name):
    sock.sim_sni = server_name


def main(argv=None):
    ap = argparse.ArgumentParser(prog='aoai-sim',
                                 description='Azure OpenAI simulator for tests.')
    ap.add_argument('--config', required=True, help='JSON configuration file')
    ap.add_argument('--speed', type=float, default=1.0,
                    help='compress all simulated time by this factor')
    ap.add_argument('--quiet', action='store_true', help='no per-request log lines')
    ap.add_argument('--records', metavar='FILE',
                    help='append every request\'s record to FILE, a JSON line '
                         'each (times, status, tokens; no keys)')
    args = ap.parse_args(argv)
    if args.speed <= 0:
        ap.error('--speed must be positive')
    try:
        cfg = config.load(args.config)
    except (OSError, config.ConfigError) as e:
        print(f'aoai-sim: {e}', file=sys.stderr)
        return 2

    sim = Simulator(cfg, args.speed, args.quiet, args.records)
    by_port = {}
    for d in sim.deployments:
        by_port.setdefault(d.port, []).append(d)

    tls_hosts = {d.name: d.host or 'localhost' for d in sim.deployments if d.cfg['tls']}
    files = certs.ensure(cfg['tls_dir'], tls_hosts.values()) if tls_hosts else {}

    servers = []
    try:
        for port, deps in by_port.items():
            ctx = None
            if deps[0].cfg['tls']:
                hosts = list(dict.fromkeys(tls_hosts[d.name] for d in deps))
                ctx = certs.server_context([(h, *files[h]) for h in hosts], record_sni)
            servers.append(ApiServer((cfg['bind'], port), sim, deps, ctx))
        servers.append(ControlServer(('127.0.0.1', cfg['control_port']), sim))
    except OSError as e:
        print(f'aoai-sim: cannot listen: {e}', file=sys.stderr)
        return 1

    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={'poll_interval': 0.2},
                         daemon=True).start()

    # The handler runs in the main thread between two bytecodes, maybe
    # inside sim.stopping.wait() with the event's lock held: setting the
    # event there waited for that lock for ever (a simulator that ignored
    # TERM, seen in CI).  It only notes the signal; the loop sets it.
    signals = []

    def stop(signum, frame):
        signals.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sim.log(f"listening: control {cfg['control_port']}, " + ', '.join(
        f"{d.name}={'https' if d.cfg['tls'] else 'http'}://{d.host or '*'}:{d.port}"
        f" ({d.cfg['kind']}, {d.cfg['tpm']} TPM)" for d in sim.deployments)
        + f', speed {args.speed:g}')
    while not signals and not sim.stopping.is_set():
        time.sleep(0.1)
    sim.stopping.set()
    # stop all accept loops at once; connection threads are daemons and
    # end with the process (a hung one notices sim.stopping first)
    stoppers = [threading.Thread(target=s.shutdown) for s in servers]
    for th in stoppers:
        th.start()
    for th in stoppers:
        th.join()
    for s in servers:
        s.server_close()
    sim.log('stopped')
    return 0
