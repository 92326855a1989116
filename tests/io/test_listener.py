"""Accepted sockets get TCP_NODELAY and keepalive from the listening socket (Linux inherits them)."""

import socket

import pytest

from runewarp.io.listener import bind

pytestmark = pytest.mark.timeout(10)


def test_accepted_sockets_inherit_nodelay_and_keepalive():
    listener = bind(("127.0.0.1", 0))
    listener.setblocking(True)
    try:
        with socket.create_connection(listener.getsockname()) as visitor:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
            assert visitor
    finally:
        listener.close()
