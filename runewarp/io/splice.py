"""Splice two endpoints: two pumps, half-close on EOF, both joined before returning.

Endpoints are a TCP socket, a mux stream, or TLS terminated over a mux stream;
each offers recv / sendall / delivered / finish / abort / close.  Bytes move in
chunks of up to 256 KiB that exist only while data is moving, so an idle
connection holds no buffer.  A FIN in one direction becomes a FIN in the same
direction on the other side; an error or reset aborts both.
"""

import socket
import struct

import gevent
from OpenSSL import SSL

from .tunnel import StreamReset

CHUNK = 256 * 1024
_LINGER_ABORT = struct.pack("ii", 1, 0)
TRANSPORT_ERRORS = (StreamReset, OSError, SSL.Error)


def abort(sock):
    """Close with a TCP reset, so the peer sees an error rather than a clean EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    sock.close()


class SocketEnd:
    def __init__(self, sock):
        self.sock = sock

    def recv(self):
        return self.sock.recv(CHUNK)

    def sendall(self, data):
        self.sock.sendall(data)

    def delivered(self, n):
        pass

    def finish(self):
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self):
        abort(self.sock)

    def close(self):
        self.sock.close()


class StreamEnd:
    """A mux stream; credit goes back to the peer only once bytes were delivered onward."""

    def __init__(self, stream):
        self.stream = stream

    def recv(self):
        return self.stream.recv()

    def sendall(self, data):
        self.stream.sendall(data)

    def delivered(self, n):
        self.stream.consumed(n)

    def finish(self):
        self.stream.end()

    def abort(self):
        self.stream.reset()

    def close(self):
        self.stream.close()


class SpliceResult:
    __slots__ = ("a_to_b", "b_to_a", "error")

    def __init__(self):
        self.a_to_b = 0
        self.b_to_a = 0
        self.error = None


def _pump(src, dst, result, forward):
    try:
        while True:
            data = src.recv()
            if not data:
                dst.finish()
                return
            dst.sendall(data)
            src.delivered(len(data))
            if forward:
                result.a_to_b += len(data)
            else:
                result.b_to_a += len(data)
    except TRANSPORT_ERRORS as exc:
        if result.error is None:
            result.error = f"{exc.__class__.__name__}: {exc}"
        src.abort()
        dst.abort()


def splice(a, b):
    """Run both directions until each has finished; byte counts and the first error."""
    result = SpliceResult()
    other = gevent.spawn(_pump, b, a, result, False)
    try:
        _pump(a, b, result, True)
        other.join()
    finally:
        other.kill()
        a.close()
        b.close()
    return result
