"""Tunnel session runner: reader, writer and timer greenlets around one mux Session.

The Session (sans-I/O) decides what goes on the wire; this module only moves
bytes between it and the TLS transport and wakes the greenlets that wait on a
stream.  Streams are socket-like objects whose `sendall` blocks on the send
window, which is what gives every direction of every stream backpressure.
"""

import sys
import time

import gevent
from gevent.event import Event

from ..errors import ProtocolError, StreamAborted
from ..proto import mux
from ..proto.control import ControlError

READ_SIZE = 256 * 1024
# Streams stop adding frames while this much is waiting for the socket, so one
# busy stream cannot queue megabytes ahead of the others.
OUTBOUND_HIGH_WATER = 512 * 1024
WRITE_FAILURE_GRACE = 1.0


class MuxStream:
    """One multiplexed stream with a blocking, socket-like surface."""

    def __init__(self, tunnel, stream_id):
        self.tunnel = tunnel
        self.id = stream_id
        self._chunks = []  # a few chunks at most per window; a list is 14x smaller than a deque
        self._notify = None
        self._readable = Event()
        self._writable = Event()
        self.eof = False
        self.reset_reason = None
        # Called once with the reason when the stream is reset: a splice whose reading
        # side already ended has no pump waiting here, and must still learn of it.
        self.on_reset = None

    # -- events from the reader greenlet --
    def _on_data(self, data):
        self._chunks.append(data)
        self._became_readable()

    def _on_end(self):
        self.eof = True
        self._became_readable()

    def _on_reset(self, reason):
        hook = None
        if self.reset_reason is None:
            self.reset_reason = reason
            hook, self.on_reset = self.on_reset, None
        self._became_readable()
        self._writable.set()
        if hook is not None:
            try:
                hook(reason)
            except Exception:  # noqa: BLE001 - a splice's failure must not stop a close loop
                gevent.get_hub().handle_error(self, *sys.exc_info())

    def _became_readable(self):
        self._readable.set()
        if self._notify is not None:
            notify, self._notify = self._notify, None
            notify()

    def _on_credit(self):
        self._writable.set()

    # -- application side --
    def recv(self, timeout=None):
        """Next received chunk; b"" once the peer finished its direction.

        The caller reports delivered bytes with `consumed(n)`, which is what
        returns credit to the peer.
        """
        while not self._chunks:
            if self.reset_reason is not None:
                raise StreamAborted(self.reset_reason)
            if self.eof:
                return b""
            self._readable.clear()
            if not self._readable.wait(timeout):
                raise TimeoutError("stream read timed out")
        return self._chunks.pop(0)

    def try_recv(self):
        """recv() that never waits: None when nothing has arrived yet, b"" at the end.

        Every chunk already received leaves at once, as a list when there are several,
        so the pump writes them onward with one system call and no copy.
        """
        chunks = self._chunks
        if chunks:
            if len(chunks) == 1:
                return chunks.pop()
            self._chunks = []
            return chunks
        if self.reset_reason is not None:
            raise StreamAborted(self.reset_reason)
        if self.eof:
            return b""
        return None

    def when_readable(self, callback):
        """Call `callback()` once when try_recv() would return something (None: cancel).

        It runs in the Tunnel reader greenlet, so it must not block.
        """
        if callback is not None and (self._chunks or self.eof or self.reset_reason is not None):
            callback()
        else:
            self._notify = callback

    def recv_consumed(self, timeout=None):
        """recv() for small reads the caller buffers itself (headers, control lines):
        the credit goes back at once."""
        data = self.recv(timeout)
        self.consumed(len(data))
        return data

    def consumed(self, n):
        if self.reset_reason is None:
            self.tunnel._consumed(self.id, n)

    def sendall(self, data):
        view = memoryview(data)
        tunnel = self.tunnel
        session = tunnel.session
        while view:
            if self.reset_reason is not None:
                raise StreamAborted(self.reset_reason)
            if session.outbound_pending > OUTBOUND_HIGH_WATER:
                tunnel._wait_drained(self)
                continue
            self._writable.clear()
            try:
                sent = session.send_data(self.id, view)
            except ProtocolError as exc:
                raise StreamAborted(str(exc)) from None
            if sent:
                view = view[sent:]
                tunnel._wake_writer()
            else:
                self._writable.wait()

    def end(self):
        """Half-close our direction (FIN)."""
        if self.reset_reason is None:
            self.tunnel.session.end_stream(self.id)
            self.tunnel._wake_writer()
            self.tunnel._maybe_forget(self.id)

    def reset(self):
        """Abort both directions: the peer gets RST, and our own greenlet waiting on the
        other direction wakes up with StreamAborted instead of waiting forever."""
        if self.reset_reason is None:
            self._on_reset("reset locally")
            self.tunnel.session.reset_stream(self.id)
            self.tunnel._wake_writer()
        self.tunnel._forget(self.id)

    def close(self):
        self.tunnel._forget(self.id)


def read_control_messages(stream, decoder):
    """Read the control stream until at least one complete message is decoded.

    Raises StreamAborted when the stream ends first, ControlError on a bad line.
    """
    while True:
        data = stream.recv_consumed()
        if not data:
            raise StreamAborted("control stream closed")
        messages = decoder.feed(data)
        if messages:
            return messages


def drain_control(stream, decoder, log=None):
    """Keep reading the control stream after the hello: later message types are ignored
    (forward compatible); a malformed line resets the control stream, and nothing a
    peer sends escapes this greenlet."""
    try:
        while True:
            read_control_messages(stream, decoder)
    except StreamAborted:
        return
    except ControlError as exc:
        if log is not None:
            log.info("control-stream-reset", reason=str(exc))
        stream.reset()


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
        self.on_stream = on_stream
        self.log = log
        self.streams = {}
        self.closed = Event()
        self.peer_going_away = Event()
        self.go_away_reason = None  # the code of the peer's go away, once it sent one
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
        s = self.session
        return not (self.closed.is_set() or s.go_away_sent or s.go_away_received
                    or self._write_failed)

    def open_stream(self):
        stream_id = self.session.open_stream()
        stream = MuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self._wake_writer()
        return stream

    def go_away(self):
        if not self.closed.is_set():
            self.session.go_away(mux.GOAWAY_NORMAL)
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
        self.session.close()  # every stream's window growth goes back to the shared budget
        for stream in list(self.streams.values()):
            stream._on_reset("tunnel connection closed")
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
        try:
            while True:
                data = self.transport.recv(READ_SIZE)
                if not data:
                    return
                # One level check per read: below trace, the frames cost nothing extra.
                on_frame = self._trace_received if log.enabled("trace") else None
                for event in session.receive_data(data, self.clock(), on_frame):
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
                stream._on_reset("reset by peer")
        elif isinstance(event, mux.WindowUpdated):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._on_credit()
        elif isinstance(event, mux.GoAwayReceived):
            if self.go_away_reason is None:
                self.go_away_reason = event.reason
            self.peer_going_away.set()
            self.log.debug("tunnel-go-away-received", reason=event.reason)

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
