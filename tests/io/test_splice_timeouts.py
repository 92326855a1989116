"""Every splice ends: idle, half-closed and first-byte timeouts, judged by one sweeper.

Real loopback sockets and a real TunnelSession pair, as in test_splice.py, with a
50 ms sweep tick so that the timeouts take a fraction of a second.
"""

import gc
import socket as stdlib_socket
import time

import gevent
import pytest

from runewarp.io.net import set_keepalive
from runewarp.io.splice import SocketEnd, Splices, SpliceTimeouts, StreamEnd
from runewarp.io.sweeper import Sweeper
from runewarp.errors import StreamAborted
from runewarp.io.tunnel import TunnelSession
from runewarp.proto.mux import Role

from .test_splice import Outcome, _Log, pair, recv_exactly

pytestmark = pytest.mark.timeout(30)

TICK = 0.05
SLACK = 0.02  # gevent's cached loop clock may let a sleep end this early


def splices_with(**timeouts):
    return Splices(SpliceTimeouts(**timeouts), tick=TICK)


def wait_done(splices, done, limit=5.0):
    """Seconds until the splice reported, failing the test past `limit`."""
    started = time.monotonic()
    assert splices.join(limit), "the splice never ended"
    assert len(done.results) == 1
    return time.monotonic() - started


def assert_reset(sock):
    """Aborted, not closed cleanly: whatever was still buffered, then ECONNRESET."""
    with pytest.raises(ConnectionResetError):
        while sock.recv(1 << 20):
            pass
    sock.close()


def sweepers():
    """Sweeper greenlets alive anywhere in this process."""
    return sum(1 for o in gc.get_objects()
               if isinstance(o, gevent.Greenlet) and not o.dead
               and getattr(getattr(o, "_run", None), "__func__", None) is Sweeper._run)


def once_more(done):
    """After the splice reported: give any late second report time to show up."""
    gevent.sleep(4 * TICK)
    assert len(done.results) == 1, "on_done runs exactly once"


@pytest.fixture
def mux():
    """A connected TunnelSession pair; yields open_stream() → (near, far) stream pairs."""
    left, right = pair()
    accepted = []
    near = TunnelSession(left, Role.SERVER, on_stream=lambda _s, st: None, log=_Log())
    far = TunnelSession(right, Role.CLIENT, log=_Log(), on_stream=lambda _s, st: accepted.append(st))
    near.start()
    far.start()

    def open_stream():
        stream = near.open_stream()
        stream.sendall(b"hi")
        for _ in range(100):
            if accepted:
                break
            gevent.sleep(0.01)
        other = accepted.pop()
        assert other.recv_consumed() == b"hi"
        return stream, other

    yield open_stream
    near.close()
    far.close()


def test_an_idle_splice_is_reset_on_both_ends():
    visitor, a = pair()
    b, backend = pair()
    splices, done = splices_with(idle=0.3), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    visitor.sendall(b"ping")
    assert recv_exactly(backend, 4) == b"ping"
    backend.sendall(b"pong")
    assert recv_exactly(visitor, 4) == b"pong"
    elapsed = wait_done(splices, done)
    assert 0.3 - SLACK <= elapsed < 0.3 + 0.5
    assert done.results[0].error == "idle-timeout"
    assert (done.results[0].a_to_b, done.results[0].b_to_a) == (4, 4)
    assert_reset(visitor)
    assert_reset(backend)
    once_more(done)


def test_bytes_in_either_direction_keep_a_splice_alive():
    visitor, a = pair()
    b, backend = pair()
    splices, done = splices_with(idle=0.3), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    for i in range(12):  # 1.2 s, four idle timeouts, one direction at a time
        src, dst = (visitor, backend) if i < 6 else (backend, visitor)
        src.sendall(b"x")
        assert recv_exactly(dst, 1) == b"x"
        gevent.sleep(0.1)
    assert not done.results
    visitor.close()
    backend.close()
    wait_done(splices, done)
    assert done.results[0].error is None


def test_the_idle_timeout_resets_the_mux_stream_toward_the_peer(mux):
    stream, far = mux()
    visitor, a = pair()
    splices, done = splices_with(idle=0.3), Outcome()
    splices.start(SocketEnd(a), StreamEnd(stream), done)
    wait_done(splices, done)
    assert done.results[0].error == "idle-timeout"
    assert_reset(visitor)
    with pytest.raises(StreamAborted):
        far.recv(timeout=2)


def test_a_half_closed_splice_with_a_silent_other_direction_is_released():
    visitor, a = pair()
    b, backend = pair()
    splices, done = splices_with(half_closed=0.3), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    gevent.sleep(0.6)  # silent but not half-closed: no timeout applies yet
    assert not done.results
    visitor.sendall(b"request")
    visitor.shutdown(stdlib_socket.SHUT_WR)
    assert recv_exactly(backend, 7) == b"request"
    assert backend.recv(10) == b""  # the FIN crossed; the backend never answers
    elapsed = wait_done(splices, done)
    assert 0.3 - SLACK - 0.05 <= elapsed < 0.3 + 0.5
    assert done.results[0].error == "half-closed-timeout"
    assert_reset(visitor)
    with pytest.raises(OSError):  # reset: the next write fails, at the latest the one after
        for _ in range(3):
            backend.sendall(b"too late")
            gevent.sleep(0.05)
    backend.close()
    once_more(done)


def test_a_half_closed_splice_that_keeps_answering_is_kept():
    visitor, a = pair()
    b, backend = pair()
    splices, done = splices_with(half_closed=0.3), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    visitor.sendall(b"request")
    visitor.shutdown(stdlib_socket.SHUT_WR)
    assert recv_exactly(backend, 7) == b"request"
    assert backend.recv(10) == b""
    for _ in range(12):  # 1.2 s after the FIN, a byte every 0.1 s
        backend.sendall(b"y")
        assert recv_exactly(visitor, 1) == b"y"
        gevent.sleep(0.1)
    assert not done.results
    backend.shutdown(stdlib_socket.SHUT_WR)
    assert visitor.recv(10) == b""
    wait_done(splices, done)
    assert (done.results[0].error, done.results[0].b_to_a) == (None, 12)
    visitor.close()
    backend.close()


def test_first_byte_timeout_when_b_never_answers(mux):
    """The Server's shape: a is the Visitor, b the stream toward a Client whose backend hangs."""
    stream, far = mux()
    visitor, a = pair()
    splices, done = splices_with(first_byte=0.3), Outcome()
    started = time.monotonic()
    splices.start(SocketEnd(a), StreamEnd(stream), done)
    for _ in range(4):  # the Visitor keeps talking: bytes toward b do not count
        visitor.sendall(b"z")
        gevent.sleep(0.05)
    wait_done(splices, done)
    assert done.results[0].error == "first-byte-timeout"
    assert 0.3 - SLACK <= time.monotonic() - started < 0.3 + 0.5
    assert done.results[0].a_to_b > 0
    assert_reset(visitor)
    with pytest.raises(StreamAborted):
        while True:
            far.recv_consumed(timeout=2)
    once_more(done)


def test_no_first_byte_timeout_once_b_answered(mux):
    stream, far = mux()
    visitor, a = pair()
    splices, done = splices_with(first_byte=0.3), Outcome()
    splices.start(SocketEnd(a), StreamEnd(stream), done)
    gevent.sleep(0.1)
    far.sendall(b"!")
    assert recv_exactly(visitor, 1) == b"!"
    gevent.sleep(1.0)  # silent from now on, well past the first-byte timeout
    assert not done.results
    visitor.close()
    far.end()
    wait_done(splices, done)
    assert done.results[0].error is None


def test_a_pump_blocked_on_a_peer_that_never_reads_is_released_once():
    visitor, a = pair()
    b, backend = pair()
    splices, done = splices_with(idle=0.3), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    flood = gevent.spawn(send_until_reset, visitor, b"\0" * (64 * 1024 * 1024))  # beyond the buffers
    wait_done(splices, done)
    assert done.results[0].error == "idle-timeout"
    assert 0 < done.results[0].a_to_b < 64 * 1024 * 1024
    assert_reset(backend)
    assert isinstance(flood.get(timeout=5), OSError)
    visitor.close()
    once_more(done)


def send_until_reset(sock, data):
    try:
        sock.sendall(data)
    except OSError as exc:
        return exc


def test_the_sweeper_runs_only_while_splices_live():
    assert sweepers() == 0
    splices, done = splices_with(idle=5), Outcome()
    visitor, a = pair()
    b, backend = pair()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    assert sweepers() == 1, "one sweeper for the whole registry"
    visitor2, a2 = pair()
    b2, backend2 = pair()
    splices.start(SocketEnd(a2), SocketEnd(b2), done)
    assert sweepers() == 1, "never one per splice"
    for sock in (visitor, backend, visitor2, backend2):
        sock.close()
    assert splices.join(5)
    gevent.sleep(3 * TICK)
    assert sweepers() == 0, "the sweeper ends with the last splice"

    visitor, a = pair()
    b, backend = pair()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    assert sweepers() == 1, "and comes back for a new one"
    splices.close()
    assert sweepers() == 0, "close() stops it at once"
    assert len(splices) == 1, "close() leaves the splices alone"
    visitor.close()
    backend.close()
    assert splices.join(5)
    assert [r.error for r in done.results] == [None, None, None]


def test_without_timeouts_a_silent_splice_lives_on_and_no_sweeper_runs():
    visitor, a = pair()
    b, backend = pair()
    splices, done = Splices(), Outcome()
    splices.start(SocketEnd(a), SocketEnd(b), done)
    visitor.sendall(b"request")
    visitor.shutdown(stdlib_socket.SHUT_WR)
    assert recv_exactly(backend, 7) == b"request"
    gevent.sleep(0.5)
    assert sweepers() == 0
    assert not done.results
    backend.sendall(b"late")
    assert recv_exactly(visitor, 4) == b"late"
    backend.close()
    visitor.close()
    wait_done(splices, done)
    assert done.results[0].error is None


def test_timeouts_must_not_be_negative():
    with pytest.raises(ValueError):
        SpliceTimeouts(idle=-1)
    assert SpliceTimeouts() == SpliceTimeouts(idle=None, half_closed=None, first_byte=None)


class _QuietEnd:
    """An end that never has anything to read: what 16k idle connections look like to a sweep."""

    def try_recv(self):
        return None

    def when_readable(self, callback):
        pass

    def cancel_readable(self):
        pass

    def abort(self):
        pass

    close = abort


def test_a_sweep_over_16k_idle_splices_is_cheap():
    splices = Splices(SpliceTimeouts(idle=600, half_closed=30, first_byte=30), tick=1.0)
    for _ in range(16384):
        splices.start(_QuietEnd(), _QuietEnd(), lambda result: None)
    try:
        best = min(_timed(splices.sweeper.sweep) for _ in range(5))
        print(f"sweep over {len(splices)} idle splices: {best * 1000:.2f} ms")
        assert best < 0.05  # about 2 ms here; generous for a loaded CI machine
        assert len(splices) == 16384
    finally:
        splices.abort_all("test over")
        splices.close()


def _timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def test_set_keepalive_turns_on_probes():
    near, far = pair()
    set_keepalive(near, idle=60, interval=15, count=4)
    assert near.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) == 1
    if hasattr(stdlib_socket, "TCP_KEEPIDLE"):
        options = (stdlib_socket.TCP_KEEPIDLE, stdlib_socket.TCP_KEEPINTVL, stdlib_socket.TCP_KEEPCNT)
        assert [near.getsockopt(stdlib_socket.IPPROTO_TCP, o) for o in options] == [60, 15, 4]
    near.close()
    set_keepalive(near)  # a closed socket: ignored like set_nodelay
    far.close()
