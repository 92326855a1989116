"""Many-streams opener for bench.py: hold N TLS connections open at once, then use them.

    python bench/streams.py --port P --host H --ca CA --count N
                            [--sources 127.0.1.1,127.0.1.2,...] [--inflight 100]
                        [--timeout 60] [--open-deadline 150]

One process, one selector, non-blocking sockets and stdlib ssl: the TCP connect and
the whole TLS 1.3 handshake of each connection are driven by readiness events, with
at most --inflight handshakes in progress (a Visitor storm that a Server's intake
limits admit; the connections spread over --sources, like Visitors from many hosts).
A completed handshake through Runewarp means the stream reached the backend, so every
connection held here is one live stream on the Tunnel connection.

Driven by bench.py over stdin/stdout, one JSON object per line:

    -> {"phase": "open", "opened": n, "errors": {...}, "seconds": s}   (all attempts done)
    <- "get"        one `GET /` (keep-alive) on every open connection, all at once
    -> {"phase": "get", "ok": n, "errors": {...}, "seconds": s}
    <- "close"      (or EOF) close everything and exit
"""

import argparse
import errno
import json
import selectors
import socket
import ssl
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def classify(exc):
    if isinstance(exc, ssl.SSLError):
        return f"ssl:{exc.reason or type(exc).__name__}"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Conn:
    __slots__ = ("sock", "fd", "state", "deadline")

    def __init__(self, sock, deadline):
        self.sock, self.fd, self.state, self.deadline = sock, sock.fileno(), "connect", deadline


def open_all(args, ctx, sel):
    sources = args.sources.split(",") if args.sources else [None]
    started = time.monotonic()
    opened, errors, pending, next_index = [], {}, {}, 0

    def fail(conn, exc):
        kind = classify(exc)
        errors[kind] = errors.get(kind, 0) + 1
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        del pending[conn.fd]

    def start(index):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        src = sources[index % len(sources)]
        try:
            if src:
                raw.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                raw.bind((src, 0))
            code = raw.connect_ex(("127.0.0.1", args.port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, errno.errorcode.get(code, "connect"))
        except OSError as exc:
            raw.close()
            kind = classify(exc)
            errors[kind] = errors.get(kind, 0) + 1
            return
        conn = Conn(raw, time.monotonic() + args.timeout)
        pending[raw.fileno()] = conn
        sel.register(raw, selectors.EVENT_WRITE, conn)

    def step(conn):
        """Advance one connection; returns True when its handshake is complete."""
        if conn.state == "connect":
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, errno.errorcode.get(code, "connect"))
            fd = conn.sock.fileno()
            sel.unregister(conn.sock)
            conn.sock = ctx.wrap_socket(conn.sock, server_hostname=args.host,
                                        do_handshake_on_connect=False)
            assert conn.sock.fileno() == fd
            conn.state = "handshake"
            sel.register(conn.sock, selectors.EVENT_READ, conn)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return False
        except ssl.SSLWantWriteError:
            sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return False
        return True

    give_up = started + args.open_deadline
    while next_index < args.count or pending:
        if time.monotonic() > give_up:
            errors["open-deadline"] = errors.get("open-deadline", 0) + len(pending)
            if next_index < args.count:
                errors["not-attempted"] = args.count - next_index
            for conn in pending.values():
                sel.unregister(conn.sock)
                conn.sock.close()
            pending.clear()
            break
        while next_index < args.count and len(pending) < args.inflight:
            start(next_index)
            next_index += 1
        for key, _mask in sel.select(0.5):
            conn = key.data
            try:
                if step(conn):
                    sel.unregister(conn.sock)
                    del pending[conn.fd]
                    opened.append(conn.sock)
            except Exception as exc:
                fail(conn, exc)
        now = time.monotonic()
        for conn in [c for c in pending.values() if c.deadline < now]:
            fail(conn, TimeoutError())
    return opened, errors, time.monotonic() - started


def get_all(args, conns, sel):
    """One keep-alive GET / on every connection at once; a reply is the full `ok\\n` body."""
    request = f"GET / HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode()
    started = time.monotonic()
    deadline = started + args.timeout
    errors, ok, waiting = {}, 0, {}
    for tls in conns:
        try:
            tls.send(request)   # 40 bytes: always fits an empty send buffer in one record
            waiting[tls] = b""
            sel.register(tls, selectors.EVENT_READ, tls)
        except Exception as exc:
            kind = f"send:{classify(exc)}"
            errors[kind] = errors.get(kind, 0) + 1
    while waiting and time.monotonic() < deadline:
        for key, _mask in sel.select(0.5):
            tls = key.data
            try:
                while True:
                    chunk = tls.recv(4096)
                    if not chunk:
                        raise ConnectionError("eof")
                    waiting[tls] += chunk
                    if tls.pending() == 0:
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except Exception as exc:
                kind = f"recv:{classify(exc)}"
                errors[kind] = errors.get(kind, 0) + 1
                sel.unregister(tls)
                del waiting[tls]
                continue
            reply = waiting[tls]
            if b"\r\n\r\n" in reply and reply.endswith(b"ok\n"):
                sel.unregister(tls)
                del waiting[tls]
                if reply.startswith(b"HTTP/1.1 200"):
                    ok += 1
                else:
                    errors["bad-response"] = errors.get("bad-response", 0) + 1
    if waiting:
        errors["timeout"] = errors.get("timeout", 0) + len(waiting)
        for tls in waiting:
            sel.unregister(tls)
    return ok, errors, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sources", default="")
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="per connection attempt, and for all the GETs")
    parser.add_argument("--open-deadline", type=float, default=150.0,
                        help="stop starting connections after this long; count the rest")
    args = parser.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sel = selectors.DefaultSelector()
    conns, errors, seconds = open_all(args, ctx, sel)
    emit({"phase": "open", "opened": len(conns), "errors": errors, "seconds": seconds})
    try:
        for line in sys.stdin:
            if line.strip() == "get":
                ok, errors, seconds = get_all(args, conns, sel)
                emit({"phase": "get", "ok": ok, "errors": errors, "seconds": seconds})
            elif line.strip() == "close":
                break
    finally:
        for tls in conns:
            tls.close()


if __name__ == "__main__":
    main()
