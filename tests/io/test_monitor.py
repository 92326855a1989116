"""The metrics listener over a real loopback socket: routes, errors, bounds, bind failure."""

import json
import socket as stdlib_socket
from types import SimpleNamespace

import gevent
import pytest
from gevent import socket

from runewarp.config.model import MetricsConfig
from runewarp.io.httpserve import BoundedHandler
from runewarp.io.listener import BindError
from runewarp.io.monitor import Monitor
from runewarp.metrics import ServerMetrics
from runewarp.proto.routes import TunnelRoute

pytestmark = pytest.mark.timeout(30)


class Log:
    def __init__(self):
        self.lines = []

    def info(self, event, **fields):
        self.lines.append(("info", event, fields))

    warn = info


class Runtime:
    def __init__(self):
        self.config = SimpleNamespace(source="/etc/runewarp/server.toml")
        self.is_ready = True

    def ready(self):
        return self.is_ready

    def status(self):
        return {"tunnels": [], "certificates": []}


@pytest.fixture
def served():
    runtime = Runtime()
    metrics = ServerMetrics([TunnelRoute("apps", ["app.example.com"], ())], lambda: {})
    mon = Monitor(MetricsConfig(bind_address=("127.0.0.1", 0)), "server", runtime, metrics, Log())
    mon.start()
    yield mon, runtime
    mon.stop()


def exchange(address, data, timeout=5):
    """Send `data`, read until the server closes: the raw response."""
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(data)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:  # closed with our unread bytes: a close too
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def get(address, path, method="GET", extra=b""):
    response = exchange(address, f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


def test_routes(served):
    mon, runtime = served
    status, head, body = get(mon.address, "/metrics")
    assert status == 200 and "text/plain; version=" in head
    assert b'runewarp_visitor_connections_total{outcome="unknown-hostname"} 0.0' in body
    assert b"process_cpu_seconds_total" in body
    assert get(mon.address, "/healthz")[0] == 200
    assert get(mon.address, "/readyz")[0] == 200
    runtime.is_ready = False
    assert get(mon.address, "/readyz")[0] == 503
    status, head, body = get(mon.address, "/status")
    document = json.loads(body)
    assert status == 200 and "application/json" in head
    assert document["role"] == "server" and document["ready"] is False
    assert document["config"] == "/etc/runewarp/server.toml" and document["tunnels"] == []
    assert isinstance(document["uptime_seconds"], float)
    assert get(mon.address, "/nothing")[0] == 404
    assert get(mon.address, "/metrics", "POST")[0] == 405
    assert get(mon.address, "/metrics", "DELETE")[0] == 405


def test_bad_requests_get_an_error_or_a_close(served):
    mon, _ = served
    for garbage in (b"\x16\x03\x01garbage\r\n\r\n", b"\x00\xff not http at all\r\n\r\n",
                    b"GET\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n"):
        response = exchange(mon.address, garbage)
        assert response == b"" or response.startswith(b"HTTP/1.1 4"), (garbage, response)
    huge = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000)
                                                     for i in range(64)) + b"\r\n"
    response = exchange(mon.address, huge)
    assert not response.startswith(b"HTTP/1.1 200")
    body = b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    assert not exchange(mon.address, body).startswith(b"HTTP/1.1 200")
    assert get(mon.address, "/metrics")[0] == 200  # and the listener still answers


def test_a_slow_sender_is_closed_by_the_deadline_while_others_are_served(served, monkeypatch):
    mon, _ = served
    monkeypatch.setattr(BoundedHandler, "deadline", 1.0)
    slow = [socket.create_connection(mon.address) for _ in range(4)]
    for conn in slow:
        conn.sendall(b"GET /metr")  # and never the rest
    gevent.sleep(0.1)
    assert get(mon.address, "/metrics")[0] == 200
    for conn in slow:
        conn.settimeout(5)
        assert conn.recv(1024) == b""  # closed by the deadline, with nothing sent
        conn.close()


def test_a_taken_address_is_a_bind_error_naming_the_key():
    with stdlib_socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = taken.getsockname()
        mon = Monitor(MetricsConfig(bind_address=address), "client", Runtime(),
                      ServerMetrics([], lambda: {}), Log())
        with pytest.raises(BindError) as raised:
            mon.bind()
    assert str(raised.value).startswith(f"client.metrics.bind-address: 127.0.0.1:{address[1]}: ")


def test_no_table_no_listener():
    mon = Monitor(None, "server", Runtime(), ServerMetrics([], lambda: {}), Log())
    mon.bind()
    mon.start()
    assert mon.server is None and mon.address is None
    mon.stop()
