"""A stream of a Tunnel connection, as the rest of the I/O layer sees it.

`MuxStream` gives one multiplexed stream a blocking, socket-like surface whose
`sendall` waits on the send window (backpressure per direction); the Tunnel
session runner (tunnel.py) feeds it from its reader greenlet.  The control
stream's helpers read newline-delimited JSON messages from such a stream.
"""

import sys

import gevent
from gevent.event import Event

from ..errors import ProtocolError, StreamAborted
from ..proto.control import ControlError

# Streams stop adding frames while this much is waiting for the socket, so one
# busy stream cannot queue megabytes ahead of the others.
OUTBOUND_HIGH_WATER = 512 * 1024


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
        self.reset_code = 0  # the peer's reset code (mux.RESET_*): RESET_BEFORE_BACKEND, retryable
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

    def _on_reset(self, reason, code=0):
        hook = None
        if self.reset_reason is None:
            self.reset_reason = reason
            self.reset_code = code
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

    @property
    def answered(self):
        """Bytes or the end came from the peer (a reset may follow them)."""
        return bool(self._chunks) or self.eof

    @property
    def readable(self):
        """try_recv() would return something now (bytes, the end, or the reset)."""
        return self.answered or self.reset_reason is not None

    def when_readable(self, callback):
        """Call `callback()` once when try_recv() would return something (None: cancel).

        It runs in the Tunnel reader greenlet, so it must not block.  The splice parks here
        for every chunk: `readable` is spelled out, not called (two property calls).
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

    def reset(self, code=0):
        """Abort both directions: the peer gets RST carrying `code` (mux.RESET_*), and our own
        greenlet waiting on the other direction wakes up with StreamAborted instead of
        waiting forever."""
        if self.reset_reason is None:
            self._on_reset("reset locally")
            self.tunnel.session.reset_stream(self.id, code)
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


def drain_control(stream, decoder, log=None, handle=None, pending=()):
    """Keep reading the control stream after the hello: each message goes to `handle`
    (the Server's later hello and service-health), messages of other types are ignored
    (forward compatible), and a malformed line (ControlError, also from `handle`) resets
    the control stream.  `pending`: messages already read with the hello.  Nothing a
    peer sends escapes this greenlet."""
    try:
        while True:
            if handle is not None:
                for message in pending:
                    handle(message)
            pending = read_control_messages(stream, decoder)
    except StreamAborted:
        return
    except ControlError as exc:
        if log is not None:
            log.info("control-stream-reset", reason=str(exc))
        stream.reset()
