"""The sd_notify messages (runewarp/systemd.py), read from a real AF_UNIX datagram socket."""

import os
import socket
import subprocess
import sys
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


# -- socket activation: sd_listen_fds(3) --

def test_listen_fds_are_parsed_for_this_process_only():
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "2"}
    assert systemd.parse_listen_fds(env, 42) == [(3, None), (4, None)]
    assert systemd.parse_listen_fds(dict(env, LISTEN_FDNAMES="web:"), 42) == [(3, "web"), (4, None)]
    assert systemd.parse_listen_fds(dict(env, LISTEN_PID="41"), 42) == []  # another process's
    assert systemd.parse_listen_fds({"LISTEN_FDS": "2"}, 42) == []
    assert systemd.parse_listen_fds({}, 42) == []
    assert systemd.parse_listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": "0"}, 42) == []


def test_a_handover_passes_fds_to_the_child_of_the_process_it_names():
    env = {"RUNEWARP_LISTEN_PPID": "7", "RUNEWARP_LISTEN_FDS": "9,12",
           "RUNEWARP_LISTEN_FDNAMES": "public:metrics"}
    assert systemd.parse_listen_fds(env, 42, 7) == [(9, "public"), (12, "metrics")]
    assert systemd.parse_listen_fds(env, 42, 8) == []  # inherited by a grandchild: not ours
    assert systemd.parse_listen_fds(env, 42) == []
    assert systemd.parse_listen_fds(dict(env, RUNEWARP_LISTEN_FDS="",
                                         RUNEWARP_LISTEN_FDNAMES=""), 42, 7) == []
    unnamed = {"RUNEWARP_LISTEN_PPID": "7", "RUNEWARP_LISTEN_FDS": "5"}
    assert systemd.parse_listen_fds(unnamed, 42, 7) == [(5, None)]


def test_handover_environ_is_what_parse_listen_fds_reads():
    first, second = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    with first, second:
        env = systemd.handover_environ([(first, "public", True), (second, None, False)], pid=7)
        assert systemd.parse_listen_fds(env, 42, 7) == [(first.fileno(), "public"),
                                                        (second.fileno(), None)]
        assert env["RUNEWARP_LISTEN_UNIT"] == str(first.fileno())


@pytest.mark.parametrize("env, message", [
    ({"RUNEWARP_LISTEN_PPID": "7", "RUNEWARP_LISTEN_FDS": "5,x"},
     "RUNEWARP_LISTEN_FDS='5,x': not a list of file descriptors"),
    ({"RUNEWARP_LISTEN_PPID": "7", "RUNEWARP_LISTEN_FDS": "5,6", "RUNEWARP_LISTEN_FDNAMES": "a"},
     "RUNEWARP_LISTEN_FDNAMES='a': 1 names for RUNEWARP_LISTEN_FDS=5,6"),
])
def test_unreadable_handover_fds_for_this_process_are_an_error(env, message):
    with pytest.raises(systemd.ActivationError, match=message):
        systemd.parse_listen_fds(env, 42, 7)


@pytest.mark.parametrize("env, message", [
    ({"LISTEN_PID": "42"}, "LISTEN_FDS='': not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, "LISTEN_FDS='two': not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1': not a number"),
    ({"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"},
     "LISTEN_FDNAMES='web': 1 names for LISTEN_FDS=2"),
])
def test_unreadable_listen_fds_for_this_process_are_an_error(env, message):
    with pytest.raises(systemd.ActivationError, match=message):
        systemd.parse_listen_fds(env, 42)


def test_listen_fds_removes_the_variables_so_children_do_not_inherit_them():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web", "PATH": "/bin",
           "RUNEWARP_LISTEN_PPID": "1", "RUNEWARP_LISTEN_FDS": "7", "RUNEWARP_LISTEN_FDNAMES": "x"}
    assert systemd.listen_fds(env) == []  # the variables name other processes
    assert env == {"PATH": "/bin"}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert systemd.listen_fds(env) == [] and env == {}


def test_listen_fds_wraps_the_passed_fds_as_close_on_exec_sockets(tmp_path):
    """A child started with listening sockets at fds 3 and 4, as systemd starts a service."""
    script = tmp_path / "child.py"
    script.write_text(
        "import fcntl, os, socket\n"
        "from runewarp import systemd\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "for sock, name, unit_owned in systemd.listen_fds():\n"
        "    cloexec = bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)\n"
        "    print(sock.fileno(), name, sock.getsockname()[1], cloexec, unit_owned)\n"
        "print(sorted(k for k in os.environ if k.startswith('LISTEN_')))\n")
    first, second = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in (first, second)]
    code = (f"import os, runpy; os.dup2({first.fileno()}, 3); os.dup2({second.fileno()}, 4); "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    env = dict(os.environ, LISTEN_FDS="2", LISTEN_FDNAMES="public:tunnel")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=30, pass_fds=(first.fileno(), second.fileno()))
    finally:
        first.close()
        second.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"3 public {ports[0]} True True",
                                       f"4 tunnel {ports[1]} True True", "[]"]
