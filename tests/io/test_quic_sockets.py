"""The public QUIC sockets at the listener layer: bound beside a public listener, or
claimed from the inherited sockets (a hand-over's or a socket unit's ListenDatagram)."""

import errno
import socket

import pytest

from runewarp.io.inherited import InheritedSockets
from runewarp.io.listener import bind_datagram

pytestmark = pytest.mark.timeout(10)


def test_an_inherited_udp_socket_is_claimed_only_as_a_datagram_socket():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind(("127.0.0.1", 0))
        address = udp.getsockname()
        tcp.bind(address)
        tcp.listen()
        pool = InheritedSockets([(udp, "quic", False), (tcp, "public", False)])
        assert pool.claim(address, datagram=True) is udp
        assert pool.claim(address, datagram=True) is None  # claimed once
        assert pool.claim(address) is tcp
        assert pool.unclaimed == []
    finally:
        udp.close()
        tcp.close()


def test_a_udp_port_is_bound_once():
    sock = bind_datagram(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError) as exc:
            bind_datagram(sock.getsockname())  # no SO_REUSEADDR: no second socket beside ours
        assert exc.value.errno == errno.EADDRINUSE
    finally:
        sock.close()


def test_v6only_leaves_the_ipv4_port_free():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        six = bind_datagram(("::", 0), v6only=True)
    except OSError:
        pytest.skip("no IPv6 on this host")
    try:
        four = bind_datagram(("0.0.0.0", six.getsockname()[1]))
        four.close()
    finally:
        six.close()
