"""Intake: read a connection until one complete ClientHello is buffered, under a deadline.

On the Server, a connection from a `trusted-proxies` peer first carries a PROXY
header (`read_proxy_header`); header and ClientHello share the one deadline.

Shared by the Server (on Visitor sockets) and the Client (on mux streams, after
the PROXY header): same parser, same 16 KiB and 32-record caps.  The Server's
deadline is `[server.timeouts] client-hello`; the Client's is INTAKE_DEADLINE,
for bytes the Server already holds in full (docs/timeouts.md).
Each chunk read is fed once to an incremental parser, so an intake costs CPU
linear in its bytes however a peer trickles them (re-parsing the growing
buffer after every read was quadratic).
"""

import contextlib

import gevent

from ..errors import IntakeRejected as IntakeRejected  # re-exported: raised here
from ..proto import clienthello
from ..proto.proxyheader import Done, ProxyHeaderReader, trusted
from ..proto.hostname import HostnameError, normalize

INTAKE_DEADLINE = 5.0


class Intake:
    """The outcome of a successful intake: the hello, its normalized hostname, the raw bytes."""

    __slots__ = ("hello", "hostname", "buffered", "size")

    def __init__(self, hello, hostname, buffered):
        self.hello = hello
        self.hostname = hostname
        self.buffered = buffered
        self.size = len(buffered)

    def release(self):
        """Drop the buffered bytes once forwarded: a long-lived connection should not
        keep a copy of its ClientHello (memory, and it is never stored anyway)."""
        self.buffered = None
        self.hello = None


class ProxyHeaderRejected(IntakeRejected):
    """A trusted peer's opening bytes are not a valid PROXY header; `detail` says why."""

    def __init__(self, detail):
        super().__init__("proxy-header-invalid")
        self.detail = detail


def read_proxy_header(read):
    """Call `read()` until a PROXY v1/v2 header is complete: (header, the bytes after it).

    Raises ProxyHeaderRejected for bytes that cannot be one, and
    IntakeRejected("closed-before-client-hello") on EOF first (a balancer's plain
    TCP check).  The caller holds the intake deadline.
    """
    reader = ProxyHeaderReader()
    while True:
        data = read()
        if not data:
            raise IntakeRejected("closed-before-client-hello")
        outcome = reader.feed(data)
        if isinstance(outcome, Done):
            return outcome.header, outcome.rest
        if outcome is not None:
            raise ProxyHeaderRejected(outcome.reason)


def real_peer(read, address, trusted_proxies):
    """Whom a connection speaks for, and the bytes read past its PROXY header:
    (address, rest), or None for a LOCAL header (the balancer's health check).
    A peer outside `trusted_proxies` speaks for itself and nothing is read; v1
    UNKNOWN and the v2 UNSPEC family keep the balancer's address."""
    if not trusted(address[0], trusted_proxies):
        return address, b""
    header, rest = read_proxy_header(read)
    if header.local:
        return None
    return header.source or address, rest


def read_client_hello(read, initial=b""):
    """Call `read()` (returns bytes, b"" on EOF) until a ClientHello parses.

    `initial` is data already read (e.g. after a PROXY header). Rejections
    carry the parser's reason ("not-tls", "too-many-records", "multiple-sni",
    ...) or "closed-before-client-hello", "no-sni", "invalid-sni". The caller
    wraps this in a gevent.Timeout for the deadline.
    """
    parser = clienthello.ClientHelloParser()
    buf = bytearray()  # every byte read, forwarded verbatim once routed
    data = initial
    while True:
        if data:
            buf += data
            try:
                hello = parser.feed(data)
            except clienthello.ClientHelloError as exc:
                raise IntakeRejected(exc.reason) from None
            if hello is not None:
                break
        data = read()
        if not data:
            raise IntakeRejected("closed-before-client-hello")
    return Intake(hello, hello_hostname(hello), bytes(buf))


def hello_hostname(hello):
    """The ClientHello's normalized SNI, the one rule for TCP and QUIC intake; IntakeRejected
    ("no-sni", "invalid-sni") without a usable one."""
    if hello.server_name is None:
        raise IntakeRejected("no-sni")
    try:
        return normalize(hello.server_name)
    except HostnameError:
        raise IntakeRejected("invalid-sni") from None


@contextlib.contextmanager
def intake_deadline(seconds=INTAKE_DEADLINE):
    """Bound a whole intake; only our own timer becomes IntakeRejected("intake-deadline")."""
    timer = gevent.Timeout(seconds)
    timer.start()
    try:
        yield
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise IntakeRejected("intake-deadline") from None
    finally:
        timer.close()


def intake(read, deadline=INTAKE_DEADLINE, initial=b""):
    """read_client_hello under the intake deadline."""
    with intake_deadline(deadline):
        return read_client_hello(read, initial)
