"""A Server under systemd's notify protocol (Type=notify-reload, WatchdogSec=): the
datagrams it sends on a real NOTIFY_SOCKET, from start to stop."""

import signal
import socket
import time

import pytest

from ..conftest import Proc

pytestmark = pytest.mark.e2e


def test_notify_reload_contract_and_watchdog(deployment, tmp_path):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", ["app.example.com"], [identity])])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(20)

    def next_message(skip_pings=True):
        while True:
            fields = notify.recv(4096).decode().split("\n")
            if not (skip_pings and fields == ["WATCHDOG=1"]):
                return dict(field.partition("=")[::2] for field in fields)

    try:
        env = dict(deployment.env, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")
        server = Proc(["server", "-c", path], env=env)
        deployment.processes.append(server)
        assert next_message() == {"READY": "1", "STATUS": "serving"}
        server.wait_for("server-ready")
        pings = [notify.recv(4096) for _ in range(3)]  # every 0.2 s while serving
        assert set(pings) == {b"WATCHDOG=1"}
        sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.signal(signal.SIGHUP)
        reloading = next_message()
        assert reloading["RELOADING"] == "1" and reloading["STATUS"] == "reloading"
        assert int(reloading["MONOTONIC_USEC"]) >= sent  # the same clock systemd reads
        assert next_message() == {"READY": "1", "STATUS": "serving"}
        server.signal(signal.SIGTERM)
        assert next_message()["STOPPING"] == "1"
        assert server.popen.wait(timeout=15) == 0
    finally:
        notify.close()
