"""Go away on real mux sessions over loopback TCP, in this process's gevent hub: a stream
that crossed our go away is accepted, and `go_away_settled` is set only after it arrived."""

import gevent
import pytest

from .test_splice import tunnel_pair

pytestmark = pytest.mark.timeout(30)


def test_a_stream_that_crossed_our_go_away_arrives_before_the_go_away_settles():
    server, client, accepted = tunnel_pair()
    try:
        order = []
        client.on_stream = lambda _s, stream: order.append(("stream", stream.id))
        client.go_away_settled.rawlink(lambda _e: order.append(("settled", None)))
        client.go_away()
        crossed = server.open_stream()  # the Server has not read the go away yet
        assert client.go_away_settled.wait(10)
        gevent.sleep(0)  # rawlink callbacks run in the next hub turn
        assert order == [("stream", crossed.id), ("settled", None)]
        assert server.session.go_away_received and not server.accepting
        assert client.accepting  # only the receiver of a go away stops opening
    finally:
        server.close()
        client.close()


def test_go_away_settles_when_the_connection_closes_first():
    server, client, _ = tunnel_pair()
    server.close()
    client.go_away()
    assert client.go_away_settled.wait(10)
    client.close()
