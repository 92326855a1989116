"""New-connection load generator: one worker process, N threads, stdlib ssl only.

    python bench/loadgen.py --port P --host H --ca CA [--threads 25] [--duration 10]
                            [--warmup 1] [--count N]

Every connection is a full TLS 1.3 handshake (no session resumption: the stdlib
never reuses a session unless asked), one `GET /`, reading the whole reply, then
waiting for the peer's close and closing.  We write our own instead of using wrk
because wrk keeps connections alive, and the cost we want is the per-connection
one: accept, SNI intake, stream open, backend connect, teardown.

The worker prints one JSON object on stdout: completed connections, the measured
window, per-connection latencies (ms, connect → full reply) and errors by kind.
bench.py runs several of these processes side by side (the GIL would otherwise
cap a single process) and merges their output.
"""

import argparse
import json
import socket
import ssl
import sys
import threading
import time


def request_for(host):
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def read_reply(tls):
    """Read one HTTP/1.1 reply with Content-Length; return (status line, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("eof-before-reply")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = tls.recv(4096)
        if not chunk:
            raise ConnectionError("eof-in-body")
        body += chunk
    return head.split(b"\r\n", 1)[0], body


def wait_for_close(tls, timeout):
    """Drain until the server side closes, so teardown is server-first (no RST, no TIME_WAIT here).

    A close that never arrives is an error worth reporting: it means a half-open
    connection somewhere on the path.
    """
    tls.settimeout(timeout)
    try:
        while tls.recv(4096):
            pass
    except ssl.SSLEOFError:
        pass  # TCP FIN without close_notify: still a close


def one_connection(ctx, port, host, request, timeout):
    """Connect, handshake, GET /, read, wait for close. Returns latency to full reply (s)."""
    started = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(request)
            status, body = read_reply(tls)
            latency = time.perf_counter() - started
            if not status.startswith(b"HTTP/1.1 200") or body != b"ok\n":
                raise ValueError("bad-response")
            wait_for_close(tls, timeout)
    finally:
        raw.close()
    return latency


def classify(exc):
    if isinstance(exc, ConnectionError) and exc.args and isinstance(exc.args[0], str) \
            and exc.args[0].startswith("eof"):
        return exc.args[0]
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return f"ssl:{exc.reason or type(exc).__name__}"
    return type(exc).__name__


def run(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    request = request_for(args.host)
    lock = threading.Lock()
    latencies, errors = [], {}
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    remaining = [args.count]

    def next_ticket():
        if args.count:
            with lock:
                if remaining[0] <= 0:
                    return False
                remaining[0] -= 1
            return True
        return time.perf_counter() < stop_at

    def loop():
        while next_ticket():
            try:
                latency = one_connection(ctx, args.port, args.host, request, args.timeout)
            except Exception as exc:  # every failure is counted, none stops the run
                kind = classify(exc)
                with lock:
                    errors[kind] = errors.get(kind, 0) + 1
                time.sleep(0.01)
                continue
            ended = time.perf_counter()
            if args.count or measure_from <= ended <= stop_at:
                with lock:
                    latencies.append(latency * 1000)

    if args.count:  # fixed count: warm up with a few connections that are not recorded
        for _ in range(5):
            try:
                one_connection(ctx, args.port, args.host, request, args.timeout)
            except Exception:
                pass
        start = time.perf_counter()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = (time.perf_counter() - start) if args.count else args.duration
    json.dump({"ok": len(latencies), "window_s": window, "latencies_ms": latencies,
               "errors": errors}, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--threads", type=int, default=25)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="fixed number of connections")
    parser.add_argument("--timeout", type=float, default=10.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
