"""The bounds of every HTTP listener (metrics, the configuration API): gevent's WSGI server
parses HTTP, the bounds are ours, so a listener cannot be used to exhaust the process.

One request per connection; the connection is closed after READ_DEADLINE seconds (a
handler's `deadline`) whatever it is doing; at most `header_bytes` of request line and
headers plus `body_bytes` of body are read from it; the pool passed to the server bounds
the handlers at once (MAX_CONNECTIONS).
"""

import io
import json

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

MAX_CONNECTIONS = 16
READ_DEADLINE = 5.0
MAX_REQUEST_BYTES = 16 * 1024
LINGER = 2.0  # at most this long a closing connection reads what the caller still sends,
LINGER_IDLE = 0.1  # as long as something arrives within this (a caller that stays silent
LINGER_BYTES = 256 * 1024  # holds its pool slot no longer than LINGER_IDLE)


class RequestTooLarge(ValueError):
    """More bytes than the handler's budget (pywsgi answers 400 while reading headers)."""


class _CappedReader(io.RawIOBase):
    """The connection's bytes, at most `budget` of them; then RequestTooLarge."""

    def __init__(self, sock, budget):
        self.sock = sock
        self.budget = budget

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.budget <= 0:
            raise RequestTooLarge("request too large")
        view = memoryview(buffer)[:self.budget]
        n = self.sock.recv_into(view)
        self.budget -= n
        return n


class BoundedHandler(WSGIHandler):
    """One request per connection, within `deadline` and a byte budget; a body only when
    `body_bytes` allows one (the application reads at most that much: `read_body`)."""

    deadline = READ_DEADLINE
    header_bytes = MAX_REQUEST_BYTES
    body_bytes = 0

    def __init__(self, sock, address, server):
        super().__init__(sock, address, server, rfile=io.BufferedReader(
            _CappedReader(sock, self.header_bytes + self.body_bytes)))

    def handle(self):
        with gevent.Timeout(self.deadline, False):
            super().handle()
        if self.__dict__.get("socket") is not None:  # the deadline cut it short
            self.socket.close()

    def handle_error(self, t, v, tb):
        """More bytes than the budget is the caller's error, not ours: no traceback, the
        connection closes (pywsgi meets it discarding a body the answer already refused)."""
        if isinstance(v, RequestTooLarge):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def read_request(self, raw_requestline):
        super().read_request(raw_requestline)
        self.close_connection = True
        if not self.body_bytes and (self.content_length or "transfer-encoding" in self.headers):
            raise ValueError("a request body is not accepted")
        return True


def read_body(environ, limit):
    """The request body, or None when it is longer than `limit` bytes (read no further) or
    more bytes than the connection's budget (chunk framing, long headers) came with it."""
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        return None
    try:
        body = environ["wsgi.input"].read(limit + 1)
    except RequestTooLarge:
        return None
    return None if len(body) > limit else body


def respond(start_response, status, body, headers=(), content_type="text/plain; charset=utf-8"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers])
    return [body]


def respond_json(start_response, status, document, headers=()):
    return respond(start_response, status, json.dumps(document, indent=2).encode() + b"\n", headers,
                   content_type="application/json")


class BoundedServer(WSGIServer):
    """pywsgi with `handler_class` (a BoundedHandler) in a pool of MAX_CONNECTIONS, closing
    each connection with a linger: a socket closed with bytes unread is reset, and the reset
    can destroy the answer before the caller reads it (a body the answer refused, a request
    pywsgi turned away before its body)."""

    def __init__(self, sock, app, handler_class):
        super().__init__(sock, app, spawn=Pool(MAX_CONNECTIONS), handler_class=handler_class,
                         log=None, error_log=None)

    def handle(self, sock, address):
        try:
            super().handle(_KeptOpen(sock), address)
            linger(sock)
        finally:
            sock.close()


class _KeptOpen:
    """The connection as pywsgi's handler sees it: its close waits for BoundedServer's."""

    def __init__(self, sock):
        self._connection = sock

    def __getattr__(self, name):
        if name == "_sock":  # pywsgi would drain and close the OS socket under it: linger's job
            return None
        return getattr(self._connection, name)

    def close(self):
        pass


def linger(sock):
    """Read and drop what the caller still sends until it closes, goes quiet for LINGER_IDLE,
    LINGER seconds pass or LINGER_BYTES arrived; it has the whole answer and `Connection:
    close` already."""
    left = LINGER_BYTES
    with gevent.Timeout(LINGER, False):
        try:
            while left > 0:
                with gevent.Timeout(LINGER_IDLE, False):
                    data = sock.recv(min(left, 65536))
                    if not data:
                        return
                    left -= len(data)
                    continue
                return  # quiet: nothing was left unread
        except (OSError, ValueError):
            pass
