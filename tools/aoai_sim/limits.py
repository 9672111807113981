"""One simulated deployment: its settings, rate limiter and counters.

All times are real (time.monotonic) seconds; simulated durations are
divided by the speed factor, so with --speed 10 the 60 s token window
lasts 6 real seconds and every retry-after reports real seconds.

Standard (docs/azure.md section 1):
  * token window: each accepted request's arrival charge stays for
    exactly 60 s; a request whose charge does not fit in tpm minus the
    window's sum gets 429 "token rate limit";
  * request window: rolling 10 s, rpm/6 requests (rpm defaults to
    6 per 1000 TPM); the next one gets 429 "call rate limit";
  * a 429 charges nothing; the charge is never corrected.

PTU (section 2): a leaky bucket draining tpm/60 tokens per second.  A
request is admitted while utilisation (bucket / tpm) is under 100 %,
charged prompt tokens + reserve, and corrected to usage at completion.
PTU has no request limit unless rpm is set explicitly.
"""

import math
import random
import threading
import time
from collections import Counter, deque

from . import config

STATS_RECENT = 100


class Admission:
    """The outcome of asking a deployment for room."""

    def __init__(self, ok, reason=None, retry=0.0, charge=0, headers=None):
        self.ok = ok
        self.reason = reason        # None, 'call', 'token' or 'utilization'
        self.retry = retry          # real seconds until room frees
        self.charge = charge        # tokens charged (ok only)
        self.headers = headers or []


def new_stats():
    return {
        'requests': 0, 'status': Counter(), 'faults': Counter(),
        'tokens_charged': 0, 'prompt_tokens': 0, 'completion_tokens': 0,
        'hosts': Counter(), 'sni': Counter(), 'api_keys': Counter(),
        'bearers': Counter(), 'paths': Counter(), 'api_versions': Counter(),
        'throttled_tokens': 0, 'throttled_requests': 0,
        'streams': 0, 'include_usage': 0, 'sni_mismatch': 0, 'connections': 0,
        'recent': deque(maxlen=STATS_RECENT),
    }


def retry_headers(retry, reset_tokens=False, ms_header='retry-after-ms'):
    """retry-after (whole seconds, >= 1) and retry-after-ms (>= 1), under
    the name ms_header."""
    secs = max(1, math.ceil(retry - 1e-9))
    h = [('retry-after', str(secs)),
         (ms_header, str(max(1, math.ceil(retry * 1000 - 1e-6))))]
    if reset_tokens:
        h.append(('x-ratelimit-reset-tokens', str(secs)))
    return h


class Deployment:

    def __init__(self, settings, speed):
        self.cfg = settings
        self.name = settings['name']
        self.port = settings['port']
        self.speed = speed
        self.lock = threading.Lock()
        self.rng = random.Random(settings['seed'])
        self.generation = 0         # bumped by reset (connection counting)
        self._clear()

    def _clear(self):
        self.tokens = deque()       # (accepted at, charge), Standard
        self.token_sum = 0
        self.reqs = deque()         # accepted at
        self.level = 0.0            # PTU bucket content
        self.level_at = time.monotonic()
        self.stats = new_stats()

    def reset(self):
        with self.lock:
            self._clear()
            self.generation += 1

    # -- settings --------------------------------------------------------

    @property
    def host(self):
        return self.cfg['host']

    @property
    def deployment(self):
        return self.cfg['deployment']

    @property
    def ptu(self):
        return self.cfg['kind'] == 'ptu'

    def settings(self):
        with self.lock:
            return dict(self.cfg)

    def update(self, partial):
        """Apply a live update; raises config.ConfigError."""
        with self.lock:
            new = config.updated_settings(self.cfg, partial)
            now = time.monotonic()
            self._drain(now)
            if new['kind'] != self.cfg['kind']:
                self.level = 0.0
            if new['seed'] != self.cfg['seed']:
                self.rng = random.Random(new['seed'])
            self.cfg = new
            return dict(new)

    def per_10s(self):
        """Requests allowed per rolling 10 s, or None for no limit."""
        rpm = self.cfg['rpm']
        if rpm is None:
            if self.ptu:
                return None
            rpm = self.cfg['tpm'] * 6 // 1000
        return max(1, int(rpm) // 6)

    def draw(self):
        """(ttft in real s, random fault or None) for one request."""
        with self.lock:
            lo, hi = self.cfg['ttft_ms']
            ttft = self.rng.uniform(lo, hi)
            p, spike = self.cfg['ttft_spikes']
            if p and self.rng.random() < p:
                ttft += spike
            ttft = ttft / 1000 / self.speed
            fault = None
            for kind in config.FAULT_KINDS:
                p = self.cfg['faults'].get(kind, 0)
                if p and self.rng.random() < p:
                    fault = kind
                    break
            return ttft, fault

    # -- windows ---------------------------------------------------------

    def _drain(self, now):
        rate = self.cfg['tpm'] / 60 * self.speed
        self.level = max(0.0, self.level - rate * (now - self.level_at))
        self.level_at = now

    def _prune(self, now):
        w_tok, w_req = 60 / self.speed, 10 / self.speed
        while self.tokens and self.tokens[0][0] + w_tok <= now:
            self.token_sum -= self.tokens.popleft()[1]
        while self.reqs and self.reqs[0] + w_req <= now:
            self.reqs.popleft()
        self._drain(now)

    def _remaining_tokens(self):
        tpm = self.cfg['tpm']
        if self.ptu:
            return max(0, math.floor(tpm - self.level))
        return tpm - self.token_sum

    def _rate_headers(self):
        tpm = self.cfg['tpm']
        h = [('x-ratelimit-limit-tokens', str(tpm)),
             ('x-ratelimit-remaining-tokens', str(self._remaining_tokens()))]
        per10 = self.per_10s()
        if per10 is not None:
            h.append(('x-ratelimit-limit-requests', str(per10)))
            h.append(('x-ratelimit-remaining-requests', str(max(0, per10 - len(self.reqs)))))
        if self.ptu:
            h.append(('azure-openai-deployment-utilization',
                      f'{self.level / tpm * 100:.1f}%'))
        return h

    def rate_headers(self):
        """The x-ratelimit-* headers of a response that charged nothing."""
        with self.lock:
            self._prune(time.monotonic())
            return self._rate_headers()

    def admit(self, call):
        """Charge a call if there is room, else say why not and for how long."""
        with self.lock:
            now = time.monotonic()
            self._prune(now)
            tpm = self.cfg['tpm']
            per10 = self.per_10s()

            if per10 is not None and len(self.reqs) >= per10:
                self.stats['throttled_requests'] += 1
                retry = self.reqs[-per10] + 10 / self.speed - now
                return Admission(False, 'call', retry, headers=self._rate_headers())

            if self.ptu:
                if self.level >= tpm:
                    self.stats['throttled_tokens'] += 1
                    rate = tpm / 60 * self.speed
                    retry = (self.level - tpm) / rate + 0.001
                    return Admission(False, 'utilization', retry,
                                     headers=self._rate_headers())
                charge = call.ptu_charge
                self.level += charge
            else:
                charge = call.standard_charge
                if self.token_sum + charge > tpm:
                    self.stats['throttled_tokens'] += 1
                    return Admission(False, 'token', self._token_retry(charge, now),
                                     headers=self._rate_headers())
                self.tokens.append((now, charge))
                self.token_sum += charge

            self.reqs.append(now)
            self.stats['tokens_charged'] += charge
            return Admission(True, charge=charge, headers=self._rate_headers())

    def _token_retry(self, charge, now):
        """Real seconds until enough charges leave the window for this one."""
        need = self.token_sum + charge - self.cfg['tpm']
        freed = 0
        for at, c in self.tokens:
            freed += c
            if freed >= need:
                return at + 60 / self.speed - now
        return 60 / self.speed          # larger than the whole quota

    def complete(self, admission, prompt_tokens, completion_tokens):
        """A call ended: count its usage; a PTU charge is corrected to usage."""
        with self.lock:
            self.stats['prompt_tokens'] += prompt_tokens
            self.stats['completion_tokens'] += completion_tokens
            if self.ptu and admission is not None and admission.ok:
                refund = admission.charge - (prompt_tokens + completion_tokens)
                if refund > 0:
                    self._drain(time.monotonic())
                    self.level = max(0.0, self.level - refund)
                    self.stats['tokens_charged'] -= refund

    # -- counters --------------------------------------------------------

    def count_arrival(self, info, conn_seen):
        """Count a request as it arrives (info: host, sni, api_key, ...)."""
        with self.lock:
            s = self.stats
            s['requests'] += 1
            s['hosts'][info['host']] += 1
            s['paths'][info['path']] += 1
            if info['api_version'] is not None:
                s['api_versions'][info['api_version']] += 1
            if info['api_key'] is not None:
                s['api_keys'][info['api_key']] += 1
            if info['bearer'] is not None:
                s['bearers'][info['bearer']] += 1
            if info['tls']:
                s['sni'][info['sni'] or '(none)'] += 1
                if (info['sni'] or '').lower() != info['host']:
                    s['sni_mismatch'] += 1
            key = (self.name, self.generation)
            if key not in conn_seen:
                conn_seen.add(key)
                s['connections'] += 1

    def count_end(self, status, record):
        with self.lock:
            s = self.stats
            s['status'][str(status)] += 1
            if record.get('fault'):
                s['faults'][record['fault']] += 1
            if record.get('stream'):
                s['streams'] += 1
                if record.get('include_usage'):
                    s['include_usage'] += 1
            s['recent'].append(record)

    def snapshot(self):
        """Ground truth for /sim/stats."""
        with self.lock:
            self._prune(time.monotonic())
            s = self.stats
            out = {k: (dict(v) if isinstance(v, Counter) else
                       list(v) if isinstance(v, deque) else v)
                   for k, v in s.items()}
            out['kind'] = self.cfg['kind']
            out['limit_tokens'] = self.cfg['tpm']
            out['limit_requests'] = self.per_10s()
            out['window_tokens'] = round(self.level) if self.ptu else self.token_sum
            out['window_requests'] = len(self.reqs)
            out['remaining_tokens'] = self._remaining_tokens()
            if self.ptu:
                out['utilization'] = round(self.level / self.cfg['tpm'] * 100, 1)
            return out
