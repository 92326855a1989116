"""Many Server nodes, seen from the Client: a Tunnel connection to every address a
`server-address` resolves to, `connections-per-server` of them, re-resolution adding and
draining workers, and the replacement dialed at once after a go away.

Two real Server processes listen on 127.0.0.2:P and 127.0.0.3:P (one port, two loopback
addresses: one name in DNS round-robin).  RUNEWARP_RESOLVE pins the Server hostname to
both; RUNEWARP_RESOLVE_FILE, read again at each resolution, changes what it resolves to
while the Client runs (docs/configuration.md, "Many Server nodes").
"""

import json
import re

import signal
import time

import pytest

from runewarp.proto import proxyv2
from tests import clienthellos

from ..conftest import SERVER_HOSTNAME, Proc, free_port, run_cli
from .helpers import ECHO, echo_visitor, reload_by_signal, round_trip
from .peers import FakeServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

NODES = ("127.0.0.2", "127.0.0.3")
ENVELOPE = proxyv2.encode(("203.0.113.7", 50123), ("192.0.2.1", 443))


def start_node(deployment, identity, ip, port, hostnames=(ECHO,)):
    """A Server on ip:port with a metrics listener; (process, its config path)."""
    text = deployment.server_config([("apps", list(hostnames), [identity])]).read_text()
    text = text.replace('"127.0.0.1:0"', f'"{ip}:{port}"')
    text += f'\n[server.metrics]\nbind-address = "127.0.0.1:{free_port()}"\n'
    path = deployment.dir / f"server-{ip}.toml"
    path.write_text(text)
    proc = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(proc)
    proc.wait_for("server-ready")
    return proc, path


def client_config(deployment, backend, port, settings="", hostnames=(ECHO,)):
    path = deployment.client_config("client-a", [(list(hostnames), backend.address)], port=port)
    text = path.read_text().replace("[client]\n", f"[client]\n{settings}\n", 1)
    path.write_text(text + f'\n[client.metrics]\nbind-address = "127.0.0.1:{free_port()}"\n')
    return path


def start_client(deployment, path, **env):
    client = Proc(["client", "-c", path], env={**deployment.env, **env})
    deployment.processes.append(client)
    return client


def start_client_resolving(deployment, path, names):
    """The Client, with its Server hostname resolved through the file `names`."""
    env = {**deployment.env, "RUNEWARP_RESOLVE_FILE": str(names)}
    env.pop("RUNEWARP_RESOLVE")
    client = Proc(["client", "-c", path], env=env)
    deployment.processes.append(client)
    return client


def connected(fake):
    """The fake Server's end of the Client's first Tunnel connection, past its welcome."""
    end = fake.accept()
    end.say_welcome()
    fake.client.wait_for("tunnel-connection-established")
    return end


def status(role, path):
    return json.loads(run_cli(role, "status", "-c", path, "--json").stdout)


def established(path):
    """The Client's established workers: {(resolved address, connection index)}."""
    return {(s["resolved_address"], s["connection"]) for s in status("client", path)["servers"]
            if s["state"] == "established"}


def members(path):
    (tunnel,) = status("server", path)["tunnels"]
    return len(tunnel["members"])


def eventually(check, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_every_address_of_a_server_address_gets_a_tunnel_connection(deployment, echo_backend):
    identity = deployment.identity("client-a")
    port = free_port()
    nodes = [start_node(deployment, identity, ip, port)[0] for ip in NODES]
    path = client_config(deployment, echo_backend, port)
    client = start_client(deployment, path, RUNEWARP_RESOLVE=f"{SERVER_HOSTNAME}=" + "|".join(NODES))
    client.wait_count("tunnel-connection-established", 2)
    assert established(path) == {(f"{ip}:{port}", 0) for ip in NODES}
    for ip, node in zip(NODES, nodes, strict=True):
        node.wait_for("tunnel-connection-established .*tunnel=apps")
        client.wait_for(f"tunnel-connection-established server-address={SERVER_HOSTNAME}:{port} "
                        f"resolved-address={ip}:{port} connection=0 ")
        visitor = echo_visitor(port, host=ip)  # each node routes to this Client
        round_trip(visitor, b"through " + ip.encode(), timeout=10)
        visitor.close()
        node.wait_for("visitor-routed")
    assert status("client", path)["ready"] is True


def test_connections_per_server_fills_the_pool_and_a_reload_changes_it(deployment, echo_backend):
    identity = deployment.identity("client-a")
    port = free_port()
    _node, server_path = start_node(deployment, identity, "127.0.0.1", port)
    path = client_config(deployment, echo_backend, port, "connections-per-server = 3")
    client = start_client(deployment, path)
    client.wait_count("tunnel-connection-established", 3)
    assert eventually(lambda: members(server_path) == 3)
    assert established(path) == {(f"127.0.0.1:{port}", i) for i in range(3)}

    # A stream held on connection 0 or another: lowering the count drains the extra ones.
    visitor = echo_visitor(port)
    path.write_text(path.read_text().replace("connections-per-server = 3", "connections-per-server = 1"))
    mark = reload_by_signal(client, "client-reloaded")
    client.wait_for("tunnel-connection-retired .*connection=2 reason=\"connections-per-server lowered or fewer Server workers\"",
                    start=mark)
    client.wait_for("tunnel-connection-retired .*connection=1 ", start=mark)
    round_trip(visitor, b"still here", timeout=10)  # a drained connection finishes its streams
    visitor.close()
    assert eventually(lambda: members(server_path) == 1)
    assert established(path) == {(f"127.0.0.1:{port}", 0)}

    path.write_text(path.read_text().replace("connections-per-server = 1", "connections-per-server = 2"))
    reload_by_signal(client, "client-reloaded")
    assert eventually(lambda: members(server_path) == 2)


def test_a_resolution_change_adds_and_drains_tunnel_connections(deployment, echo_backend):
    identity = deployment.identity("client-a")
    port = free_port()
    nodes = dict(zip(NODES, (start_node(deployment, identity, ip, port)[0] for ip in NODES), strict=True))
    names = deployment.dir / "resolve"
    names.write_text(f"{SERVER_HOSTNAME}={NODES[0]}\n")
    path = client_config(deployment, echo_backend, port, "resolve-interval = 600")
    client = start_client_resolving(deployment, path, names)
    client.wait_for(f"tunnel-connection-established .*resolved-address={NODES[0]}:{port}")

    # resolve-interval is read at each wait: 600 s becomes 0.5 s on reload.
    path.write_text(path.read_text().replace("resolve-interval = 600", "resolve-interval = 0.5"))
    reload_by_signal(client, "client-reloaded")
    time.sleep(1)  # the reload's own resolution has passed: only the timer sees what follows
    names.write_text(f"{SERVER_HOSTNAME}={NODES[0]}|{NODES[1]}\n")
    client.wait_for(f"tunnel-connection-established .*resolved-address={NODES[1]}:{port}", timeout=10)
    nodes[NODES[1]].wait_for("tunnel-connection-established")

    # The first address vanishes: its connection is drained and closed, the other stays.
    names.write_text(f"{SERVER_HOSTNAME}={NODES[1]}\n")
    client.wait_for(f"tunnel-connection-retired .*resolved-address={NODES[0]}:{port} .*"
                    "reason=\"address no longer resolved\"", timeout=10)
    nodes[NODES[0]].wait_for("tunnel-connection-closed")
    assert eventually(lambda: established(path) == {(f"{NODES[1]}:{port}", 0)})

    # The name stops resolving: one warning for the outage, the connection kept.
    mark = len(client.lines)
    names.write_text(f"{SERVER_HOSTNAME}=\n")
    client.wait_for("WARN +server-address-unresolved .*keeping=1", start=mark)
    time.sleep(2)  # four more resolutions fail, silently
    assert client.count("server-address-unresolved") == 1
    assert established(path) == {(f"{NODES[1]}:{port}", 0)}
    names.write_text(f"{SERVER_HOSTNAME}={NODES[1]}\n")
    client.wait_for(f"server-address-resolved .*addresses={NODES[1]}", start=mark)
    assert "tunnel-connection-lost" not in client.log()


def test_a_go_away_is_replaced_at_once_then_backoff_applies(deployment, echo_backend):
    """The first backoff window is 1000 s: only an immediate redial reconnects in time."""
    deployment.env["RUNEWARP_RECONNECT_WINDOWS"] = "1000"
    fake = FakeServer(deployment, echo_backend, hostname=ECHO)
    try:
        client = fake.client
        old = connected(fake)
        old.session.go_away(0)  # normal: the Server is stopping or handing over
        old.flush()
        went = time.monotonic()
        new = fake.accept(timeout=10)
        assert time.monotonic() - went < 3.0
        new.say_welcome()
        client.wait_count("tunnel-connection-established", 2)
        client.wait_for("tunnel-connection-draining")  # the old one finishes its streams
        assert "next-retry-delay=0s" in client.wait_for("tunnel-reconnect-scheduled").string
        assert not old.closed

        # A go away whose replacement fails: from then on the backoff sequence applies.
        fake.listener.close()
        mark = len(client.lines)
        new.session.go_away(0)
        new.flush()
        failed = client.wait_for("tunnel-connection-failed .*attempt=1", start=mark)
        after = client.lines.index(failed.string)
        delay = client.wait_for(r"tunnel-reconnect-scheduled .*next-retry-delay=(\S+)s", start=after)
        assert 0 < float(delay.group(1)) <= 1000, delay.string
    finally:
        fake.close()


def test_a_stopping_client_serves_a_stream_opened_before_the_server_saw_its_go_away(
        deployment, echo_backend):
    fake = FakeServer(deployment, echo_backend, hostname=ECHO)
    try:
        client = fake.client
        end = connected(fake)
        client.signal(signal.SIGTERM)
        client.wait_for("shutdown-started")
        # This Server has not read the go away yet: it places a Visitor on the connection.
        hello = clienthellos.build(ECHO)
        stream = end.open_stream(ENVELOPE + hello)
        end.pump_until(lambda: len(end.received[stream]) >= len(hello) or stream in end.reset)
        assert stream not in end.reset
        assert bytes(end.received[stream]) == hello  # the echo backend answered through the Client
        assert end.go_away_received()
    finally:
        fake.close()


def test_the_client_names_the_hostnames_its_services_and_the_tunnel_disagree_on(
        deployment, echo_backend):
    identity = deployment.identity("client-a")
    port = free_port()
    start_node(deployment, identity, "127.0.0.1", port, hostnames=(ECHO, "extra.example.com"))
    path = client_config(deployment, echo_backend, port, "connections-per-server = 2",
                         hostnames=(ECHO, "other.example.com"))
    client = start_client(deployment, path)
    client.wait_count("tunnel-connection-established", 2)
    client.wait_count("hostname-mirroring-drift", 2)  # one per connect
    drift = [line for line in client.lines if "hostname-mirroring-drift" in line]
    for line in drift:
        assert " WARN " in line and "tunnel=apps" in line, line
        assert "unserved-hostnames=extra.example.com unowned-hostnames=other.example.com" in line
    assert {re.search(r" connection=(\d)", line).group(1) for line in drift} == {"0", "1"}


def test_a_client_started_while_its_server_address_does_not_resolve_connects_once_it_does(
        deployment, echo_backend):
    identity = deployment.identity("client-a")
    port = free_port()
    start_node(deployment, identity, NODES[0], port)
    names = deployment.dir / "resolve"
    names.write_text(f"{SERVER_HOSTNAME}=\n")
    path = client_config(deployment, echo_backend, port)  # resolve-interval: the default 60 s
    client = start_client_resolving(deployment, path, names)
    client.wait_for("WARN +server-address-unresolved .*keeping=0")
    (server,) = eventually(lambda: status("client", path)["servers"])
    assert server["state"] == "unresolved" and "pinned to no address" in server["last_error"]
    assert status("client", path)["ready"] is False
    names.write_text(f"{SERVER_HOSTNAME}={NODES[0]}\n")
    client.wait_for(f"tunnel-connection-established .*resolved-address={NODES[0]}:{port}", timeout=10)
    assert client.count("server-address-unresolved") == 1
