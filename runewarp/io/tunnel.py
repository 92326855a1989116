"""Tunnel session runner: reader, writer and timer greenlets around one mux Session.

The Session (sans-I/O) decides what goes on the wire; this module only moves
bytes between it and the TLS transport and wakes the greenlets that wait on a
stream.  Streams (tunnelstream.py) are socket-like objects whose `sendall`
blocks on the send window, which gives every direction of every stream
backpressure.
"""

import time

import gevent
from gevent.event import Event

from ..errors import ProtocolError
from ..proto import mux
from ..proto.retry import CONNECTION_CLOSED
from .tunnelstream import OUTBOUND_HIGH_WATER, MuxStream

READ_SIZE = 256 * 1024
WRITE_FAILURE_GRACE = 1.0
# The ping that follows our go away.  Keepalive pings count up from 0 every 20 s or
# more: they reach this value after 2,700 years.
GO_AWAY_PING = 0xFFFFFFFF
# Seconds a keepalive ping may go unanswered before the connection takes no new streams
# (`ping_overdue`): far above any round trip, far below dead-peer.
PING_OVERDUE = 3.0


def _refuse_stream(_session, stream):
    stream.reset()


class TunnelSession:
    """Runs one Tunnel connection's mux until the transport dies or both sides are done."""

    def __init__(self, transport, role, *, on_stream, log, keepalive_interval=20.0,
                 idle_timeout=60.0, max_frame_size=64 * 1024, max_window=16 * 1024 * 1024,
                 window_budget=None, clock=time.monotonic, name=None):
        self.transport = transport
        self.name = name  # the peer, in trace lines
        self.clock = clock
        self.session = mux.Session(role, max_frame_size=max_frame_size, max_window=max_window,
                                   keepalive_interval=keepalive_interval,
                                   idle_timeout=idle_timeout, window_budget=window_budget,
                                   now=clock())
        self.max_frame_size = max_frame_size
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.last_read = clock()  # when the peer's bytes last arrived
        self.on_stream = on_stream
        self.log = log
        self.streams = {}
        self.closed = Event()
        self.peer_going_away = Event()
        self.go_away_reason = None  # the code of the peer's go away, once it sent one
        self.go_away_settled = Event()  # our go away was read: no stream it crossed is missing
        self.control = None  # the Client's control stream once its hello went out (re-announce)
        self.close_reason = None
        self.close_error = None
        self.read_error = None  # what the peer's bytes said last (a TLS alert), whoever failed first
        self._writer_wake = Event()
        self._drained = Event()
        self._greenlets = []
        self._write_failed = False

    # -- public --
    @property
    def active_streams(self):
        return len(self.streams)

    @property
    def accepting(self):
        """New streams may be opened here: alive, and the peer has not sent go away.

        Our own go away does not count (the mux rule, docs/protocol.md): a draining
        Server still places the Visitors it had accepted on its Tunnel connections.
        """
        return not (self.closed.is_set() or self.session.go_away_received or self._write_failed)

    def open_stream(self):
        stream_id = self.session.open_stream()
        stream = MuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self._wake_writer()
        return stream

    def go_away(self):
        """Ask the peer for no new streams, then ping: the peer reads the ping after the go
        away and answers it after every stream it opened before, so once the echo is back
        (`go_away_settled`) no stream that crossed our go away is still on its way."""
        if not self.closed.is_set() and not self.session.go_away_sent:
            self.session.go_away(mux.GOAWAY_NORMAL)
            self.session.ping(GO_AWAY_PING)
            self._wake_writer()

    def start(self):
        self._greenlets = [gevent.spawn(self._read_loop), gevent.spawn(self._write_loop),
                           gevent.spawn(self._timer_loop)]

    def wait(self, timeout=None):
        return self.closed.wait(timeout)

    def close(self, reason="closed", error=None):
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.close_error = error
        self.closed.set()
        self.go_away_settled.set()
        self.session.close()  # every stream's window growth goes back to the shared budget
        for stream in list(self.streams.values()):
            stream._on_reset("tunnel connection closed", CONNECTION_CLOSED)
        self.streams.clear()
        self._drained.set()
        self._writer_wake.set()
        current = gevent.getcurrent()
        greenlets, self._greenlets = self._greenlets, []  # a dead greenlet's traceback
        for g in greenlets:                               # holds our frames: no cycle
            if g is not current:
                g.kill(block=False)
        self.on_stream = _refuse_stream
        try:
            self.transport.close()
        except OSError:
            pass

    # -- helpers used by streams --
    def _wake_writer(self):
        self._writer_wake.set()

    def _wait_drained(self, stream):
        """Wait for the outbound queue to drain, or for `stream` to be reset meanwhile."""
        self._drained.clear()
        stream._writable.clear()
        self._wake_writer()
        gevent.wait([self._drained, stream._writable], count=1)

    def _consumed(self, stream_id, n):
        self.session.consumed(stream_id, n)
        if self.session.outbound_pending:
            self._wake_writer()

    def _maybe_forget(self, stream_id):
        if not self.session.is_open(stream_id):
            self.streams.pop(stream_id, None)

    def _forget(self, stream_id):
        stream = self.streams.pop(stream_id, None)
        if stream is not None and self.session.is_open(stream_id):
            self.session.reset_stream(stream_id)
            self._wake_writer()

    # -- trace: one line per frame header, never a payload byte --
    def _trace_received(self, type_, flags, stream_id, length):
        self.log.trace("mux-frame-received", connection=self.name,
                       **mux.describe_header(type_, flags, stream_id, length))

    def _trace_sent(self, data):
        for header in mux.frame_headers(data):
            self.log.trace("mux-frame-sent", connection=self.name, **mux.describe_header(*header))

    # -- greenlets --
    def _read_loop(self):
        session = self.session
        log = self.log
        reason, error = "peer closed the connection", None
        # The transport decrypts into this buffer and the mux copies out what it keeps
        # before the next read: no bytes object per read.
        buffer = memoryview(bytearray(READ_SIZE))
        recv_into = self.transport.recv_into
        try:
            while True:
                n = recv_into(buffer)
                if not n:
                    return
                # One level check per read: below trace, the frames cost nothing extra.
                on_frame = self._trace_received if log.enabled("trace") else None
                self.last_read = now = self.clock()
                for event in session.receive_data(buffer[:n], now, on_frame):
                    self._dispatch(event)
                if session.outbound_pending:
                    self._wake_writer()
        except ProtocolError as exc:
            reason, error = f"protocol error: {exc}", exc
            self._flush_quietly()
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            reason, error = f"read failed: {exc.__class__.__name__}: {exc}", exc
            self.read_error = exc
        finally:
            self.close(reason, error)

    def _dispatch(self, event):
        if isinstance(event, mux.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data)
            else:
                self.session.consumed(event.stream_id, len(event.data))
        elif isinstance(event, mux.StreamOpened):
            stream = MuxStream(self, event.stream_id)
            self.streams[event.stream_id] = stream
            self.on_stream(self, stream)
        elif isinstance(event, mux.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_end()
                self._maybe_forget(event.stream_id)
        elif isinstance(event, mux.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream._on_reset("reset by peer", event.code)
        elif isinstance(event, mux.WindowUpdated):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_credit()
        elif isinstance(event, mux.GoAwayReceived):
            if self.go_away_reason is None:
                self.go_away_reason = event.reason
            self.peer_going_away.set()
            self.log.debug("tunnel-go-away-received", reason=event.reason)
        elif isinstance(event, mux.PingAcknowledged):
            if event.value == GO_AWAY_PING and self.session.go_away_sent:
                self.go_away_settled.set()
        # A keepalive's PingAcknowledged (the session measured ping_rtt) and
        # StreamAcknowledged need no action.

    @property
    def ping_rtt(self):
        """Seconds from the last keepalive ping to its ack; None before the first."""
        return self.session.ping_rtt

    @property
    def ping_overdue(self):
        """Nothing from the peer for keepalive-interval + PING_OVERDUE: the keepalive ping
        sent since has gone unanswered for at least PING_OVERDUE seconds (any byte, not
        only the echo, proves the peer alive: an echo queued behind a busy stream's data
        is late, not missing)."""
        return self.clock() - self.last_read > self.keepalive_interval + PING_OVERDUE

    def _flush_quietly(self):
        """Best effort to deliver the go away the session queued; never raises.

        The writer greenlet may be mid-write on the same transport: then the
        bytes are simply lost, as the connection is closing anyway.
        """
        data = self.session.data_to_send()
        if data:
            if self.log.enabled("trace"):
                self._trace_sent(data)
            with gevent.Timeout(1.0, False):
                try:
                    self.transport.sendall(data)
                except Exception:  # noqa: BLE001, S110 - closing regardless
                    pass

    def _write_loop(self):
        session = self.session
        log = self.log
        try:
            while True:
                self._writer_wake.wait()
                self._writer_wake.clear()
                if self.closed.is_set():
                    return
                data = session.data_to_send()
                if data:
                    if log.enabled("trace"):
                        self._trace_sent(data)
                    self.transport.sendall(data)
                if session.outbound_pending <= OUTBOUND_HIGH_WATER:
                    self._drained.set()
        except Exception as exc:  # noqa: BLE001 - any transport failure ends the connection
            self._write_failed = True  # no new streams while the reader gets its grace
            # The peer's last words (a TLS alert refusing us) reach the reader, not us:
            # give it a moment to read them, so the reason it finds wins.
            greenlets = self._greenlets
            if greenlets and not greenlets[0].dead:
                greenlets[0].join(timeout=WRITE_FAILURE_GRACE)
            self.close(f"write failed: {exc.__class__.__name__}: {exc}", exc)

    def _timer_loop(self):
        session = self.session
        while not self.closed.is_set():
            delay = max(0.0, session.next_timer() - self.clock())
            gevent.sleep(min(delay, 5.0))
            for event in session.handle_timer(self.clock()):
                if isinstance(event, mux.ConnectionDead):
                    self.close(f"no frame received for {self.idle_timeout:g} s")
                    return
            if session.outbound_pending:
                self._wake_writer()
