"""Socket activation at the listener: a bind address that equals an inherited socket's
address serves that socket; an inherited socket nobody claims is refused."""

import socket

import pytest

from runewarp.io.inherited import InheritedSockets
from runewarp.io.listener import Listener
from runewarp.systemd import ActivationError

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def sockets():
    made = []

    def make(address, family=socket.AF_INET, listen=True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        made.append(sock)
        sock.bind(address)
        if listen:
            sock.listen()
        return sock

    yield make
    for sock in made:
        sock.close()


def test_a_listener_serves_the_inherited_socket_bound_to_its_address(sockets):
    inherited = sockets(("127.0.0.1", 0))
    other = sockets(("127.0.0.1", 0))
    address = inherited.getsockname()
    pool = InheritedSockets([(other, None), (inherited, "public")])
    listener = Listener("public", address, lambda sock, addr: None, 4, pool)
    try:
        assert listener.inherited and listener.sock is inherited and listener.address == address
        assert listener.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert pool.unclaimed == [(other, None)]
    finally:
        listener.server.close()


def test_a_listener_without_an_inherited_socket_binds_its_own(sockets):
    pool = InheritedSockets()
    listener = Listener("public", ("127.0.0.1", 0), lambda sock, addr: None, 4, pool)
    try:
        assert not listener.inherited
    finally:
        listener.server.close()


def test_addresses_are_compared_as_ips(sockets):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        mapped = sockets(("::ffff:127.0.0.1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    port = mapped.getsockname()[1]
    pool = InheritedSockets([(mapped, None)])
    assert pool.claim(("127.0.0.2", port)) is None
    assert pool.claim(("127.0.0.1", port + 1 if port < 65535 else 1)) is None
    assert pool.claim(("127.0.0.1", port)) is mapped and pool.unclaimed == []


def test_only_listening_tcp_sockets_are_claimed(sockets):
    bound = sockets(("127.0.0.1", 0), listen=False)
    pool = InheritedSockets([(bound, "web")])
    assert pool.claim(bound.getsockname()) is None
    with pytest.raises(ActivationError, match=rf"fd {bound.fileno()} \(web\) \(not a listening "
                       r"TCP socket\) matches no bind address \(server.public-bind-address = "
                       r"127.0.0.1:443, server.tunnel-bind-address = unset\)"):
        pool.refuse_unclaimed({"server.public-bind-address": ("127.0.0.1", 443),
                              "server.tunnel-bind-address": None})


def test_an_unclaimed_socket_is_refused_naming_it_and_the_bind_keys(sockets):
    stray = sockets(("127.0.0.1", 0))
    pool = InheritedSockets([(stray, None)])
    with pytest.raises(ActivationError) as caught:
        pool.refuse_unclaimed({"server.public-bind-address": ("0.0.0.0", 443),
                              "server.tunnel-bind-address": ("::", 8443)})
    assert str(caught.value) == (
        f"inherited socket fd {stray.fileno()} on 127.0.0.1:{stray.getsockname()[1]} matches "
        "no bind address (server.public-bind-address = 0.0.0.0:443, "
        "server.tunnel-bind-address = [::]:8443): make the socket unit listen on the "
        "configured address")
    InheritedSockets().refuse_unclaimed({"server.public-bind-address": ("0.0.0.0", 443)})
