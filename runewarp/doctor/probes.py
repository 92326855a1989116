"""The doctor's network probes: resolve, TCP, a backend's certificate, an ACME directory.

Each probe is bounded by its own deadline and closes what it opened; none binds a
listener.  They raise what went wrong (OSError, ssl.SSLError, gevent.Timeout,
ValueError) and the check modules turn that into a line.
"""

import ipaddress
import json
import os
import socket
import ssl
import urllib.request

import gevent
from cryptography import x509

from ..io.net import dial, resolve_all
from ..tls import any_certificate_context

PROBE_TIMEOUT = 3.0  # TCP, TLS, DNS: a healthy peer on any network answers well within it
HTTP_TIMEOUT = 10.0


class ProbeTimeout(Exception):
    """A probe's own deadline passed."""


class Deadline:
    """gevent.Timeout owned by one probe: only this timer becomes ProbeTimeout."""

    def __init__(self, seconds):
        self.timer = gevent.Timeout(seconds)

    def __enter__(self):
        self.timer.start()

    def __exit__(self, kind, exc, tb):
        self.timer.close()
        if exc is self.timer:
            raise ProbeTimeout(f"no answer within {self.timer.seconds:g} s") from None
        return False


def addresses(host, port=None):
    """Every address `host` resolves to, as the Client resolves it (io/net.py
    `resolve_all`: RUNEWARP_RESOLVE honoured, all A and AAAA records)."""
    with Deadline(PROBE_TIMEOUT):
        return resolve_all(host, port)


def is_local(address):
    """An address of this machine: loopback, or one the kernel routes to itself (a UDP
    socket connected to it gets it as its own address; connecting sends nothing)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_loopback:
        return True
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                         socket.SOCK_DGRAM)
    try:
        sock.connect((str(ip), 9))
        return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]) == ip
    except OSError:
        return False
    finally:
        sock.close()


def tcp(address):
    """Connect and close: the peer accepts TCP."""
    with Deadline(PROBE_TIMEOUT):
        sock = dial(address)
    sock.close()


def backend_certificate(address, hostname, first=b""):
    """The certificate a TLS backend presents for SNI `hostname`; `first` goes before the
    ClientHello (the PROXY header a backend with proxy-protocol requires)."""
    with Deadline(PROBE_TIMEOUT):
        sock = dial(address)
        try:
            sock.sendall(first)
            with any_certificate_context().wrap_socket(sock, server_hostname=hostname,
                                                       do_handshake_on_connect=False) as tls:
                tls.do_handshake()  # inside `with`: a failed one still closes the socket
                der = tls.getpeercert(binary_form=True)
        finally:
            sock.close()
    return x509.load_der_x509_certificate(der)


def acme_directory(url):
    """The ACME directory object at `url` (proxies and REQUESTS_CA_BUNDLE as certbot has them)."""
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    with Deadline(HTTP_TIMEOUT):
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT, context=context) as response:
            document = json.loads(response.read(1024 * 1024))
    if not isinstance(document, dict) or "newNonce" not in document:
        raise ValueError("the answer is not an ACME directory (no newNonce)")
    return document
