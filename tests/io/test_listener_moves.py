"""What a reload does with the listeners, on real sockets: which bind addresses move, a
new one bound before the old one closes, a failure that leaves the running ones alone,
and a handler pool resized without closing the listening socket."""

import socket

import gevent
import gevent.socket
import pytest

from runewarp.io.inherited import InheritedSockets
from runewarp.io.listener import BindError, Listener, bind_moved, swap
from runewarp.systemd import ActivationError

pytestmark = pytest.mark.timeout(20)


class Lines:
    def __init__(self):
        self.lines = []

    def info(self, event, **fields):
        self.lines.append((event, fields))


def handler(sock, _address):
    sock.sendall(b"hi")
    sock.close()


def listener(address=("127.0.0.1", 0), name="public", inherited=None):
    return Listener(name, address, handler, 4, inherited)


def greeting(port):
    """What a Visitor gets from `port`, through gevent's socket (this process is not patched)."""
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(2)


def test_an_address_moves_only_when_it_names_another_socket():
    running = listener()
    make = []
    try:
        port = running.address[1]
        unchanged = {"public": ("127.0.0.1", 0), "tunnel": None}
        assert bind_moved([running], unchanged, unchanged, make.append) == {}
        # The port :0 gave, written into the config: the same socket.
        same = {"public": ("127.0.0.1", port), "tunnel": None}
        assert bind_moved([running], unchanged, same, make.append) == {}
        assert make == []
    finally:
        running.stop()


def test_a_moved_listener_serves_before_the_old_one_closes_and_a_removed_one_closes():
    public, tunnel = listener(), listener(name="tunnel")
    for each in (public, tunnel):
        each.start()
    old_port, tunnel_port = public.address[1], tunnel.address[1]
    log = Lines()
    moved = bind_moved([public, tunnel], {"public": ("127.0.0.1", 0), "tunnel": ("127.0.0.1", 0)},
                       {"public": ("127.0.0.1", 0), "tunnel": None}, lambda name, address: None)
    assert moved == {"tunnel": None}
    fresh = listener()
    new_port = fresh.address[1]
    try:
        moved["public"] = fresh
        listeners = swap([public, tunnel], moved, log)
        assert listeners == [fresh]
        assert gevent.spawn(greeting, new_port).get(timeout=5) == b"hi"
        for port in (old_port, tunnel_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert [fields["listener"] for _, fields in log.lines] == ["tunnel", "public"]
    finally:
        fresh.stop()


def test_a_bind_failure_closes_what_was_bound_and_leaves_the_running_listeners():
    running, taken = listener(), socket.create_server(("127.0.0.1", 0))
    running.start()
    made = []

    def make(name, address):
        made.append(listener(address, name))
        return made[-1]

    try:
        with pytest.raises(BindError, match=r"server\.public-bind-address: 127\.0\.0\.1:\d+: "
                                            "address already in use"):
            bind_moved([running], {"public": ("127.0.0.1", 0), "tunnel": None},
                       {"tunnel": ("127.0.0.1", 0), "public": taken.getsockname()}, make)
        assert len(made) == 1  # the tunnel listener, bound first, then closed again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(made[0].address, timeout=5).close()
        assert gevent.spawn(greeting, running.address[1]).get(timeout=5) == b"hi"
    finally:
        running.stop()
        taken.close()


def test_a_socket_systemd_passed_is_not_moved_by_a_reload():
    passed = socket.create_server(("127.0.0.1", 0))
    running = listener(passed.getsockname(), inherited=InheritedSockets([(passed, "public")]))
    try:
        assert running.inherited
        with pytest.raises(ActivationError, match="server.public-bind-address: .* is a socket "
                                                  "systemd passed; change the socket unit"):
            bind_moved([running], {"public": running.address}, {"public": ("127.0.0.1", 0)},
                       lambda name, address: pytest.fail("nothing is bound"))
    finally:
        running.stop()


def test_a_resized_pool_keeps_the_listening_socket():
    running = listener()
    running.start()
    try:
        port = running.address[1]
        running.resize(9)
        assert running.server.pool.size == 9
        for _ in range(3):
            assert gevent.spawn(greeting, port).get(timeout=5) == b"hi"
    finally:
        running.stop()
