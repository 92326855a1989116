"""io/workerpass.py on real Unix datagram sockets in this process's gevent hub: a TCP
socket passed from one worker's WorkerPasses to another's still carries its connection,
and whatever else arrives has its descriptors closed.  Paths (RUNEWARP_WORKER_SOCKETS)
stand in for the abstract names, which would need a supervisor as parent."""

import array
import os
import socket as stdlib_socket

import gevent
import gevent.socket
import pytest

from runewarp.io.workerpass import SOCKETS_ENV, WorkerPasses, socket_address
from runewarp.proto import workerpass
from runewarp.workers import Worker

pytestmark = pytest.mark.timeout(30)


class Log:
    def __init__(self):
        self.events = []

    def log(self, level, event, **fields):
        self.events.append((event, fields))

    def debug(self, event, **fields):
        self.log("debug", event, **fields)

    info = warn = debug


class Counter:
    def __init__(self):
        self.value = 0

    def inc(self, amount=1):
        self.value += amount


def counters():
    return {event: Counter() for event in ("sent", "send-failed", "received", "dropped")}


@pytest.fixture
def pair(tmp_path):
    """Workers 0 and 1 of 2; worker 1 collects what is passed to it."""
    environ = {SOCKETS_ENV: f"{tmp_path}/w0,{tmp_path}/w1"}
    got = []
    sender = WorkerPasses(Worker(0, 2), None, Log(), counters(), environ)
    receiver = WorkerPasses(Worker(1, 2), lambda sock, passed: got.append((sock, passed)),
                            Log(), counters(), environ)
    receiver.start()
    yield sender, receiver, got
    sender.close()
    receiver.close()
    for sock, _ in got:
        sock.close()


def wait_for(check, timeout=5):
    with gevent.Timeout(timeout):
        while not check():
            gevent.sleep(0.01)


def test_a_passed_visitor_socket_keeps_its_connection(pair):
    sender, receiver, got = pair
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    visitor_side = gevent.socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    passed = workerpass.Pass(("192.0.2.7", 4321), b"\x16\x03\x01hello", 123.5, 1)
    try:
        assert sender.send(accepted, passed, 1)
        accepted.close()  # the sender's copy goes; the receiver's holds the connection
        wait_for(lambda: got)
        sock, received = got[0]
        assert received == passed
        assert sock.type == stdlib_socket.SOCK_STREAM
        visitor_side.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        sock.sendall(b"pong")
        assert visitor_side.recv(4) == b"pong"
        assert sender.counters["sent"].value == receiver.counters["received"].value == 1
    finally:
        visitor_side.close()
        listener.close()


def test_a_worker_not_started_refuses_and_the_sender_says_so(pair):
    sender, _, _ = pair
    with stdlib_socket.socket() as tcp:
        assert not sender.send(tcp, workerpass.Pass(("127.0.0.1", 1), b"", 1.0, 1), 0)
    assert sender.counters["send-failed"].value == 1


def _send_raw(path, data, fds):
    with stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_DGRAM) as raw:
        ancillary = [(stdlib_socket.SOL_SOCKET, stdlib_socket.SCM_RIGHTS, array.array("i", fds))]
        raw.sendmsg([data], ancillary if fds else [], 0, path)


@pytest.mark.parametrize("case", ["garbage", "no-descriptor", "two-descriptors", "unix-socket"])
def test_whatever_is_not_a_pass_is_dropped_and_its_descriptors_closed(pair, case):
    _, receiver, got = pair
    path = socket_address(1, receiver.environ)
    good = workerpass.encode(workerpass.Pass(("127.0.0.1", 1), b"", 1.0, 1))
    keep, give = stdlib_socket.socketpair()
    keep2, give2 = stdlib_socket.socketpair()
    try:
        data, fds = {"garbage": (b"garbage", [give.fileno()]),
                     "no-descriptor": (good, []),
                     "two-descriptors": (good, [give.fileno(), give2.fileno()]),
                     "unix-socket": (good, [give.fileno()])}[case]
        _send_raw(path, data, fds)
        give.close()
        give2.close()
        wait_for(lambda: receiver.counters["dropped"].value == 1)
        assert got == []
        for end in (keep, keep2):  # every descriptor the worker got is closed: end of file
            end.settimeout(5)
            assert end.recv(1) == b""
    finally:
        for sock in (keep, give, keep2, give2):
            sock.close()


def test_a_single_process_binds_nothing(tmp_path):
    passes = WorkerPasses(Worker(0, 1), None, Log(), counters(), {SOCKETS_ENV: f"{tmp_path}/w0"})
    passes.start()
    assert passes.sock is None and not os.path.exists(tmp_path / "w0")


def test_the_abstract_name_is_the_supervisors_and_the_index():
    assert socket_address(3, {}, ppid=42) == "\0runewarp-42-3"
    assert socket_address(1, {SOCKETS_ENV: "/run/a,/run/b"}) == "/run/b"
    assert socket_address(2, {SOCKETS_ENV: "/run/a,/run/b"}) is None
