"""Placement by Public hostname across Client instances of one Tunnel, member-wait, go away
on a draining Server, and the replica diagnostics (drift warning, /status), with real
Server and Client processes, `curl` as the Visitor."""

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest

from runewarp.proto import control
from tests import clienthellos
from runewarp.proto.mux import TYPE_GO_AWAY

from ..conftest import free_port, run_cli
from .helpers import ECHO, Backend, curl, recv_exactly
from .peers import APP, FakeClientEnd, FakeServer, mux_frames, tunnel_tls
from .test_bad_peers import ENVELOPE, real_client_hello
from .test_metrics import value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
A = "a.example.com"
B = "b.example.com"
OUTCOMES = "runewarp_visitor_connections_total"


@pytest.fixture
def backends(tmp_path):
    """The Local backends of two replicas: one serves A only, the other A and B."""
    only_a, both = Backend(tmp_path, "only-a", [A]), Backend(tmp_path, "both", [B, A])
    yield only_a, both
    only_a.stop()
    both.stop()


def start_server(deployment, identity, limits="", metrics=None):
    extra = f"[server.timeouts]\nclient-hello = 10\n[server.limits]\n{limits}"
    if metrics:
        extra += f'\n[server.metrics]\nbind-address = "127.0.0.1:{metrics}"'
    return deployment.start_server([("apps", [A, B], [identity])], extra=extra)


def replica(deployment, name, services, copy_of="client-a"):
    """A Client instance with the identity of `copy_of` (its identity dir copied)."""
    if not (deployment.dir / name).exists():
        shutil.copytree(deployment.dir / copy_of, deployment.dir / name, symlinks=True)
    client = deployment.start_client(name, services)
    return client, client.wait_for(r"client-ready .*instance=(\w+)").group(1)


def visit(deployment, hostname, ca, timeout=20):
    """A curl Visitor run in the background: (its Popen, its start time)."""
    proc = subprocess.Popen(
        ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(ca), "--resolve",
         f"{hostname}:{deployment.public_port}:127.0.0.1", f"https://{hostname}:{deployment.public_port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, time.monotonic()


def dropped_after(deployment, hostname, ca):
    """Seconds until a curl Visitor for `hostname` failed (it must fail)."""
    started = time.monotonic()
    result = curl(deployment.public_port, hostname, ca, timeout=15)
    assert result.returncode != 0, result.stdout
    return time.monotonic() - started


def test_visitors_for_a_hostname_land_only_on_the_replica_that_serves_it(deployment, backends):
    only_a, both = backends
    identity = deployment.identity("client-a")
    status_port = free_port()
    server = start_server(deployment, identity, metrics=status_port)
    _, first = replica(deployment, "client-a", [([A], only_a.address)])
    _, second = replica(deployment, "client-b", [([A, B], both.address)])
    server.wait_count("tunnel-connection-established", 2)
    # One warning names the replica that lacks B; the other gets none.
    drift = server.wait_for(f"hostname-mirroring-drift tunnel=apps client-identity={identity[:12]} "
                            f"client-instance={first} peer=127\\.0\\.0\\.1:\\d+ unserved-hostnames={B}$")
    assert drift and server.count("hostname-mirroring-drift") == 1
    for _ in range(30):
        result = curl(deployment.public_port, B, both.ca)
        assert result.stdout == b"backend=both\n", result.stderr
    assert value(status_port, OUTCOMES, outcome="routed") == 30
    # /status shows both instances of the one identity side by side, with their hostnames.
    document = json.loads(run_cli("server", "status", "-c", deployment.dir / "server.toml",
                                  "--json").stdout)
    (tunnel,) = document["tunnels"]
    members = {m["instance"]: m for m in tunnel["members"]}
    assert {m["client_identity"] for m in members.values()} == {identity}
    assert (members[first]["hostnames"], members[first]["catch_all"]) == ([A], False)
    assert (members[second]["hostnames"], members[second]["catch_all"]) == ([A, B], False)


def test_a_waiting_visitor_is_placed_on_the_serving_member_that_joins(deployment, backends):
    only_a, both = backends
    identity = deployment.identity("client-a")
    server = start_server(deployment, identity, limits="member-wait = 8")
    first, _ = replica(deployment, "client-a", [([A], only_a.address)])
    # B has no serving member yet: the Visitor waits; the replica serving it joins.
    waiting, started = visit(deployment, B, both.ca)
    time.sleep(0.5)
    second, _ = replica(deployment, "client-b", [([A, B], both.address)])
    out, err = waiting.communicate(timeout=30)
    assert out == b"backend=both\n", err
    assert time.monotonic() - started < 8
    # Every Client stopped (a restart): a Visitor waits, and the restarted Client serves it.
    assert first.stop() == 0 and second.stop() == 0
    waiting, started = visit(deployment, A, only_a.ca)
    time.sleep(0.5)
    replica(deployment, "client-a", [([A], only_a.address)])
    out, err = waiting.communicate(timeout=30)
    assert out == b"backend=only-a\n", err
    assert server.count("visitor-rejected") == 0


def test_member_wait_bounds_the_wait_and_a_reload_applies_it_to_the_next_visitor(
        deployment, backends):
    only_a, _ = backends
    identity = deployment.identity("client-a")
    metrics = free_port()
    server = start_server(deployment, identity, limits="member-wait = 0", metrics=metrics)
    assert dropped_after(deployment, A, only_a.ca) < 1.0  # 0: at once
    assert value(metrics, OUTCOMES, outcome="no-tunnel-connection") == 1
    # The reload's value applies to the next Visitor: bounded, far below client-hello (10 s).
    deployment.server_config([("apps", [A, B], [identity])],
                             extra=f"[server.timeouts]\nclient-hello = 10\n[server.limits]\n"
                                   f'member-wait = 2\n[server.metrics]\nbind-address = "127.0.0.1:{metrics}"')
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for("server-reloaded", start=mark)
    assert 1.8 <= dropped_after(deployment, A, only_a.ca) < 6
    assert value(metrics, OUTCOMES, outcome="no-tunnel-connection") == 2
    # A live member that does not serve the hostname is its own outcome.
    replica(deployment, "client-a", [([A], only_a.address)])
    assert 1.8 <= dropped_after(deployment, B, only_a.ca) < 6
    assert value(metrics, OUTCOMES, outcome="no-serving-member") == 1
    server.wait_for(f"visitor-rejected .*public-hostname={B} tunnel=apps reason=no-serving-member")


def test_a_draining_server_still_routes_a_visitor_it_accepted_before_the_term(
        deployment, echo_backend):
    """The Server sent go away to its Tunnel connections; the Visitor's ClientHello, split
    across the TERM, is still placed on one of them (the sender of go away may open)."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [ECHO], [identity])])
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    hello = clienthellos.build(ECHO)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(hello[:20])
        time.sleep(0.3)  # the Server has read the first part
        server.signal(signal.SIGTERM)
        server.wait_for("shutdown-started")
        sock.sendall(hello[20:])
        assert recv_exactly(sock, len(hello)) == hello  # routed, and echoed by the backend
        sock.sendall(b"still flowing")
        assert recv_exactly(sock, 13) == b"still flowing"
    assert server.popen.wait(timeout=15) == 0
    server.wait_for(f"visitor-routed .*public-hostname={ECHO}")


def test_an_identity_no_tunnel_lists_is_named_with_tunnels_none(deployment, backends):
    only_a, _ = backends
    listed = deployment.identity("client-a")
    stray = deployment.identity("client-x")
    server = start_server(deployment, listed)
    deployment.start_client("client-x", [([A], only_a.address)], wait=False)
    server.wait_for(f"tunnel-connection-refused .*client-identity={stray} tunnels=none "
                    "reason=unauthorized-client-identity")


class Replay:
    """A TLS socket whose next read returns bytes already taken off it."""

    def __init__(self, tls, data):
        self.tls, self.data = tls, data

    def recv(self, size):
        data, self.data = self.data, b""
        return data or self.tls.recv(size)

    def __getattr__(self, name):
        return getattr(self.tls, name)


def test_a_stopping_client_serves_a_stream_the_server_opened_before_reading_its_go_away(
        deployment, backend):
    """The exact crossing: the Client's go away is on the wire, unread by the (fake) Server,
    when the Server opens a stream; the stopping Client serves it within its drain."""
    server = FakeServer(deployment, backend)
    try:
        end = server.accept()
        end.say_welcome()
        server.client.wait_for("tunnel-connection-established")
        server.client.signal(signal.SIGTERM)
        held = bytearray()  # read off the wire, not yet fed to our Session
        end.tls.settimeout(10)
        while not any(frame.type == TYPE_GO_AWAY for frame in mux_frames(bytes(held))):
            data = end.tls.recv(65536)
            assert data, "the Client closed without a go away"
            held += data
        _visitor, _incoming, outgoing = real_client_hello(APP, backend.ca)
        stream = end.open_stream(ENVELOPE + outgoing.read())
        end.tls = Replay(end.tls, bytes(held))  # now our Session reads the go away
        end.pump_until(lambda: len(end.received[stream]) >= 6 or stream in end.reset or end.closed)
        assert end.session.go_away_received
        assert stream not in end.reset and not end.closed, server.client.log()
        answer = bytes(end.received[stream])
        assert answer[0] == 0x16 and answer[5] == 0x02, answer[:8]  # the backend's ServerHello
        server.client.wait_for(f"stream-routed .*public-hostname={APP}")
        assert server.client.popen.wait(timeout=15) == 0
    finally:
        server.close()


def test_a_later_hello_replaces_the_hostnames_a_member_serves(deployment):
    """A Client that reloaded its Services says so with a later hello on its control
    stream: a Visitor waiting for B is placed on it once that hello lists B."""
    identity = deployment.identity("client-a")
    server = start_server(deployment, identity, limits="member-wait = 8")
    end = FakeClientEnd(tunnel_tls(deployment.public_port, deployment.ca_file,
                                   deployment.dir / "client-a"))
    end.join(hostnames=[A])
    server.wait_for("tunnel-connection-established")
    hello = clienthellos.build(B)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as visitor:
        visitor.sendall(hello)
        time.sleep(0.5)  # waiting: the member serves A only
        assert not [sid for sid in end.received if sid % 2 == 0]
        end.send(1, control.encode(control.hello("0-fake", "fake", [A, B], False)))
        server.wait_for(f"tunnel-member-updated tunnel=apps .*client-instance=fake "
                        f"hostnames={A},{B}")
        end.pump_until(lambda: any(sid % 2 == 0 and bytes(data).endswith(hello)
                                   for sid, data in end.received.items()))
    assert server.count("hostname-mirroring-drift") == 1  # the first hello's, not the update's
    end.tls.close()
