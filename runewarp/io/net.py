"""Socket helpers shared by both roles: dialing, socket options, abortive close."""

import functools
import ipaddress
import os
import socket
import struct

import gevent

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


def resolve_override(host):
    """RUNEWARP_RESOLVE="host=address,..." pins a name like curl --resolve (tests, split DNS).

    TLS still uses the Server hostname for SNI and certificate checks.
    """
    for entry in os.environ.get("RUNEWARP_RESOLVE", "").split(","):
        name, _, address = entry.partition("=")
        if name.strip().lower() == host and address.strip():
            return address.strip()
    return host


def describe(exc):
    """An error as logged: its class and message; a gevent deadline as such."""
    if isinstance(exc, gevent.Timeout):
        return "deadline exceeded"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
