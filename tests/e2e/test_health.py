"""Health-aware routing with real processes: two Client instances of one Tunnel, each with
its own TLS Local backend, under a continuous bounded Visitor load (stdlib TLS Visitors
that check the body).  Passive detection, probing back, fail closed when no member is
healthy, active checks, a stopped (SIGSTOP) member, and reloads of the health keys."""

import json
import shutil
import signal
import socket
import ssl
import threading
import time
from itertools import pairwise
from dataclasses import dataclass

import pytest

from runewarp.io.tunnel import PING_OVERDUE
from runewarp.material import public_cert_folder

from ..conftest import Proc, cli_material, free_port, run_cli
from .helpers import TCPBackend, reload_by_signal
from .test_metrics import eventually, metrics_table, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
A = "a.example.com"
OUTCOMES = "runewarp_visitor_connections_total"
RATE = 30  # Visitors a second


class TLSBackend:
    """A TLS Local backend on threads that answers every request with `backend=NAME`; it
    can stop listening (connects are refused) and listen again on the same port."""

    def __init__(self, name, material):
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(material.cert, material.key)
        self.port = 0
        self.sock = None
        self.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        except OSError:
            pass
        self.sock.close()

    def _accept(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        body = f"backend={self.name}\n".encode()
        try:
            conn.settimeout(10)
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                            % len(body) + body)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@dataclass
class Material:
    cert: object
    key: object
    ca: object


@pytest.fixture
def material(tmp_path):
    folder = tmp_path / "backend-cert"
    cli_material(folder, "client", "public-cert", "init", "--hostname", A, copy_of="health")
    leaf = folder / public_cert_folder(A)
    return Material(leaf / "public.crt", leaf / "public.key", folder / "public-ca.crt")


@pytest.fixture
def backends(material):
    started = [TLSBackend("one", material), TLSBackend("two", material)]
    yield started
    for backend in started:
        backend.stop()


@dataclass
class Visit:
    started: float
    backend: str | None  # None: failed
    error: str | None = None


def visit(port, ca, timeout=10):
    """One Visitor: TLS to the Server as A, GET /; the backend that answered, or why not."""
    started = time.monotonic()
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=A) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {A}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
    except (OSError, ssl.SSLError) as exc:
        return Visit(started, None, f"{type(exc).__name__}: {exc}")
    body = data.partition(b"\r\n\r\n")[2].decode(errors="replace")
    if not body.startswith("backend="):
        return Visit(started, None, f"bad body {body!r}")
    return Visit(started, body.strip().removeprefix("backend="))


class Load(threading.Thread):
    """Visitors one after another at about RATE a second until stopped (bounded: one at a
    time, so at most one is in flight when a member goes bad)."""

    def __init__(self, port, ca):
        super().__init__(daemon=True)
        self.port, self.ca = port, ca
        self.visits = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            started = time.monotonic()
            self.visits.append(visit(self.port, self.ca))
            self.stopped.wait(max(0.0, 1 / RATE - (time.monotonic() - started)))

    def served_by(self, name, since=0.0):
        return [v for v in list(self.visits) if v.backend == name and v.started >= since]

    def failed(self, since=0.0, until=float("inf")):
        return [v for v in list(self.visits) if v.backend is None and since <= v.started < until]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join(15)


def client_config(deployment, name, backend, settings="", check=None, tables=""):
    """A Client instance `name` with the identity of client-a, one Service for A;
    `settings` go in [client], `tables` (its sub-tables) before the Service."""
    if name != "client-a" and not (deployment.dir / name).exists():
        shutil.copytree(deployment.dir / "client-a", deployment.dir / name, symlinks=True)
    path = deployment.client_config(name, [([A], backend.address)])
    text = path.read_text().replace("[client]\n", f"[client]\n{settings}\n", 1)
    text = text.replace("\n[[client.services]]", f"\n{tables}\n[[client.services]]", 1)
    if check:
        text += f"health-check = {check}\n"  # the file ends in the Service's table
    path.write_text(text)
    return path


def start_client(deployment, path):
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    return client


def start_pair(deployment, backends, server_extra="", settings=""):
    """The Server and two Client instances of one identity, one per backend."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [A], [identity])], extra=server_extra)
    clients = [start_client(deployment, client_config(deployment, name, backend, settings))
               for name, backend in zip(("client-a", "client-b"), backends, strict=True)]
    server.wait_count("tunnel-connection-established", 2)
    return server, clients


def test_a_dead_backend_gets_no_visitors_once_detected_and_gets_them_again_when_back(
        deployment, backends, material):
    one, two = backends
    server, (_, second) = start_pair(deployment, backends)
    with Load(deployment.public_port, material.ca) as load:
        assert eventually(lambda: load.served_by("one") and load.served_by("two"), timeout=10)
        two.stop()
        second.wait_for(f"service-unhealthy backend-address={two.address} "
                        f"public-hostnames={A} failures=3 reason=.*refused")
        server.wait_for(f"tunnel-member-health tunnel=apps .*unhealthy={A}")
        detected = time.monotonic()  # seen after the Server learnt it: a safe mark
        time.sleep(2)
        two.start()
        back = second.wait_for("service-healthy", timeout=10)
        assert back
        assert eventually(lambda: load.served_by("two", since=detected), timeout=10)
    # The only failures are the streams that taught the Client: unhealthy-after of them.
    assert load.failed(since=detected) == [], load.failed(since=detected)
    assert len(load.failed()) <= 3, load.failed()
    assert second.count("backend-connect-failed") == 3
    assert len(load.served_by("one", since=detected)) > 30  # it took the whole load meanwhile


def test_with_no_healthy_member_visitors_are_dropped_quickly_and_counted(
        deployment, backends, material):
    metrics = free_port()
    server, clients = start_pair(
        deployment, backends, settings="unhealthy-after = 1",
        server_extra=f"[server.limits]\nmember-wait = 1\n{metrics_table('server', metrics)}")
    for backend in backends:
        backend.stop()
    for client in clients:  # each learns from one failed stream (unhealthy-after = 1)
        while not client.count("service-unhealthy"):
            assert visit(deployment.public_port, material.ca).backend is None
    server.wait_count("tunnel-member-health", 2)
    # A learning Visitor may already have met no healthy member (its Client's log line can
    # come after the Server heard): count the three drops from here.
    before = value(metrics, OUTCOMES, outcome="no-healthy-member") or 0
    drops = [visit(deployment.public_port, material.ca) for _ in range(3)]
    for drop in drops:
        assert drop.backend is None
    took = [later.started - earlier.started for earlier, later in pairwise(drops)]
    assert all(0.8 < t < 2.5 for t in took), took  # member-wait (1 s), far below client-hello
    assert value(metrics, OUTCOMES, outcome="no-healthy-member") - before == 3
    assert server.count("no-healthy-member scope=apps") == 1  # rate-limited
    # A backend back: its Client probes it within 2 s, and Visitors reach it again.
    backends[0].start()
    clients[0].wait_for("service-healthy", timeout=10)
    assert eventually(lambda: visit(deployment.public_port, material.ca).backend == "one",
                      timeout=10)


class NotTLS(TCPBackend):
    """Accepts TCP and reads, never answering: a TCP check passes, a TLS one times out.
    `accepted`: when each connection came; `ended`: when the checker closed it, by its index."""

    def __init__(self):
        self.accepted, self.ended = [], {}
        super().__init__()

    def serve(self, conn):
        self.accepted.append(time.monotonic())
        index = len(self.accepted) - 1  # one check per interval: no two threads here at once
        try:
            while conn.recv(4096):
                pass
        finally:
            self.ended[index] = time.monotonic()

    def left_open(self, older_than):
        """Connections accepted over `older_than` s ago and still open."""
        now = time.monotonic()
        return [i for i, at in enumerate(self.accepted) if now - at > older_than and i not in self.ended]


def test_active_checks_flip_unhealthy_and_back_within_two_intervals(deployment, backends,
                                                                     material):
    one, _ = backends
    metrics = free_port()
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [A], [identity])],
                                     extra=metrics_table("server", free_port()))
    path = client_config(deployment, "client-a", one, tables=metrics_table("client", metrics),
                         check='{ interval = 1, timeout = 0.5, kind = "tls" }')
    client = start_client(deployment, path)
    gauge = ("runewarp_service_healthy", {"service": one.address})
    assert value(metrics, gauge[0], **gauge[1]) == 1
    one.stop()  # no Visitor at all: only the check can see it
    stopped = time.monotonic()
    client.wait_for(f"service-unhealthy backend-address={one.address} .*reason=.tls check",
                    timeout=5)
    assert time.monotonic() - stopped < 2.0
    server.wait_for(f"tunnel-member-health .*unhealthy={A}")
    assert value(metrics, gauge[0], **gauge[1]) == 0
    document = json.loads(run_cli("server", "status", "-c", deployment.dir / "server.toml",
                                  "--json").stdout)
    (member,) = document["tunnels"][0]["members"]
    assert (member["unhealthy_hostnames"], member["ping_overdue"]) == ([A], False)
    status = run_cli("client", "status", "-c", path)
    assert "unhealthy" in status.stdout, status.stdout
    one.start()
    restarted = time.monotonic()
    client.wait_for("service-healthy", timeout=5)
    assert time.monotonic() - restarted < 2.0
    assert value(metrics, gauge[0], **gauge[1]) == 1


def test_a_stopped_member_gets_no_new_streams_after_the_ping_overdue_bound(
        deployment, backends, material):
    server, (_, second) = start_pair(
        deployment, backends, server_extra="[server.timeouts]\nkeepalive-interval = 1\n"
                                           "dead-peer = 60")
    assert eventually(lambda: {visit(deployment.public_port, material.ca).backend
                               for _ in range(4)} == {"one", "two"}, timeout=10)
    second.signal(signal.SIGSTOP)
    try:
        time.sleep(1 + PING_OVERDUE + 1)  # keepalive-interval + the bound, and a margin
        visits = [visit(deployment.public_port, material.ca, timeout=5) for _ in range(10)]
        assert [v.backend for v in visits] == ["one"] * 10, visits
        assert all(later.started - earlier.started < 2
                   for earlier, later in pairwise(visits))
    finally:
        second.signal(signal.SIGCONT)
    assert eventually(lambda: visit(deployment.public_port, material.ca).backend == "two",
                      timeout=10)
    assert server.count("tunnel-connection-closed") == 0


def test_a_reload_applies_unhealthy_after_and_health_check(deployment, backends, material):
    one, _ = backends
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [A], [identity])])
    path = client_config(deployment, "client-a", one, "unhealthy-after = 5")
    client = start_client(deployment, path)
    one.stop()
    assert visit(deployment.public_port, material.ca).backend is None
    client_config(deployment, "client-a", one, "unhealthy-after = 2")
    reload_by_signal(client, "client-reloaded")
    assert visit(deployment.public_port, material.ca).backend is None
    client.wait_for("service-unhealthy .*failures=2")  # the count so far was kept
    one.start()
    client.wait_for("service-healthy", timeout=10)
    # A check added by a reload runs at once: a backend that stops is seen with no Visitor.
    client_config(deployment, "client-a", one, check='{ interval = 1, timeout = 0.5, kind = "tcp" }')
    mark = reload_by_signal(client, "client-reloaded")
    one.stop()
    stopped = time.monotonic()
    client.wait_for("service-unhealthy .*reason=.tcp check", start=mark, timeout=5)
    assert time.monotonic() - stopped < 2.0  # interval = 1, not the default 5
    one.start()
    client.wait_for("service-healthy", start=mark, timeout=5)
    # kind = "tls" from a reload: a backend that accepts TCP but speaks no TLS fails it.
    one.stop()
    not_tls = NotTLS()
    try:
        client_config(deployment, "client-a", not_tls,
                      check='{ interval = 1, timeout = 0.5, kind = "tcp" }')
        mark = reload_by_signal(client, "client-reloaded")
        time.sleep(2.5)
        assert client.count("service-unhealthy") == 2  # the TCP check passes
        client_config(deployment, "client-a", not_tls,
                      check='{ interval = 1, timeout = 0.5, kind = "tls" }')
        mark = reload_by_signal(client, "client-reloaded")
        client.wait_for("service-unhealthy .*reason=.tls check: deadline exceeded", start=mark,
                        timeout=5)
        time.sleep(4)  # more checks cut short: each closes its connection at its 0.5 s deadline
        assert len(not_tls.accepted) >= 3 and not not_tls.left_open(older_than=2)
    finally:
        not_tls.close()


def test_a_new_tunnel_connection_and_a_later_hello_carry_the_unhealthy_services(
        deployment, backends, material):
    """The Server's view of a member starts from its hello: right after a welcome, and after
    a later hello (a reload changed the Services), the Client says what is unhealthy."""
    one, two = backends
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [A, "b.example.com"], [identity])],
                                     extra="[server.limits]\nmember-wait = 0")
    path = client_config(deployment, "client-a", one, "unhealthy-after = 1")
    client = start_client(deployment, path)
    one.stop()
    assert visit(deployment.public_port, material.ca).backend is None
    server.wait_for(f"tunnel-member-health .*unhealthy={A}")
    # A second Tunnel connection (connections-per-server, by a reload) learns it at once.
    client_config(deployment, "client-a", one, "unhealthy-after = 1\nconnections-per-server = 2")
    reload_by_signal(client, "client-reloaded")
    server.wait_count("tunnel-connection-established", 2)
    server.wait_count(f"tunnel-member-health .*unhealthy={A}", 2)
    # A reload that adds a Service sends a later hello, which resets the member's health on
    # the Server; the service-health right behind it restores it.
    text = path.read_text() + (f'\n[[client.services]]\npublic-hostnames = ["b.example.com"]\n'
                               f'backend-address = "{two.address}"\n')
    path.write_text(text)
    mark = len(server.lines)
    reload_by_signal(client, "client-reloaded")
    server.wait_count("tunnel-member-updated", 2)
    server.wait_count(f"tunnel-member-health .*unhealthy={A}", 4)
    assert server.count(f"tunnel-member-health .*unhealthy={A}") == 4, server.log()
    assert all("unhealthy=" in line for line in server.lines[mark:]
               if "tunnel-member-health" in line)
    assert visit(deployment.public_port, material.ca).backend is None  # A: still no one healthy
