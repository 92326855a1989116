"""What a reload changes, with real processes: `watch-config` (a valid edit applied, an
invalid one refused with one line, a burst of writes as one reload, a certificate
replaced on disk served), and each key a reload applies (limits, bind addresses), with
the Client's handler pool following its stream limit."""

import re
import signal
import socket
import time
import urllib.request

import pytest
from cryptography import x509

from ..conftest import Proc, free_port, run_cli
from .helpers import ECHO, echo_visitor, get, reload_by_signal, round_trip, tls_visit, tunnel_handshake
from .test_lifecycle import STALL, stalled_tls_visitor

pytestmark = pytest.mark.e2e
NEW = "new.example.com"
APP = "app.example.com"
WATCH = "watch-config = true"


def refused(port):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    return True


def closed_at_once(sock, timeout=5):
    """True when the peer closes `sock` within `timeout` s without sending anything."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def watched_pair(deployment, echo_backend, server_extra=WATCH):
    """A Server (watching its config when `server_extra` says so) routing ECHO to a Client
    whose Services also hold NEW, which the Server does not route yet."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [ECHO], [identity])], extra=server_extra)
    deployment.start_client("client-a", [([ECHO, NEW], echo_backend.address)])
    server.wait_for("tunnel-connection-established")
    return server, identity


# -- watch-config --

def test_a_valid_edit_of_a_watched_config_is_applied(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend)
    with pytest.raises((AssertionError, OSError)):  # not routed yet
        echo_visitor(deployment.public_port, hostname=NEW).close()
    path = deployment.server_config([("apps", [ECHO, NEW], [identity])], extra=WATCH)
    server.wait_for(rf"reload-started trigger=file-change file={re.escape(str(path))}$")
    server.wait_for("server-reloaded tunnels=1")
    with echo_visitor(deployment.public_port, hostname=NEW) as visitor:
        assert round_trip(visitor, b"through the edited Tunnel", timeout=5) < 5


def test_without_watch_config_an_edit_waits_for_a_signal(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    deployment.server_config([("apps", [ECHO, NEW], [identity])])
    time.sleep(2.5)  # the watch's poll and debounce, had there been one
    assert not server.count("reload-started")
    reload_by_signal(server, "reload-started trigger=signal signal=SIGHUP")
    server.wait_for("server-reloaded")


def reloads_failed(metrics_port):
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    return float(re.search(r'^runewarp_config_reloads_total\{result="failure"\} (\S+)$', body,
                           re.M).group(1))


def test_an_invalid_edit_is_refused_in_one_line_and_the_old_config_keeps_routing(
        deployment, echo_backend):
    metrics_port = free_port()
    server, _ = watched_pair(deployment, echo_backend, server_extra=f"{WATCH}\n[server.metrics]\n"
                             f'bind-address = "127.0.0.1:{metrics_port}"')
    assert reloads_failed(metrics_port) == 0
    path = deployment.dir / "server.toml"
    path.write_text(path.read_text().replace("client-identities = [", 'client-identities = ["abc", '))
    failed = server.wait_for(r"ERROR reload-failed .*")
    assert re.search(rf'reason="{re.escape(str(path))}: server\.tunnels\[0\]\.client-identities\[0\]: '
                     r"'abc' is not a Client identity", failed.group(0)), failed.group(0)
    assert 'kept="previous configuration"' in failed.group(0)
    time.sleep(1.5)
    assert server.count("reload-failed") == 1 and not server.count("server-reloaded")
    assert reloads_failed(metrics_port) == 1
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"still routed", timeout=5) < 5


def test_a_burst_of_writes_is_one_reload(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend)
    for hostnames in ([ECHO, "a.example.com"], [ECHO, "b.example.com"], [ECHO, NEW]):
        deployment.server_config([("apps", hostnames, [identity])], extra=WATCH)
        time.sleep(0.2)
    server.wait_for("server-reloaded")
    time.sleep(2.5)  # room for a second reload, if the burst had made two
    assert server.count("reload-started") == 1, server.log()
    with echo_visitor(deployment.public_port, hostname=NEW) as visitor:  # the last write won
        assert round_trip(visitor, b"last", timeout=5) < 5


def test_a_public_certificate_replaced_on_disk_is_served_to_the_next_visitor(
        deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    public = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", public, "--hostname", APP)
    path = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                    public_cert_dir="public-cert")
    path.write_text(path.read_text().replace("[client]\n", f"[client]\n{WATCH}\n"))
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")

    def served_serial():
        der, _ = tls_visit(deployment.public_port, APP, public / "public-ca.crt", get("/", APP))
        return x509.load_der_x509_certificate(der).serial_number

    before = served_serial()
    run_cli("client", "public-cert", "renew", "--dir", public, "--hostname", APP)
    on_disk = x509.load_pem_x509_certificate((public / APP / "public.crt").read_bytes())
    assert on_disk.serial_number != before
    folder = re.escape(str(public / APP))
    client.wait_for(rf"reload-started trigger=file-change file={folder}/public\.crt,{folder}/public\.key$")
    client.wait_for("client-reloaded")
    assert served_serial() == on_disk.serial_number


def test_a_server_certificate_renewed_on_disk_triggers_a_reload(deployment, echo_backend):
    server, _ = watched_pair(deployment, echo_backend)
    mark = len(server.lines)
    run_cli("server", "cert", "renew", "--dir", deployment.cert_dir)
    folder = re.escape(str(deployment.cert_dir))
    server.wait_for(rf"reload-started trigger=file-change file={folder}/server\.crt,{folder}/server\.key$",
                    start=mark)
    server.wait_for("server-reloaded", start=mark)
    on_disk = x509.load_pem_x509_certificate((deployment.cert_dir / "server.crt").read_bytes())
    served = tunnel_handshake(deployment.public_port, deployment.ca_file, deployment.dir / "client-a")
    assert served.serial_number == on_disk.serial_number


# -- keys a reload applies --

def test_intake_per_source_lowered_refuses_the_next_connections_over_it(deployment,
                                                                       echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    port = deployment.public_port
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.3)
        assert not server.count("scope=source-full")
        deployment.server_config([("apps", [ECHO], [identity])],
                                 extra="[server.limits]\nintake-per-source = 2")
        reload_by_signal(server, "server-reloaded")
        fresh = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        held += fresh
        assert closed_at_once(fresh[2])
        server.wait_for("server-saturated scope=source-full")
        for sock in fresh[:2]:  # within the new cap: still waiting for their ClientHello
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()


def test_watch_config_turned_on_by_a_reload_watches_from_then_on(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    deployment.server_config([("apps", [ECHO], [identity])], extra=WATCH)
    reload_by_signal(server, "server-reloaded")
    deployment.server_config([("apps", [ECHO, NEW], [identity])], extra=WATCH)
    server.wait_for("reload-started trigger=file-change")
    server.wait_count("server-reloaded", 2)
    with echo_visitor(deployment.public_port, hostname=NEW) as visitor:
        assert round_trip(visitor, b"watched", timeout=5) < 5


def test_server_active_streams_and_idle_timeout_lowered_apply(deployment, echo_backend):
    """active-streams: the next stream over the new limit is refused; stream-idle-timeout:
    even a stream spliced before the reload is ended by the new value."""
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    port = deployment.public_port
    with echo_visitor(port) as idle:
        assert round_trip(idle, b"spliced before", timeout=5) < 5
        deployment.server_config([("apps", [ECHO], [identity])], extra=(
            "[server.limits]\nactive-streams = 1\nstream-idle-timeout = 1"))
        reload_by_signal(server, "server-reloaded")
        with pytest.raises((AssertionError, OSError)):
            echo_visitor(port).close()  # the idle one holds the only stream
        server.wait_for("server-saturated scope=active-streams")
        assert closed_at_once(idle, timeout=5)  # idle for 1 s (the sweeper ticks each second)
    server.wait_for('visitor-closed .*reason="?idle-timeout')


def test_graceful_shutdown_duration_applies_to_the_next_stop(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    path = deployment.server_config([("apps", [ECHO], [identity])])
    path.write_text(path.read_text().replace("graceful-shutdown-duration = 3",
                                             "graceful-shutdown-duration = 7"))
    reload_by_signal(server, "server-reloaded")
    server.signal(signal.SIGTERM)
    server.wait_for("shutdown-started .*graceful-shutdown-duration=7s")


def test_public_bind_address_moves_to_a_listener_bound_before_the_old_one_closes(
        deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    old, new = deployment.public_port, free_port()
    path = deployment.server_config([("apps", [ECHO], [identity])])
    path.write_text(path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{new}"))
    reload_by_signal(server, "server-reloaded")
    server.wait_for(f"listener-moved listener=public address=127.0.0.1:{new} "
                    f"previous=127.0.0.1:{old}")
    assert refused(old)
    # The Tunnel connection made to the old port is still the one that serves.
    with echo_visitor(new) as visitor:
        assert round_trip(visitor, b"on the new port", timeout=5) < 5


def test_a_bind_failure_keeps_the_old_listener_and_fails_the_reload(deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        busy = taken.getsockname()[1]
        path = deployment.server_config([("apps", [ECHO, NEW], [identity])])
        path.write_text(path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{busy}"))
        reload_by_signal(server, "reload-failed")
        server.wait_for(rf'reload-failed reason="{re.escape(str(path))}: server\.public-bind-address: '
                        rf"127\.0\.0\.1:{busy}: address already in use")
        assert not server.count("server-reloaded") and not server.count("listener-moved")
        with echo_visitor(deployment.public_port) as visitor:  # the old port serves
            assert round_trip(visitor, b"old port", timeout=5) < 5
        with pytest.raises((AssertionError, OSError)):  # and the old config: NEW not routed
            echo_visitor(deployment.public_port, hostname=NEW).close()
    finally:
        taken.close()


def test_a_dedicated_tunnel_listener_added_by_a_reload_takes_the_tunnel_connections(
        deployment, echo_backend):
    server, identity = watched_pair(deployment, echo_backend, server_extra="")
    tunnel_port = free_port()
    deployment.server_config([("apps", [ECHO], [identity])],
                             extra=f'tunnel-bind-address = "127.0.0.1:{tunnel_port}"')
    reload_by_signal(server, "server-reloaded")
    server.wait_for(f"listener-moved listener=tunnel address=127.0.0.1:{tunnel_port} "
                    "previous=shared")
    identity_dir = deployment.dir / "client-a"
    leaf = tunnel_handshake(tunnel_port, deployment.ca_file, identity_dir)
    assert leaf.subject.rfc4514_string()
    with pytest.raises(OSError):  # ssl.SSLError too: the public listener no longer takes them
        tunnel_handshake(deployment.public_port, deployment.ca_file, identity_dir)
    server.wait_for("reason=tunnel-connections-use-the-tunnel-listener")
    with echo_visitor(deployment.public_port) as visitor:  # the old Tunnel connection serves
        assert round_trip(visitor, b"still routed", timeout=5) < 5


def test_client_stream_limit_and_handler_pool_follow_a_reload(deployment, echo_backend):
    """A reload to a larger active-streams gets that many handlers (the pool is not left
    at its start size, where extra streams would be refused), and the open stream on the
    same Tunnel connection never stalls; a reload to a smaller one refuses the next
    stream over it."""
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [ECHO, STALL], [identity])])
    server = deployment.processes[-1]
    certs = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", STALL)
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address),
                                                 ([STALL], echo_backend.address, "terminate")],
                                    public_cert_dir=certs)
    config = path.read_text()
    limits = "[client.limits]\nactive-streams = {}\n\n[[client.services]]"
    path.write_text(config.replace("[[client.services]]", limits.format(3), 1))
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    port = deployment.public_port

    echo = echo_visitor(port)  # one spliced stream, open throughout
    try:
        assert round_trip(echo, b"before the reload", timeout=5) < 5
        path.write_text(config.replace("[[client.services]]", limits.format(50), 1))
        mark = reload_by_signal(client, "client-reloaded")
        assert not client.count("reload-needs-restart")
        routed = server.count(f"visitor-routed .*public-hostname={STALL}")
        stalled = [stalled_tls_visitor(port, STALL) for _ in range(6)]  # twice the old limit
        try:
            deadline = time.monotonic() + 10
            while server.count(f"visitor-routed .*public-hostname={STALL}") < routed + 6:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            took = round_trip(echo, b"after the reload", timeout=3)
            assert took < 1.0, f"the open stream stalled for {took:.2f}s"
            time.sleep(0.3)
            assert not client.count("client-saturated"), client.log()
        finally:
            for sock in stalled:
                sock.close()

        path.write_text(config.replace("[[client.services]]", limits.format(1), 1))
        mark = reload_by_signal(client, "client-reloaded")
        with pytest.raises((AssertionError, OSError)):
            echo_visitor(port).close()  # the open stream holds the one slot
        client.wait_for("client-saturated scope=active-streams limit=1", start=mark)
        assert round_trip(echo, b"still there", timeout=5) < 5
    finally:
        echo.close()


@pytest.mark.parametrize("role", ["server", "client"])
def test_a_watch_config_that_is_not_a_boolean_stops_the_start(deployment, role):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [ECHO], [identity])]) if role == "server" else \
        deployment.client_config("client-a", [([ECHO], "127.0.0.1:9")], port=443)
    path.write_text(path.read_text().replace(f"[{role}]\n", f'[{role}]\nwatch-config = "yes"\n'))
    proc = run_cli(role, "-c", path, env=deployment.env, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: {role}.watch-config: expected true or false, got a string"]
