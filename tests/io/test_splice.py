"""The splice on real sockets and a real mux over a socketpair, in this process's gevent hub.

gevent's own socket module is used directly (no monkey-patching of pytest).
What matters here: bytes arrive intact both ways, FIN and RST cross over, and a
parked (idle) splice holds no greenlet.
"""

import gc
import hashlib
import os
import random
import socket as stdlib_socket

import gevent
import gevent.socket
import greenlet
import pytest

from runewarp.io.splice import SocketEnd, Splices, StreamEnd
from runewarp.io.tunnel import TunnelSession
from runewarp.proto.mux import Role

pytestmark = pytest.mark.timeout(30)


ABORT = b"\x01\0\0\0\0\0\0\0"  # SO_LINGER on, 0 s


class _Log:
    def debug(self, *a, **k):
        pass

    info = warn = trace = debug

    def enabled(self, level):
        return False


def live_greenlets():
    """Started, unfinished greenlets, bare ones (spawn_raw) included."""
    return sum(1 for o in gc.get_objects()
               if isinstance(o, greenlet.greenlet) and o and not o.dead)


def pair():
    """A connected TCP pair on loopback (TCP, so that an abort is a real RST)."""
    listener = gevent.socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        near = gevent.socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    finally:
        listener.close()
    return near, far


def tunnel_pair():
    """A started Server/Client TunnelSession pair over loopback TCP, and the list the
    Client's accepted streams land in."""
    left, right = pair()
    accepted = []
    server_side = TunnelSession(left, Role.SERVER, on_stream=lambda _s, st: None, log=_Log())
    client_side = TunnelSession(right, Role.CLIENT, log=_Log(),
                                on_stream=lambda _s, st: accepted.append(st))
    server_side.start()
    client_side.start()
    return server_side, client_side, accepted


def settle():
    gevent.sleep(0.05)


class Outcome:
    def __init__(self):
        self.results = []

    def __call__(self, result):
        self.results.append(result)


def recv_exactly(sock, n):
    chunks, got = [], 0
    while got < n:
        data = sock.recv(min(1 << 20, n - got))
        assert data, f"EOF after {got} of {n} bytes"
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def test_bytes_cross_both_ways_and_an_idle_splice_holds_no_greenlet():
    visitor, a = pair()
    b, backend = pair()
    splices, done = Splices(), Outcome()
    before = live_greenlets()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    settle()
    assert live_greenlets() == before, "a splice with nothing to move must not hold a greenlet"

    payload = os.urandom(3 * 1024 * 1024)
    reader = gevent.spawn(recv_exactly, backend, len(payload))
    visitor.sendall(payload)
    assert hashlib.sha256(reader.get()).digest() == hashlib.sha256(payload).digest()
    backend.sendall(b"reply")
    assert recv_exactly(visitor, 5) == b"reply"
    settle()
    assert live_greenlets() == before, "after the bytes moved the pumps park again"
    assert len(splices) == 1 and not done.results

    visitor.close()
    backend.close()
    assert splices.join(5)
    [result] = done.results
    assert (result.a_to_b, result.b_to_a, result.error) == (len(payload), 5, None)


def test_fin_crosses_and_the_other_direction_keeps_working():
    visitor, a = pair()
    b, backend = pair()
    splices, done = Splices(), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    visitor.sendall(b"request")
    visitor.shutdown(stdlib_socket.SHUT_WR)
    assert recv_exactly(backend, 7) == b"request"
    assert backend.recv(10) == b"", "the Visitor's FIN reaches the backend as a FIN"
    backend.sendall(b"late answer")
    assert recv_exactly(visitor, 11) == b"late answer"
    assert not done.results
    backend.shutdown(stdlib_socket.SHUT_WR)
    assert visitor.recv(10) == b""
    assert splices.join(5)
    assert done.results[0].error is None
    visitor.close()
    backend.close()


def test_a_reset_on_one_side_aborts_the_other_and_reports_the_error():
    visitor, a = pair()
    b, backend = pair()
    splices, done = Splices(), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    visitor.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, ABORT)
    visitor.close()
    assert splices.join(5)
    assert "ConnectionResetError" in done.results[0].error
    with pytest.raises(ConnectionResetError):
        backend.recv(10)  # aborted, not closed cleanly and not held open
    backend.close()


def test_abort_all_ends_parked_splices_with_a_reset():
    ends = [(pair(), pair()) for _ in range(20)]
    splices, done = Splices(), Outcome()
    for (_v, a), (b, _bk) in ends:
        splices.start(SocketEnd(a), SocketEnd(b), done)
    settle()
    assert len(splices) == 20
    splices.abort_all("shutting down")
    assert splices.join(1)
    assert [r.error for r in done.results] == ["shutting down"] * 20
    for (v, _a), (_b, bk) in ends:
        for sock in (v, bk):
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
            sock.close()


def test_a_parked_mux_stream_wakes_its_pump_and_keeps_backpressure():
    server_side, client_side, accepted = tunnel_pair()
    visitor, a = pair()
    b, backend = pair()
    try:
        stream = server_side.open_stream()
        stream.sendall(b"hello")
        gevent.sleep(0.1)
        [far] = accepted
        assert far.recv_consumed() == b"hello"
        splices, done = Splices(), Outcome()
        before = live_greenlets()
        splices.start(SocketEnd(a), StreamEnd(stream), done)
        splices.start(StreamEnd(far), SocketEnd(b), done)
        settle()
        assert live_greenlets() == before

        payload = os.urandom(8 * 1024 * 1024)  # far beyond the 256 KiB initial window
        reader = gevent.spawn(recv_exactly, backend, len(payload))
        visitor.sendall(payload)
        assert reader.get() == payload
        backend.sendall(b"pong")
        assert recv_exactly(visitor, 4) == b"pong"
        settle()
        assert live_greenlets() == before
        visitor.close()
        assert backend.recv(10) == b""
        backend.close()
        assert splices.join(5)
        assert len(done.results) == 2
    finally:
        server_side.close()
        client_side.close()
        for s in (visitor, a, b, backend):
            s.close()


def test_a_list_of_chunks_leaves_as_one_gathered_stream_even_when_the_socket_is_full():
    near, far = pair()
    parts = [os.urandom(n) for n in (1, 3 * 1024 * 1024, 70_000, 5, 2 * 1024 * 1024)]
    expected = b"".join(parts)
    reader = gevent.spawn(recv_exactly, far, len(expected))
    SocketEnd(near).sendall(list(parts))  # far larger than the socket buffers: partial sends
    assert reader.get() == expected
    near.close()
    far.close()


def test_more_buffers_than_iov_max_leave_intact():
    """Linux refuses a sendmsg of more than IOV_MAX (1024) buffers with EMSGSIZE; here
    the batches also end mid-buffer, as the socket fills."""
    near, far = pair()
    sizes = random.Random(7).choices(range(1, 4000), k=3000)  # about 6 MB
    parts = [os.urandom(n) for n in sizes]
    expected = b"".join(parts)
    reader = gevent.spawn(recv_exactly, far, len(expected))
    SocketEnd(near).sendall(parts)
    assert reader.get() == expected
    near.close()
    far.close()


def test_thousands_of_small_frames_in_one_read_reach_the_socket_intact():
    """A chatty backend on a busy Tunnel connection: one read of the Tunnel connection
    queues more chunks on one stream than one gathered send may carry."""
    server_side, client_side, accepted = tunnel_pair()
    b, backend = pair()
    try:
        stream = server_side.open_stream()
        stream.sendall(b"hi")
        gevent.sleep(0.1)
        [far] = accepted
        assert far.recv_consumed() == b"hi"
        splices, done = Splices(), Outcome()
        splices.start(StreamEnd(far), SocketEnd(b), done)
        settle()
        records = [i.to_bytes(2, "big") * 25 for i in range(2000)]
        for record in records:  # all queued before the writer runs: one write, one read
            stream.sendall(record)
        expected = b"".join(records)
        backend.settimeout(5)
        assert recv_exactly(backend, len(expected)) == expected, [r.error for r in done.results]
        assert not done.results
        stream.end()
        assert backend.recv(10) == b""
        backend.close()
        assert splices.join(5)
        [result] = done.results
        assert (result.a_to_b, result.error) == (len(expected), None)
    finally:
        server_side.close()
        client_side.close()
        for s in (b, backend):
            s.close()


def test_a_dead_tunnel_ends_a_splice_whose_stream_side_already_finished():
    """The stream sent its FIN (that direction is done) and the Visitor side is silent
    (parked on the socket): when the Tunnel connection dies, nothing wakes a pump, yet
    the splice must end at once instead of waiting for a timeout."""
    server_side, client_side, accepted = tunnel_pair()
    visitor, a = pair()
    try:
        stream = server_side.open_stream()
        stream.sendall(b"x")
        gevent.sleep(0.1)
        [far] = accepted
        splices, done = Splices(), Outcome()
        splices.start(SocketEnd(a), StreamEnd(stream), done)
        far.end()  # the Client side finishes its direction
        assert visitor.recv(10) == b""  # the FIN crossed: that direction is done
        client_side.close("tunnel connection lost")
        assert splices.join(2), "the splice outlived its Tunnel connection"
        assert "StreamReset" in done.results[0].error
    finally:
        server_side.close()
        client_side.close()
        for s in (visitor, a):
            s.close()
