"""The bench's fleet phase (bench/fleetbench.py) before it judges anything: its probe tells a
completed Visitor handshake from a connection the Server closes, its wait is bounded, and
its figures and met / not met line read the runs the right way."""

import socket
import ssl
import sys
import threading
import time

import pytest

from .conftest import ROOT, cli_material

sys.path.append(str(ROOT / "bench"))
import fleetbench  # noqa: E402 - bench/ is a folder of scripts, not a package

pytestmark = pytest.mark.timeout(60)


def serve(listener, handle):
    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def test_the_probe_completes_only_a_handshake_and_the_wait_is_bounded(tmp_path):
    cli_material(tmp_path / "cert", "server", "cert", "init", "--hostname", "tunnel.example.com")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert/server.crt", tmp_path / "cert/server.key")

    def handshake(conn):
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass

    def read_and_close(conn):  # what a Server does with a hostname it does not route
        with conn:
            conn.recv(4096)

    with socket.create_server(("127.0.0.1", 0)) as routed, \
            socket.create_server(("127.0.0.1", 0)) as unknown:
        serve(routed, handshake)
        serve(unknown, read_and_close)
        ports = {"a": routed.getsockname()[1], "b": unknown.getsockname()[1]}
        assert fleetbench.routes(ports["a"], "c1.fleet.bench.example")
        assert not fleetbench.routes(ports["b"], "c1.fleet.bench.example")
        started = time.perf_counter()
        seen = fleetbench.wait_routing(ports, "c1.fleet.bench.example", started, bound=2)
        assert seen["b"] is None and time.perf_counter() - started < 6  # gave up at its bound
        sent, done = seen["a"]
        assert 0 <= sent <= done < 2


def run(i, other_ms, writer_ms=1.0, error=None):
    out = {"i": i, "writer": "ab"[i % 2], "other_ms": other_ms, "other_sent_ms": other_ms,
           "writer_ms": writer_ms, "writer_sent_ms": 0.0}
    return dict(out, error=error) if error else out


def test_figures_and_the_target():
    runs = [run(i, ms) for i, ms in enumerate([12.0, 8.0, 30.0, 10.0, 1500.0], 1)]
    res = fleetbench.summarize(runs)
    assert (res["p50_ms"], res["p99_ms"], res["max_ms"]) == (12.0, 1500.0, 1500.0)
    assert res["met"] and res["over_target"] == 0
    lines = fleetbench.report(res)
    assert lines[0] == ("fleet: a change through one node's API routes on the other in p50 12 ms,"
                        " max 1500 ms (5 changes; target ≤ 2 s: met)")

    slow = fleetbench.summarize(runs + [run(6, 2100.0)])
    assert not slow["met"] and slow["over_target"] == 1
    assert fleetbench.report(slow)[0].endswith("target ≤ 2 s: NOT met)")

    lost = fleetbench.summarize(runs + [run(6, None, error="c6 not routing on node a within 15 s")])
    assert not lost["met"] and lost["measured"] == 5 and lost["failures"]
    assert "c6 not routing" in "\n".join(fleetbench.report(lost))

    assert fleetbench.report({"skipped": "etcd not installed"}) == ["fleet: skipped (etcd not installed)"]
    assert fleetbench.report({}) == []
