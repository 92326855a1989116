"""The `quic` phase of bench/bench.py: UDP datagrams through the Server's public QUIC socket and
the Client to a UDP echo backend (`python -m tests.h3peers udp-echo`), against the same echo
backend dialled directly.

Every flow is one connected UDP socket whose first datagram is a real client Initial
carrying a ClientHello for the bench hostname (tests/h3peers.sealed_initial, the same
as the end-to-end tests); the rest are arbitrary 1,200-byte payloads, which the Server
and Client relay without reading.
- rate: QUIC_FLOWS flows with QUIC_WINDOW datagrams in flight each, for QUIC_SECONDS;
  each echo sends the next datagram.  A flow silent for 100 ms is refilled (the loss is
  counted).  Datagrams per second = echoes received / seconds.
- latency: one flow, QUIC_ROUND_TRIPS sequential round trips (send one, wait for its echo).
CPU per datagram: utime + stime of the given processes during the rate runs, divided
by the datagrams they carried (each echo is one datagram each way: two).
"""

import os
import selectors
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.h3peers import sealed_initial  # noqa: E402 - the repository root first

QUIC_FLOWS = 8
QUIC_WINDOW = 16
QUIC_SECONDS = float(os.environ.get("BENCH_QUIC_SECONDS", "3"))
QUIC_REPEATS = 2
QUIC_ROUND_TRIPS = 1000
PAYLOAD = 1200
_REFILL_AFTER = 0.1


def open_flow(port, hostname, timeout=10):
    """A connected UDP socket whose sealed Initial came back from the echo backend."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    initial = sealed_initial(hostname)
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        sock.send(initial)
        try:
            if sock.recv(65536) == initial:
                return sock
        except TimeoutError:
            continue
    sock.close()
    raise RuntimeError(f"no echo of the first Initial from 127.0.0.1:{port} in {timeout} s")


def rate(port, hostname, cpu_seconds, pids, seconds=QUIC_SECONDS):
    """(echoes per second, refills, CPU seconds of `pids`) for QUIC_FLOWS flows."""
    socks = [open_flow(port, hostname) for _ in range(QUIC_FLOWS)]
    payload = os.urandom(PAYLOAD)
    selector = selectors.DefaultSelector()
    last = {}
    try:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        cpu0 = cpu_seconds(pids)
        started = time.perf_counter()
        for sock in socks:
            for _ in range(QUIC_WINDOW):
                sock.send(payload)
            last[sock] = started
        echoes = refills = 0
        end = started + seconds
        while (now := time.perf_counter()) < end:
            for key, _ in selector.select(0.02):
                sock = key.fileobj
                while True:
                    try:
                        sock.recv(65536)
                    except BlockingIOError:
                        break
                    echoes += 1
                    last[sock] = now
                    _send(sock, payload)
            for sock, seen in last.items():
                if now - seen > _REFILL_AFTER:
                    refills += 1
                    last[sock] = now
                    for _ in range(QUIC_WINDOW):
                        _send(sock, payload)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu0
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    return echoes / wall, refills, cpu, echoes


def _send(sock, payload):
    try:
        sock.send(payload)
    except (BlockingIOError, ConnectionRefusedError):
        pass  # a full socket buffer or a refused port: the datagram is lost, as UDP may


def latency(port, hostname, count=QUIC_ROUND_TRIPS):
    """(round-trip milliseconds, lost) of `count` sequential datagrams on one flow."""
    sock = open_flow(port, hostname)
    sock.settimeout(1)
    out, lost = [], 0
    try:
        for i in range(count):
            payload = i.to_bytes(4) + bytes(PAYLOAD - 4)
            started = time.perf_counter()
            sock.send(payload)
            try:
                while sock.recv(65536) != payload:
                    pass
            except TimeoutError:
                lost += 1
                continue
            out.append((time.perf_counter() - started) * 1000)
    finally:
        sock.close()
    return out, lost


def measure(targets, hostname, cpu_seconds):
    """`targets`: name -> (UDP port, pids whose CPU counts).  Alternates the names."""
    out = {name: {"rates": [], "refills": 0, "cpu_s": 0.0, "datagrams": 0} for name in targets}
    for rep in range(QUIC_REPEATS):
        for name, (port, pids) in targets.items():
            per_s, refills, cpu, echoes = rate(port, hostname, cpu_seconds, pids)
            res = out[name]
            res["rates"].append(per_s)
            res["refills"] += refills
            res["cpu_s"] += cpu
            res["datagrams"] += 2 * echoes
            print(f"  quic rate       {name:8} #{rep + 1}: {per_s:8.0f} datagrams/s echoed, "
                  f"{refills} refills", flush=True)
    for name, (port, _pids) in targets.items():
        out[name]["latencies_ms"], out[name]["lost"] = latency(port, hostname)
        out[name]["cpu_us_per_datagram"] = 1e6 * out[name]["cpu_s"] / max(1, out[name]["datagrams"])
    return out
