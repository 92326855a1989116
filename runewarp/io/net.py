"""Socket helpers shared by both roles: dialing, socket options, abortive close."""

import functools
import ipaddress
import os
import socket
import struct

import gevent

from ..proto.serverset import unique

_LINGER_ABORT = struct.pack("ii", 1, 0)
# TCP_KEEPIDLE is called TCP_KEEPALIVE on macOS.
_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))


def set_nodelay(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def set_keepalive(sock, idle=60, interval=15, count=4):
    """Let the kernel notice a peer that vanished without FIN or RST (a NAT dropped the
    flow, a host lost power): after `idle` s of silence, `count` unanswered probes
    `interval` s apart make the socket fail, which ends its splice.  On a listening
    socket, accepted sockets inherit it (Linux).  Why these values: docs/timeouts.md."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in ((_KEEPIDLE, idle), (getattr(socket, "TCP_KEEPINTVL", None), interval),
                              (getattr(socket, "TCP_KEEPCNT", None), count)):
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass


def send_first(sock, data):
    """sendall() for a connection's first bytes: gevent's sendall asks the socket's SO_SNDBUF
    (a system call) on every call; one send() takes a few KiB into an empty buffer."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def abort(sock):
    """Close with a TCP reset, so the peer sees an error rather than a clean EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    sock.close()


@functools.lru_cache(maxsize=256)
def literal_family(host):
    """The address family of an IP literal, None for a name (backend addresses are few)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def dial(address):
    """TCP connect; an IP literal skips the resolver (a thread-pool round trip per stream)."""
    host, port = address
    family = literal_family(host)
    if family is None:
        return socket.create_connection(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


RESOLVE_ENV = "RUNEWARP_RESOLVE"
RESOLVE_FILE_ENV = "RUNEWARP_RESOLVE_FILE"


def pinned_addresses(host):
    """The addresses `host` is pinned to, like curl --resolve (tests, split DNS); None when
    it is not pinned.

    RUNEWARP_RESOLVE="host=address|address,...", then the file named by
    RUNEWARP_RESOLVE_FILE (same syntax, entries also one per line), read again on every
    call so a test can change what a name resolves to while the Client runs.  A name
    pinned to nothing ("host=") resolves to no address.  Names match ignoring case.  TLS
    still uses the Server hostname for SNI and certificate checks.
    """
    text = os.environ.get(RESOLVE_ENV, "")
    path = os.environ.get(RESOLVE_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text += "," + f.read().replace("\n", ",")
        except OSError:
            pass
    for entry in text.split(","):
        name, equals, addresses = entry.partition("=")
        if equals and name.strip().lower() == host.lower():
            return [a.strip() for a in addresses.split("|") if a.strip()]
    return None


def resolve_override(host):
    """The first address `host` is pinned to, or `host` itself (dial it through DNS)."""
    pinned = pinned_addresses(host)
    return pinned[0] if pinned else host


def resolve_all(host, port):
    """Every address of `host`, in resolver order, each once: the pinned ones, an IP
    literal itself, else all A and AAAA records.  OSError when there is none."""
    pinned = pinned_addresses(host)
    if pinned is not None:
        if not pinned:
            raise OSError(f"{host} is pinned to no address")
        return pinned
    if literal_family(host) is not None:
        return [host]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(unique(info[4][0] for info in infos))


def describe(exc):
    """An error as logged: its class and message; a gevent deadline as such."""
    if isinstance(exc, gevent.Timeout):
        return "deadline exceeded"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
