"""Service-manager integration: sd_notify readiness, reload and stop, as systemd (Type=notify) sees it."""

import signal
import socket

import pytest

from ..conftest import Proc

pytestmark = pytest.mark.e2e


def test_sd_notify_ready_reloading_stopping(deployment, tmp_path):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", ["app.example.com"], [identity])])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(20)
    try:
        server = Proc(["server", "-c", path], env=dict(deployment.env, NOTIFY_SOCKET=str(notify_path)))
        deployment.processes.append(server)
        assert notify.recv(256) == b"READY=1"
        server.wait_for("server-ready")
        server.signal(signal.SIGHUP)
        assert notify.recv(256) == b"RELOADING=1"
        assert notify.recv(256) == b"READY=1"
        server.signal(signal.SIGTERM)
        assert notify.recv(256) == b"STOPPING=1"
        assert server.popen.wait(timeout=15) == 0
    finally:
        notify.close()


def test_second_signal_forces_shutdown(deployment):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", ["app.example.com"], [identity])])
    path.write_text(path.read_text().replace("graceful-shutdown-duration = 3",
                                             "graceful-shutdown-duration = 60"))
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready")
    # A Visitor mid-intake keeps the drain busy; the second signal must not wait for it.
    with socket.create_connection(("127.0.0.1", int(server.wait_for(
            r"public-bind-address=127\.0\.0\.1:(\d+)").group(1)))) as visitor:
        visitor.sendall(b"\x16\x03\x01")
        server.signal(signal.SIGTERM)
        server.wait_for("shutdown-started")
        server.signal(signal.SIGINT)
        server.wait_for("shutdown-forced")
        assert server.popen.wait(timeout=10) == 0
