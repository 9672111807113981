"""A throw-away CA and one certificate per hostname, made with the openssl CLI.

Files in tls_dir: ca.pem / ca.key, and <host>.pem / <host>.key for every
TLS hostname (SAN DNS:<host>, or IP:<addr> for an address).  An existing
CA and existing host certificates are reused, so a restarted simulator
stays valid for an nginx that already trusts ca.pem.
"""

import ipaddress
import os
import secrets
import ssl
import subprocess

EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']


def _run(args):
    r = subprocess.run(['openssl'] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()}")


def _san(host):
    try:
        ipaddress.ip_address(host)
        return 'IP:' + host
    except ValueError:
        return 'DNS:' + host


def ensure(tls_dir, hosts):
    """Create what is missing; returns {host: (cert file, key file)}."""
    os.makedirs(tls_dir, exist_ok=True)
    ca_pem, ca_key = os.path.join(tls_dir, 'ca.pem'), os.path.join(tls_dir, 'ca.key')
    if not (os.path.exists(ca_pem) and os.path.exists(ca_key)):
        _run(['req', '-x509'] + EC + ['-keyout', ca_key, '-out', ca_pem, '-days', '3650',
              '-subj', '/CN=aoai-sim test CA',
              '-addext', 'basicConstraints=critical,CA:TRUE',
              '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
    out = {}
    for host in sorted(set(hosts)):
        pem, key = os.path.join(tls_dir, host + '.pem'), os.path.join(tls_dir, host + '.key')
        if not (os.path.exists(pem) and os.path.exists(key)):
            csr, ext = pem + '.csr', pem + '.ext'
            with open(ext, 'w') as f:
                f.write(f'subjectAltName={_san(host)}\n'
                        'basicConstraints=critical,CA:FALSE\n'
                        'keyUsage=critical,digitalSignature,keyEncipherment\n'
                        'extendedKeyUsage=serverAuth\n')
            _run(['req', '-new'] + EC + ['-keyout', key, '-out', csr,
                  '-subj', '/CN=' + host[:64]])
            _run(['x509', '-req', '-in', csr, '-CA', ca_pem, '-CAkey', ca_key,
                  '-set_serial', str(secrets.randbits(63)), '-days', '825', '-sha256',
                  '-extfile', ext, '-out', pem])
            os.unlink(csr)
            os.unlink(ext)
        out[host] = (pem, key)
    return out


def server_context(certs, record_sni):
    """One listening context choosing the certificate by SNI.

    certs: [(host, cert file, key file)], the first is the default (no or
    unknown SNI).  record_sni(ssl_socket, server_name) is told the SNI."""
    by_host = {}
    for host, pem, key in certs:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem, key)
        by_host[host] = ctx
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.load_cert_chain(certs[0][1], certs[0][2])

    def on_sni(sock, server_name, _ctx):
        record_sni(sock, server_name)
        chosen = by_host.get((server_name or '').lower())
        if chosen is not None:
            sock.context = chosen

    default.sni_callback = on_sni
    return default
