"""`[server.timeouts]` / `[client.timeouts]` with real processes, and TCP keepalive on every socket.

Each timer is set far below its default, so the test tells the configured value from
the default with bounds of several seconds (docs/testing.md: no tight timing).
"""

import signal
import socket
import subprocess
import time

import pytest

from runewarp import harness
from tests import clienthellos

from ..conftest import Proc, free_port
from .helpers import ECHO, closed_by_peer, echo_visitor, round_trip

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def silent_visitor(port):
    """A raw TCP connection that never sends a byte (slowloris at intake)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_client_hello_closes_a_silent_visitor_and_a_reload_applies_to_new_ones(deployment):
    """Default 5 s; set to 60, then reloaded to 1: the old Visitor keeps its 60."""
    identity = deployment.identity("client-a")
    tunnels = [("apps", [ECHO], [identity])]
    server = deployment.start_server(tunnels, extra="[server.timeouts]\nclient-hello = 60")
    early = silent_visitor(deployment.public_port)
    try:
        with pytest.raises(AssertionError, match="still open"):
            closed_by_peer(early, 6)  # past the 5 s default: the configured 60 s applies
        deployment.server_config(tunnels, extra="[server.timeouts]\nclient-hello = 1")
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_for("server-reloaded", start=mark)
        with silent_visitor(deployment.public_port) as late:
            assert closed_by_peer(late, 4) < 4  # 1 s, not the 5 s default
        server.wait_for("visitor-rejected .*reason=intake-deadline", start=mark)
        with pytest.raises(AssertionError, match="still open"):
            closed_by_peer(early, 0.5)  # started under 60 s: a reload does not cut it short
    finally:
        early.close()


class BlackHole:
    """A loopback listener that never accepts, its one-slot backlog full: a connect to it
    hangs (Linux drops the SYN) until the dialer gives up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.fill = []
        while True:
            probe = socket.socket()
            probe.settimeout(0.5)
            try:
                probe.connect(self.sock.getsockname())
            except TimeoutError:
                probe.close()
                return
            self.fill.append(probe)

    def close(self):
        for sock in (*self.fill, self.sock):
            sock.close()


def test_backend_connect_ends_the_stream_to_a_black_hole_backend(deployment):
    hole = BlackHole()
    try:
        identity = deployment.identity("client-a")
        deployment.start_server([("apps", [ECHO], [identity])])
        path = deployment.client_config("client-a", [([ECHO], hole.address)])
        with open(path, "a") as f:
            f.write("\n[client.timeouts]\nbackend-connect = 1\n")
        client = _start_client(deployment, path)
        with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as visitor:
            visitor.sendall(clienthellos.build(ECHO))
            assert closed_by_peer(visitor, 4) < 4  # 1 s, not the 5 s default
        client.wait_for(f"backend-connect-failed .*backend-address={hole.address} "
                        ".*reason=\"?deadline exceeded", timeout=5)
    finally:
        hole.close()


def _start_client(deployment, path):
    """The Client for a config written by deployment.client_config and then extended."""
    proc = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(proc)
    proc.wait_for(harness.CLIENT_READY)
    return proc


def test_dead_peer_notices_a_server_that_stopped_answering(deployment, echo_backend):
    """SIGSTOP leaves the Server's kernel ACKing TCP: only the mux keepalive can tell."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [ECHO], [identity])])
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    with open(path, "a") as f:
        f.write("\n[client.timeouts]\nkeepalive-interval = 0.5\ndead-peer = 2\n")
    client = _start_client(deployment, path)
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"ping", timeout=5) < 5
    mark = len(client.lines)
    stopped = time.monotonic()
    server.signal(signal.SIGSTOP)
    try:
        client.wait_for(r"tunnel-connection-lost .*reason=\"?no frame received for 2 s", timeout=12,
                        start=mark)
        assert time.monotonic() - stopped < 12  # 2 s, not the 60 s default
    finally:
        server.signal(signal.SIGCONT)
    client.wait_for("tunnel-connection-established", start=mark, timeout=30)
    assert client.stop() == 0
    assert server.stop() == 0


def _keepalive_sockets(ports):
    """{(local port, peer port): ss timer text} of established loopback sockets touching `ports`."""
    where = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"( {where} )"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        local, peer = (int(f.rsplit(":", 1)[1]) for f in fields[2:4])
        found[local, peer] = " ".join(fields[4:])
    return found


@pytest.mark.parametrize("dedicated_tunnel_listener", [False, True])
def test_tcp_keepalive_on_visitor_tunnel_and_backend_sockets(deployment, echo_backend,
                                                             dedicated_tunnel_listener):
    """ss shows a keepalive timer of at most 60 s (the kernel's default is 2 h) on the
    Server's Visitor and Tunnel sockets and the Client's Tunnel and backend sockets;
    the test's own sockets, which set nothing, show none."""
    identity = deployment.identity("client-a")
    tunnel_port = free_port() if dedicated_tunnel_listener else None
    extra = f'tunnel-bind-address = "127.0.0.1:{tunnel_port}"' if tunnel_port else ""
    deployment.start_server([("apps", [ECHO], [identity])], extra=extra)
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)], port=tunnel_port)
    _start_client(deployment, path)
    server_port = tunnel_port or deployment.public_port
    backend_port = int(echo_backend.address.rsplit(":", 1)[1])
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"keepalive?", timeout=5) < 5
        visitor_port = visitor.getsockname()[1]
        deadline = time.monotonic() + 10
        while True:
            found = _keepalive_sockets({deployment.public_port, server_port, backend_port})
            tunnel = [pair for pair in found if pair[0] == server_port and pair[1] != visitor_port]
            dialed = [pair for pair in found if pair[1] == server_port and pair[0] != visitor_port]
            to_backend = [pair for pair in found if pair[1] == backend_port]
            ours = {
                "Server's Visitor socket": [(deployment.public_port, visitor_port)],
                "Server's Tunnel socket": tunnel,
                "Client's Tunnel socket": dialed,
                "Client's backend socket": to_backend,
            }
            missing = {name: [found.get(pair) for pair in pairs] for name, pairs in ours.items()
                       if len(pairs) != 1 or not _short_keepalive(found.get(pairs[0], ""))}
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not missing, (missing, found)
        for pair in ((visitor_port, deployment.public_port),
                     (backend_port, to_backend[0][0])):  # the test's Visitor and echo backend
            assert "keepalive" not in found[pair], found


def _short_keepalive(timer):
    """ss's `timer:(keepalive,59sec,0)`: armed, and within our 60 s idle."""
    return timer.startswith("timer:(keepalive,") and "sec," in timer and "min" not in timer
