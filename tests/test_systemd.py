"""The sd_notify messages (runewarp/systemd.py), read from a real AF_UNIX datagram socket."""

import os
import socket
import time

import gevent
import pytest

from runewarp import systemd


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def fields(sock):
    return sock.recv(4096).decode().split("\n")


def test_ready_and_stopping_carry_a_status(notify_socket):
    systemd.ready("serving")
    assert fields(notify_socket) == ["READY=1", "STATUS=serving"]
    systemd.stopping("draining for at most 30s")
    assert fields(notify_socket) == ["STOPPING=1", "STATUS=draining for at most 30s"]


def test_reloading_carries_the_monotonic_clock_in_microseconds(notify_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    systemd.reloading("reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic, status = fields(notify_socket)
    assert reloading == "RELOADING=1" and status == "STATUS=reloading"
    name, _, value = monotonic.partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(value) <= after


def test_no_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    systemd.ready("serving")  # nothing to send to, nothing raised


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 2.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_pings_every_half_interval(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)
    pinger = systemd.start_watchdog()
    try:
        gevent.sleep(0.35)
    finally:
        pinger.kill()
    pings = []
    while True:
        try:
            pings.append(notify_socket.recv(64))
        except BlockingIOError:
            break
    assert pings and set(pings) == {b"WATCHDOG=1"} and 3 <= len(pings) <= 5


def test_no_watchdog_without_watchdog_usec(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.start_watchdog() is None
