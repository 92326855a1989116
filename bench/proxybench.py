"""The `proxy` phase of bench/bench.py: plain TCP through `runewarp proxy --listen` + Server +
Client (a terminate Service) against the same TCP backend dialled directly.

The backend (this file run as `source PORT`) answers each connection's 8-byte request
(a big-endian byte count) with that many bytes from one preallocated buffer, then closes.
Bulk: one stream of BENCH_PROXY_MB (default 256) MiB, PROXY_REPEATS times per side,
interleaved.  Setup: PROXY_SETUPS sequential connections per side, each timed from
connect to its first answer byte (for the proxy: TCP to the proxy, TLS through the Server
to the Client, the Client's dial to the backend).
"""

import os
import socket
import statistics
import struct
import sys
import threading
import time

PROXY_MB = int(os.environ.get("BENCH_PROXY_MB", "256"))
PROXY_REPEATS = 2
PROXY_SETUPS = 50
_BLOCK = memoryview(b"\x5a" * (1 << 20))


def serve_source(port):
    """The backend: a thread per connection (the bench reads one or two at a time)."""
    listener = socket.create_server(("127.0.0.1", port), backlog=256)

    def answer(conn):
        with conn:
            try:
                want = struct.unpack("!Q", _recv_exactly(conn, 8))[0]
                while want:
                    n = conn.send(_BLOCK[:min(want, len(_BLOCK))])
                    want -= n
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the reader closes: no reset under its last bytes
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def _recv_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def fetch(port, size, timeout=120):
    """(bytes received, seconds from connect to the first byte, total seconds)."""
    buffer = bytearray(1 << 20)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!Q", size))
        got, first = 0, None
        while True:
            n = sock.recv_into(buffer)
            if not n:
                break
            if first is None:
                first = time.perf_counter() - started
            got += n
    return got, first, time.perf_counter() - started


def measure(targets, repeats=PROXY_REPEATS, setups=PROXY_SETUPS, size_mb=PROXY_MB):
    """`targets`: name -> local port.  Bulk MB/s and setup milliseconds per name."""
    out = {name: {"mb_s": [], "latencies_ms": [], "errors": []} for name in targets}
    for rep in range(repeats):
        for name, port in targets.items():
            got, _first, total = fetch(port, size_mb << 20)
            if got != size_mb << 20:
                out[name]["errors"].append(f"bulk: {got} of {size_mb << 20} bytes")
            out[name]["mb_s"].append(got / total / 1e6)
            print(f"  proxy bulk      {name:8} #{rep + 1}: {got / total / 1e6:8.1f} MB/s", flush=True)
    for name, port in targets.items():
        for _ in range(setups):
            got, first, _total = fetch(port, 1)
            if got != 1:
                out[name]["errors"].append(f"setup: {got} of 1 byte")
                continue
            out[name]["latencies_ms"].append(first * 1000)
        setup = out[name]["latencies_ms"]
        out[name]["setup_p50_ms"] = statistics.median(setup) if setup else None
        print(f"  proxy setup     {name:8}: p50 {out[name]['setup_p50_ms'] or 0:.2f} ms "
              f"over {len(setup)} connections", flush=True)
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["source"]:
    serve_source(int(sys.argv[2]))
