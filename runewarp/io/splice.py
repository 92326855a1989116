"""Splice a TCP socket and a mux stream: two pumps, half-close on EOF, both joined.

Bytes move in chunks of up to 64 KiB that exist only while data is moving: an
idle connection holds no buffer.  A FIN in one direction becomes a FIN in the
same direction on the other side; an error or reset aborts both.
"""

import socket
import struct

import gevent

from .tunnel import StreamReset

CHUNK = 64 * 1024
_LINGER_ABORT = struct.pack("ii", 1, 0)


def abort(sock):
    """Close with a TCP reset, so the peer sees an error rather than a clean EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    sock.close()


class SpliceResult:
    __slots__ = ("up", "down", "error")

    def __init__(self):
        self.up = 0
        self.down = 0
        self.error = None


def _socket_to_stream(sock, stream, result):
    """TCP → mux. EOF → FIN; error → RST."""
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                stream.end()
                return
            stream.sendall(data)
            result.up += len(data)
    except StreamReset as exc:
        result.error = result.error or f"stream reset: {exc}"
        abort_both(sock, stream)
    except OSError as exc:
        result.error = result.error or f"socket error: {exc}"
        abort_both(sock, stream)


def _stream_to_socket(stream, sock, result):
    """mux → TCP. FIN → shutdown(SHUT_WR); RST → abort the socket."""
    try:
        while True:
            data = stream.recv()
            if not data:
                sock.shutdown(socket.SHUT_WR)
                return
            sock.sendall(data)
            stream.consumed(len(data))
            result.down += len(data)
    except StreamReset as exc:
        result.error = result.error or f"stream reset: {exc}"
        abort_both(sock, stream)
    except OSError as exc:
        result.error = result.error or f"socket error: {exc}"
        abort_both(sock, stream)


def abort_both(sock, stream):
    stream.reset()
    abort(sock)


def splice(sock, stream):
    """Run both directions until each has finished; returns byte counts and the error, if any."""
    result = SpliceResult()
    up = gevent.spawn(_socket_to_stream, sock, stream, result)
    try:
        _stream_to_socket(stream, sock, result)
        up.join()
    finally:
        up.kill()
        stream.close()
        sock.close()
    return result
