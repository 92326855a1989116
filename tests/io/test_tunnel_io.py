"""TunnelSession's own timers and queues, on real sockets in this process's gevent hub:
a peer that stops answering is declared dead by the I/O layer (not only by the sans-I/O
Session), and streams stop queueing frames while the transport is blocked."""

import socket as stdlib_socket
import time

import gevent
import pytest

from runewarp.io import tunnel, tunnelstream
from runewarp.io.tunnel import OUTBOUND_HIGH_WATER, TunnelSession
from runewarp.proto.mux import Role
from runewarp.proto.mux.frames import HEADER_SIZE, INITIAL_WINDOW

from .test_splice import _Log, pair

pytestmark = pytest.mark.timeout(30)
KiB = 1024


def test_a_peer_that_stops_answering_is_closed_in_about_a_second():
    near, far = pair()  # `far` never reads or writes: a peer that went silent
    session = TunnelSession(near, Role.CLIENT, on_stream=lambda _s, st: None, log=_Log(),
                            keepalive_interval=0.2, idle_timeout=0.5)
    started = time.monotonic()
    session.start()
    try:
        assert session.wait(timeout=3), "the silent peer was never declared dead"
        took = time.monotonic() - started
        assert 0.4 <= took < 1.5, f"closed after {took:.2f}s"
        assert session.close_reason == "no frame received for 0.5 s"
        assert near.fileno() == -1  # the transport is closed too
    finally:
        session.close()
        far.close()


def test_a_peer_that_answers_pings_is_kept():
    near, far = pair()
    client = TunnelSession(near, Role.CLIENT, on_stream=lambda _s, st: None, log=_Log(),
                           keepalive_interval=0.2, idle_timeout=0.5)
    server = TunnelSession(far, Role.SERVER, on_stream=lambda _s, st: None, log=_Log())
    client.start()
    server.start()
    try:
        assert not client.wait(timeout=1.5), client.close_reason
    finally:
        client.close()
        server.close()


def blocked_pair():
    """A Client TunnelSession over loopback TCP whose peer never reads, with small socket
    buffers, so the transport blocks after a few hundred KiB."""
    near, far = pair()
    for sock, option in ((near, stdlib_socket.SO_SNDBUF), (far, stdlib_socket.SO_RCVBUF)):
        sock.setsockopt(stdlib_socket.SOL_SOCKET, option, 64 * KiB)
    session = TunnelSession(near, Role.CLIENT, on_stream=lambda _s, st: None, log=_Log(),
                            keepalive_interval=60, idle_timeout=120)
    session.start()
    return session, far


def queued_while_blocked(session, streams=8, seconds=1.0):
    """Start `streams` writers of one initial window each while the peer never reads.
    Returns (bytes the writers handed to the Session, the most it held at once, writers
    finished): the writer greenlet takes the whole queue in one piece, so what waits in
    memory is what the streams handed over, and the mark is what must bound it."""
    opened = [session.open_stream() for _ in range(streams)]
    writers = [gevent.spawn(stream.sendall, b"x" * INITIAL_WINDOW) for stream in opened]
    most = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, session.session.outbound_pending)
        gevent.sleep(0.01)
    handed = sum(INITIAL_WINDOW - session.session.send_credit(s.id) for s in opened)
    finished = sum(1 for w in writers if w.dead)
    gevent.killall(writers)
    return handed, most, finished


# A writer checks the mark before it adds frames, so one window may go over it.
LIMIT = OUTBOUND_HIGH_WATER + INITIAL_WINDOW


def test_outbound_queue_stays_under_the_high_water_mark_while_the_transport_is_blocked():
    session, far = blocked_pair()
    try:
        handed, most, finished = queued_while_blocked(session)
        assert handed <= LIMIT, f"{handed} bytes queued while blocked, more than {LIMIT}"
        assert most <= LIMIT + 64 * HEADER_SIZE
        assert finished < 8, "the transport never blocked: the test measured nothing"
    finally:
        session.close()
        far.close()


def test_without_the_mark_the_queue_would_grow(monkeypatch):
    """The check above can fail: with the mark out of the way the same load queues it all."""
    monkeypatch.setattr(tunnel, "OUTBOUND_HIGH_WATER", 1 << 40)  # the writer's wake-up
    monkeypatch.setattr(tunnelstream, "OUTBOUND_HIGH_WATER", 1 << 40)  # the streams' wait
    session, far = blocked_pair()
    try:
        handed, _most, finished = queued_while_blocked(session)
        assert handed == 8 * INITIAL_WINDOW > LIMIT and finished == 8
    finally:
        session.close()
        far.close()
