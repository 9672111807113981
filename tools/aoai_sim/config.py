"""The simulator's configuration: defaults, validation and live updates.

A configuration is one JSON object:

    {"control_port": 18000, "tls_dir": "/tmp/x/certs", "bind": "127.0.0.1",
     "deployments": [ {deployment settings}, ... ]}

Each deployment's settings are kept as a plain dict (see DEFAULTS); the
control port may later replace any of them except name, port and tls.
"""

import copy
import json

FAULT_KINDS = ('500', '503', 'reset', 'hang', 'garbage', 'cut', 'overload429')

DEFAULTS = {
    'host': None,               # Host header required (None: any)
    'deployment': None,         # deployment name in URLs/bodies (None: the name)
    'model': None,              # model reported in replies (None: deployment)
    'api_key': None,            # accepted "api-key" header value
    'bearer': None,             # accepted "Authorization: Bearer" token
    'tls': False,
    'tpm': 60000,               # tokens per minute
    'rpm': None,                # requests per minute (None: 6 per 1000 TPM)
    'kind': 'standard',         # or "ptu"
    'ttft_ms': [400, 1200],     # time to first token, uniform in [lo, hi]
    'ttft_spikes': [0, 0],      # [probability, ms]: a first token that late
                                # more (Azure has no latency SLA)
    'head_first': False,        # a stream's headers and its events before
                                # the first token go out at once
    'tokens_per_s': 115,        # generation speed
    'completion_tokens': 100,   # reply length when max tokens allows it
    'default_max_tokens': 640,  # charged when the body names no max tokens
    'overload_retry_s': 2,      # retry-after of the overload429 fault
    'retry_ms_header': 'retry-after-ms',  # or Azure's x-ms-retry-after-ms
    'faults': {},               # kind -> probability
    'seed': 1,
    'fixed_ids': False,         # same id and created in every reply (tests
                                # compare streams byte for byte)
}

# settings the control port must not change (they shape the listeners)
FIXED = ('name', 'port', 'tls')


class ConfigError(Exception):
    pass


def _number(d, key, minimum=0, integer=False, allow_none=False):
    v = d.get(key)
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"deployment {d.get('name')!r}: {key} must be a number")
    if v < minimum:
        raise ConfigError(f"deployment {d.get('name')!r}: {key} must be >= {minimum}")
    if integer:
        d[key] = int(v)


def check_deployment(d):
    """Validate one deployment's settings in place (defaults already merged)."""
    if not isinstance(d.get('name'), str) or not d['name']:
        raise ConfigError('every deployment needs a "name"')
    if not isinstance(d.get('port'), int):
        raise ConfigError(f"deployment {d['name']!r}: port must be an integer")
    if d['host'] is not None:
        d['host'] = str(d['host']).lower()
    if d['deployment'] is None:
        d['deployment'] = d['name']
    if d['model'] is None:
        d['model'] = d['deployment']
    if d['kind'] not in ('standard', 'ptu'):
        raise ConfigError(f"deployment {d['name']!r}: kind must be standard or ptu")
    if d['retry_ms_header'] not in ('retry-after-ms', 'x-ms-retry-after-ms'):
        raise ConfigError(f"deployment {d['name']!r}: retry_ms_header must be "
                          "retry-after-ms or x-ms-retry-after-ms")
    _number(d, 'tpm', 1, integer=True)
    _number(d, 'rpm', 1, allow_none=True)
    _number(d, 'tokens_per_s', 0.001)
    _number(d, 'completion_tokens', 0, integer=True)
    _number(d, 'default_max_tokens', 1, integer=True)
    _number(d, 'overload_retry_s', 0)
    ttft = d['ttft_ms']
    if isinstance(ttft, (int, float)) and not isinstance(ttft, bool):
        ttft = [ttft, ttft]
    if (not isinstance(ttft, list) or len(ttft) != 2
            or not all(isinstance(x, (int, float)) and x >= 0 for x in ttft)
            or ttft[0] > ttft[1]):
        raise ConfigError(f"deployment {d['name']!r}: ttft_ms must be [lo, hi]")
    d['ttft_ms'] = [float(ttft[0]), float(ttft[1])]
    spikes = d['ttft_spikes']
    if (not isinstance(spikes, list) or len(spikes) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                       for x in spikes)
            or not 0 <= spikes[0] <= 1 or spikes[1] < 0):
        raise ConfigError(f"deployment {d['name']!r}: ttft_spikes must be "
                          "[probability, ms]")
    d['ttft_spikes'] = [float(spikes[0]), float(spikes[1])]
    d['head_first'] = bool(d['head_first'])
    faults = d['faults'] or {}
    if not isinstance(faults, dict):
        raise ConfigError(f"deployment {d['name']!r}: faults must be an object")
    for k, v in faults.items():
        if k not in FAULT_KINDS:
            raise ConfigError(f"deployment {d['name']!r}: unknown fault {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"deployment {d['name']!r}: fault {k} must be a probability")
    d['faults'] = dict(faults)
    d['tls'] = bool(d['tls'])
    d['fixed_ids'] = bool(d['fixed_ids'])
    return d


def new_deployment(raw):
    if not isinstance(raw, dict):
        raise ConfigError('each deployment must be an object')
    d = copy.deepcopy(DEFAULTS)
    d.update(copy.deepcopy(raw))
    return check_deployment(d)


def updated_settings(current, partial):
    """The settings after a live update (a partial object); raises ConfigError."""
    if not isinstance(partial, dict):
        raise ConfigError('expected a JSON object')
    for k in partial:
        if k in FIXED and partial[k] != current.get(k):
            raise ConfigError(f'{k} cannot be changed while running')
        if k not in DEFAULTS and k not in FIXED:
            raise ConfigError(f'unknown setting {k!r}')
    d = copy.deepcopy(current)
    for k, v in partial.items():
        if k == 'faults' and isinstance(v, dict):
            d['faults'] = {**d['faults'], **v}    # faults merge
        else:
            d[k] = copy.deepcopy(v)
    if 'deployment' in partial and 'model' not in partial and current['model'] == current['deployment']:
        d['model'] = None
    return check_deployment(d)


def load(path):
    with open(path, encoding='utf-8') as f:
        try:
            cfg = json.load(f)
        except ValueError as e:
            raise ConfigError(f'{path}: {e}')
    if not isinstance(cfg, dict):
        raise ConfigError(f'{path}: expected a JSON object')
    if not isinstance(cfg.get('control_port'), int):
        raise ConfigError('control_port must be an integer')
    deps = [new_deployment(d) for d in cfg.get('deployments') or []]
    names = [d['name'] for d in deps]
    if len(set(names)) != len(names):
        raise ConfigError('deployment names must be unique')
    tls_by_port = {}
    for d in deps:
        if tls_by_port.setdefault(d['port'], d['tls']) != d['tls']:
            raise ConfigError(f"port {d['port']}: deployments sharing a port must share tls")
        if d['port'] == cfg['control_port']:
            raise ConfigError(f"port {d['port']} is the control port")
    if any(d['tls'] for d in deps) and not cfg.get('tls_dir'):
        raise ConfigError('tls_dir is required when a deployment uses tls')
    cfg['deployments'] = deps
    cfg.setdefault('bind', '127.0.0.1')
    return cfg
