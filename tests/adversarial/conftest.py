"""The adversarial suite's harness: a real Server, a real Client and real backends on
loopback, built with tests/conftest.py's Deployment, plus what the attacks measure.

Proc splits stderr on b"\\n" only, so `assert_clean` can check that no log line
carries a raw control character.
"""

import os
import re
import selectors
import socket
import threading
import time
import tomllib

import pytest

from ..conftest import Proc
from ..e2e.helpers import curl, rss_kib
from ..e2e.peers import APP, FakeClientEnd, tunnel_tls

ROGUE = "rogue.example.com"
# C0 (the line's own \n is stripped), DEL, C1 and the Unicode line/paragraph separators.
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def assert_clean(*procs):
    """Each process runs, never printed a traceback, and no log line holds a raw control."""
    for proc in procs:
        assert proc.popen.poll() is None, f"process exited:\n{proc.log()}"
        log = proc.log()
        assert "Traceback" not in log, log
        raw = [line for line in proc.lines if RAW_CONTROL.search(line)]
        assert not raw, f"raw control characters in log lines: {raw[:5]!r}"


def fd_count(proc):
    return len(os.listdir(f"/proc/{proc.popen.pid}/fd"))


def rss_mib(proc):
    return rss_kib(proc.popen.pid) / 1024


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def peer_closed(sock):
    """True once the peer's FIN or RST arrived, without reading (TCP_INFO's tcpi_state)."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return True
    return state != 1  # TCP_ESTABLISHED


def start_server(deployment, tunnels, limits="", extra="", grace=None):
    """The Server with `limits` lines in a [server.limits] table after `extra` [server] keys."""
    if limits:
        extra = f"{extra}\n[server.limits]\n{limits}"
    path = deployment.server_config(tunnels, extra)
    if grace is not None:
        path.write_text(path.read_text().replace("graceful-shutdown-duration = 3",
                                                 f"graceful-shutdown-duration = {grace}"))
    tomllib.loads(path.read_text())  # tables after keys: still valid TOML
    proc = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(proc)
    match = proc.wait_for(r"server-ready .*public-bind-address=127\.0\.0\.1:(\d+)")
    deployment.public_port = int(match.group(1))
    return proc


def start_client(deployment, name, services, limits="", extra="", wait=True):
    """The real Client, with `extra` [client] keys and a [client.limits] table."""
    path = deployment.client_config(name, services)
    text = path.read_text()
    if extra:
        text = text.replace("[client]\n", f"[client]\n{extra}\n", 1)
    if limits:
        text += f"\n[client.limits]\n{limits}\n"
    path.write_text(text)
    tomllib.loads(text)
    proc = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(proc)
    if wait:
        proc.wait_for("tunnel-connection-established")
    return proc


class Edge:
    """A Server with Tunnel "apps" (the real Client, `APP` -> tests/backend.py) and Tunnel
    "rogue" (hostname ROGUE, served only by fake Clients with identity `rogue`)."""

    def __init__(self, deployment, backend, server, client, rogue_identity):
        self.deployment = deployment
        self.rogue_identity = rogue_identity
        self.backend = backend
        self.server = server
        self.client = client
        self.rogue_dir = deployment.dir / "rogue"

    @property
    def port(self):
        return self.deployment.public_port

    def visit(self, timeout=10):
        """curl through the real Client: the seconds it took (curl's own time_total)."""
        proc = curl(self.port, APP, self.backend.ca, extra=("-w", "\n%{time_total}"),
                    timeout=timeout)
        body, _, seconds = proc.stdout.rpartition(b"\n")
        assert proc.returncode == 0 and body == b"backend=app\n", (proc.returncode, proc.stderr)
        return float(seconds)

    def assert_healthy(self, within=None):
        seconds = self.visit()
        if within is not None:
            assert seconds < within, f"a normal Visitor took {seconds:.3f}s"
        assert_clean(self.server, self.client)
        return seconds

    def rogue_tls(self, source=None):
        return tunnel_tls(self.port, self.deployment.ca_file, self.rogue_dir, source=source)

    def rogue_join(self):
        end = FakeClientEnd(self.rogue_tls())
        end.join(hostnames=[ROGUE])
        return end


@pytest.fixture
def edge(deployment, backend):
    """`edge(limits=..., client_limits=..., services=[(hostname, address)], ...)` -> Edge."""

    def start(limits="", client_limits="", services=(), server_extra="", client_extra="",
              grace=None):
        real = deployment.identity("client-a")
        rogue = deployment.identity("rogue")
        hostnames = [APP] + [hostname for hostname, _ in services]
        server = start_server(deployment, [("apps", hostnames, [real]), ("rogue", [ROGUE], [rogue])],
                              limits=limits, extra=server_extra, grace=grace)
        client = start_client(deployment, "client-a",
                              [([APP], backend.address)] + [([h], a) for h, a in services],
                              limits=client_limits, extra=client_extra)
        started = Edge(deployment, backend, server, client, rogue)
        started.visit()
        return started

    return start


class SilentBackend:
    """A Local backend that accepts, reads and discards, and never sends a byte."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.closed = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        selector = selectors.DefaultSelector()
        self.listener.setblocking(False)
        selector.register(self.listener, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in selector.select(0.1):
                if key.fileobj is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ)
                    self.accepted += 1
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    self.closed += 1
        for key in list(selector.get_map().values()):
            key.fileobj.close()

    def stop(self):
        self._stop = True
        self._thread.join(5)


class BulkBackend:
    """A Local backend that, once the (fake) ClientHello arrives, sends bytes without end."""

    BLOCK = bytes(range(256)) * 1024

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._pour, args=(conn,), daemon=True).start()

    def _pour(self, conn):
        try:
            conn.recv(65536)
            while True:
                conn.sendall(self.BLOCK)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
