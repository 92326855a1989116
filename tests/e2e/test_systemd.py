"""A Server under systemd: the notify protocol (Type=notify-reload, WatchdogSec=), the
datagrams it sends on a real NOTIFY_SOCKET from start to stop; and socket activation, a
listening socket passed by systemd-socket-activate as a socket unit passes it."""

import shutil
import signal
import socket
import time

import pytest

from runewarp import harness

from ..conftest import ROOT, Proc, free_port, runewarp_cmd
from .helpers import ECHO, NotifySocket, echo_visitor, round_trip

pytestmark = pytest.mark.e2e
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
needs_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate (the systemd package) is not installed")


def test_notify_reload_contract_and_watchdog(deployment, tmp_path):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", ["app.example.com"], [identity])])
    with NotifySocket(tmp_path) as notify:
        env = dict(deployment.env, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
        server = Proc(["server", "-c", path], env=env)
        deployment.processes.append(server)
        assert notify.next_message() == {"READY": "1", "STATUS": "serving"}
        server.wait_for("server-ready")
        pings = [notify.recv() for _ in range(3)]  # every 0.2 s while serving
        assert set(pings) == {b"WATCHDOG=1"}
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.signal(signal.SIGHUP)
        reloading = notify.next_message()
        assert reloading["RELOADING"] == "1" and reloading["STATUS"] == "reloading"
        assert int(reloading["MONOTONIC_USEC"]) >= sent  # the same clock systemd reads
        assert notify.next_message() == {"READY": "1", "STATUS": "serving"}
        server.signal(signal.SIGTERM)
        assert notify.next_message()["STOPPING"] == "1"
        assert server.popen.wait(timeout=15) == 0


def socket_activated_server(deployment, path, port):
    """`runewarp server -c path` under systemd-socket-activate listening on 127.0.0.1:port.

    Without --accept it passes the listening socket as fd 3 (LISTEN_FDS=1) and runs the
    Server in its own process (exec) on the first connection, which waits in the backlog
    meanwhile; it passes only the environment named with -E."""
    passed = [arg for name in deployment.env for arg in ("-E", name)]
    cmd = [ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=public", *passed, *runewarp_cmd(
        "server", "-c", path)]
    activator = harness.Process(cmd, env=deployment.env, cwd=ROOT, name="socket-activated server")
    deployment.processes.append(activator)
    activator.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3")
    return activator


@needs_activate
def test_socket_activated_server_serves_the_inherited_socket_across_a_reload(deployment,
                                                                            echo_backend):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("echo", [ECHO], [identity])])
    port = deployment.public_port = free_port()
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    server = socket_activated_server(deployment, path, port)
    # The Client's first Tunnel connection starts the Server and is served by it.
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    server.wait_for(rf"server-ready .*public-bind-address=127\.0\.0\.1:{port} "
                    r"tunnel-bind-address=shared inherited=public ")
    with echo_visitor(port) as visitor:
        assert round_trip(visitor, b"through the inherited socket", timeout=5) < 5
    server.signal(signal.SIGHUP)  # bind addresses are restart-only: the socket is kept
    server.wait_for("server-reloaded")
    with echo_visitor(port) as visitor:
        assert round_trip(visitor, b"after the reload", timeout=5) < 5
    assert server.stop() == 0


@needs_activate
def test_an_inherited_socket_no_bind_address_claims_stops_the_server(deployment):
    path = deployment.server_config([("echo", [ECHO], [deployment.identity("client-a")])])
    port, configured = free_port(), free_port()
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{configured}"'))
    server = socket_activated_server(deployment, path, port)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        assert server.popen.wait(timeout=20) == 1
    server.stop()  # collects the last lines
    errors = [line for line in server.log().splitlines() if "error" in line.lower()]
    assert errors == [
        f"error: {path}: inherited socket fd 3 (public) on 127.0.0.1:{port} matches no bind "
        f"address (server.public-bind-address = 127.0.0.1:{configured}, "
        "server.tunnel-bind-address = unset): make the socket unit listen on the configured "
        "address"], server.log()
    assert "Traceback" not in server.log()
