"""Reset codes between two TunnelSessions over real loopback sockets: the Client's
RESET_BEFORE_BACKEND reaches the Server's stream as its reset_code, a plain reset as 0,
and a stream whose Tunnel connection closed under it as CONNECTION_CLOSED."""

import gevent
import pytest
from gevent.event import AsyncResult

from runewarp.io.tunnel import TunnelSession
from runewarp.proto.mux import RESET_BEFORE_BACKEND, RESET_PLAIN, Role
from runewarp.proto.retry import CONNECTION_CLOSED

from .test_splice import _Log, pair

pytestmark = pytest.mark.timeout(30)


def sessions(on_stream):
    near, far = pair()
    server = TunnelSession(near, Role.SERVER, on_stream=lambda _s, st: None, log=_Log())
    client = TunnelSession(far, Role.CLIENT, on_stream=on_stream, log=_Log())
    server.start()
    client.start()
    return server, client


@pytest.mark.parametrize("code", [RESET_BEFORE_BACKEND, RESET_PLAIN])
def test_the_clients_reset_code_reaches_the_servers_stream(code):
    server, client = sessions(lambda _s, stream: stream.reset(code))
    try:
        stream = server.open_stream()
        stream.sendall(b"envelope")
        with gevent.Timeout(5):
            while stream.reset_reason is None:
                gevent.sleep(0.01)
        assert (stream.reset_reason, stream.reset_code) == ("reset by peer", code)
        assert not stream.answered
    finally:
        client.close()
        server.close()


def test_a_stream_whose_tunnel_connection_closed_carries_connection_closed():
    opened = AsyncResult()
    server, client = sessions(lambda _s, stream: opened.set(stream))
    try:
        stream = server.open_stream()
        stream.sendall(b"envelope")
        opened.get(timeout=5)
        client.close()  # the Client side vanishes before answering
        with gevent.Timeout(5):
            while stream.reset_reason is None:
                gevent.sleep(0.01)
        assert stream.reset_code == CONNECTION_CLOSED
    finally:
        server.close()
