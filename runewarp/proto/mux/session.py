"""The yamux session state machine: streams, flow-control windows, pings and go away.

Sans-I/O in the style of h2/h11: feed received bytes to `receive_data()`, act
on the returned events, and write whatever `data_to_send()` returns.  Time
only enters through the `now` arguments.

Flow control.  Each direction of each stream has a window, 256 KiB at first.
The sender never sends more than its credit; the receiver counts every byte
as *buffered* (received, not yet reported by `consumed()`) and then *unacked*
(consumed, credit not yet returned).  The peer's remaining credit is always
`window - buffered - unacked`, so a peer that overruns it is caught exactly.

Window growth.  When consumption makes the un-granted amount reach half the
current window, a window update returns it.  If at that moment nothing is left
buffered (the application keeps up with the link), the window doubles, up to
`max_window`, and the extra rides in the same update.  A stalled reader never
triggers growth, so the memory a slow stream can pin stays bounded by its
window, while a fast one quickly reaches a window that covers the link's
bandwidth-delay product.
"""

import enum

from ...errors import LocalProtocolError, RemoteProtocolError
from .events import (
    ConnectionDead,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    StreamAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from .frames import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GOAWAY_PROTOCOL_ERROR,
    HEADER,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    VERSION,
    FrameDecoder,
)

_pack = HEADER.pack


class Role(enum.Enum):
    """CLIENT dialed the connection and opens odd stream ids; SERVER opens even ones."""

    CLIENT = "client"
    SERVER = "server"


class _Stream:
    """Per-stream state; plain mutable slots because it changes on every frame."""

    __slots__ = ("send_credit", "recv_window", "recv_credit", "buffered", "unacked",
                 "local_closed", "remote_closed", "ours", "acked")

    def __init__(self, window: int, ours: bool):
        self.send_credit = INITIAL_WINDOW
        self.recv_window = window
        self.recv_credit = window
        self.buffered = 0
        self.unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.ours = ours
        self.acked = False


class Session:
    """One side of a yamux connection."""

    def __init__(self, role: Role, *, initial_window: int = INITIAL_WINDOW,
                 max_window: int = 16 * 1024 * 1024, max_frame_size: int = 64 * 1024,
                 keepalive_interval: float = 20.0, idle_timeout: float = 60.0,
                 now: float = 0.0):
        if initial_window < INITIAL_WINDOW:
            raise ValueError(f"initial_window below the protocol's {INITIAL_WINDOW} bytes")
        if max_window < initial_window:
            raise ValueError("max_window smaller than initial_window")
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        self.role = role
        self.initial_window = initial_window
        self.max_window = max_window
        self.max_frame_size = max_frame_size
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.go_away_sent = False
        self.go_away_received = False
        self.closed = False
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if role is Role.CLIENT else 2
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._last_peer_id = 0
        self._decoder = FrameDecoder(max(MAX_PAYLOAD, max_window))
        self._out: list = []  # frames in wire order, joined once by data_to_send()
        self._out_len = 0
        self._last_received = now
        self._next_ping = now + keepalive_interval
        self._ping_counter = 0

    # -- output --

    def data_to_send(self) -> bytes:
        """All queued outbound bytes (b"" if none); the queue is emptied.

        Frames are queued as separate pieces (headers, payload views) and joined
        here exactly once: on the data path every extra copy of a 64 KiB frame
        shows up in the profile.
        """
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out = []
        self._out_len = 0
        return data

    @property
    def outbound_pending(self) -> int:
        return self._out_len

    def _emit(self, chunk) -> None:
        self._out.append(chunk)
        self._out_len += len(chunk)

    # -- queries --

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def send_credit(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.send_credit

    def receive_window(self, stream_id: int) -> int:
        """Current advertised receive window of the stream (0 if gone)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.recv_window

    def unconsumed(self, stream_id: int) -> int:
        """Bytes received on the stream but not yet reported by `consumed()`."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.buffered

    # -- local actions --

    def open_stream(self) -> int:
        if self.closed:
            raise LocalProtocolError("session is closed")
        if self.go_away_sent or self.go_away_received:
            raise LocalProtocolError("go away exchanged: no new streams")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted")
        self._next_id = stream_id + 2
        self._streams[stream_id] = _Stream(self.initial_window, ours=True)
        # The SYN window update announces any window beyond the protocol's initial one.
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id,
                           self.initial_window - INITIAL_WINDOW))
        return stream_id

    def send_data(self, stream_id: int, data) -> int:
        """Frame as much of `data` as the send credit allows; returns the bytes taken."""
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        if stream.local_closed:
            raise LocalProtocolError(f"stream {stream_id} already ended")
        if self.closed:
            raise LocalProtocolError("session is closed")
        size = len(data)
        credit = stream.send_credit
        if size > credit:
            size = credit
        if size <= 0:
            return 0
        if isinstance(data, bytes) and size == len(data):
            payload = data
        else:
            payload = memoryview(data)[:size]
            if not isinstance(payload.obj, bytes):
                payload = bytes(payload)  # the caller may reuse a mutable buffer
        limit = self.max_frame_size
        if size <= limit:
            self._emit(_pack(VERSION, TYPE_DATA, 0, stream_id, size))
            self._emit(payload)
        else:
            view = memoryview(payload)
            for offset in range(0, size, limit):
                chunk = view[offset:offset + limit]
                self._emit(_pack(VERSION, TYPE_DATA, 0, stream_id, len(chunk)))
                self._emit(chunk)
        stream.send_credit = credit - size
        return size

    def end_stream(self, stream_id: int) -> None:
        """Half-close our direction with FIN; no-op if already ended or gone."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed or self.closed:
            return
        stream.local_closed = True
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0))
        if stream.remote_closed:
            del self._streams[stream_id]

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream with RST and forget it; no-op if gone."""
        if self._streams.pop(stream_id, None) is None or self.closed:
            return
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))

    def consumed(self, stream_id: int, n: int) -> None:
        """The application delivered `n` received bytes; returns credit per the growth policy."""
        stream = self._streams.get(stream_id)
        if stream is None or n == 0:
            return
        if n < 0 or n > stream.buffered:
            raise LocalProtocolError(
                f"stream {stream_id}: consumed {n} bytes but only {stream.buffered} are buffered")
        stream.buffered -= n
        unacked = stream.unacked + n
        window = stream.recv_window
        if unacked * 2 < window or stream.remote_closed or self.closed:
            # Below threshold, or the peer will send nothing more: keep counting.
            stream.unacked = unacked
            return
        delta = unacked
        if stream.buffered == 0 and window < self.max_window:
            extra = min(window, self.max_window - window)
            stream.recv_window = window + extra
            delta += extra
        stream.unacked = 0
        stream.recv_credit += delta
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    def go_away(self, reason: int = 0) -> None:
        """Refuse new streams from now on; existing streams may finish.  Idempotent."""
        if self.go_away_sent or self.closed:
            return
        self.go_away_sent = True
        self._emit(_pack(VERSION, TYPE_GO_AWAY, 0, 0, reason))

    def ping(self, value: int) -> None:
        """Ask the peer to echo `value`; the echo arrives as PingAcknowledged."""
        if self.closed:
            raise LocalProtocolError("session is closed")
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("ping value must fit in 32 bits")
        self._emit(_pack(VERSION, TYPE_PING, FLAG_SYN, 0, value))

    # -- timers --

    def next_timer(self) -> float:
        """Absolute time at which `handle_timer()` has something to do."""
        if self.closed:
            return float("inf")
        return min(self._next_ping, self._last_received + self.idle_timeout)

    def handle_timer(self, now: float) -> list[Event]:
        """Send a keepalive ping when due; report ConnectionDead (once) after idle_timeout."""
        if self.closed:
            return []
        if now - self._last_received >= self.idle_timeout:
            self.closed = True
            return [ConnectionDead()]
        if now >= self._next_ping:
            self._emit(_pack(VERSION, TYPE_PING, FLAG_SYN, 0, self._ping_counter))
            self._ping_counter = (self._ping_counter + 1) & 0xFFFFFFFF
            self._next_ping = now + self.keepalive_interval
        return []

    # -- input --

    def receive_data(self, data, now: float) -> list[Event]:
        """Parse every complete frame in `data` plus earlier leftovers.

        On a protocol violation a go away (protocol error) is queued, the
        session is closed and RemoteProtocolError propagates.  Data arriving
        after the session closed is ignored.
        """
        if self.closed:
            return []
        decoder = self._decoder
        events: list[Event] = []
        try:
            decoder.feed(data)
            next_raw = decoder.next_raw
            frame = next_raw()
            if frame is not None:
                self._last_received = now
            while frame is not None:
                type_, flags, stream_id, length, payload = frame
                if type_ <= TYPE_WINDOW_UPDATE:
                    self._stream_frame(type_, flags, stream_id, length, payload, events)
                elif type_ == TYPE_PING:
                    self._ping_frame(flags, stream_id, length, events)
                else:
                    if stream_id:
                        raise RemoteProtocolError(f"go away on stream {stream_id}")
                    self.go_away_received = True
                    events.append(GoAwayReceived(length))
                frame = next_raw()
        except RemoteProtocolError:
            self._fail()
            raise
        return events

    def _fail(self) -> None:
        self._emit(_pack(VERSION, TYPE_GO_AWAY, 0, 0, GOAWAY_PROTOCOL_ERROR))
        self.go_away_sent = True
        self.closed = True

    def _ping_frame(self, flags: int, stream_id: int, value: int, events: list) -> None:
        if stream_id:
            raise RemoteProtocolError(f"ping on stream {stream_id}")
        if flags & FLAG_SYN:
            self._emit(_pack(VERSION, TYPE_PING, FLAG_ACK, 0, value))
        elif flags & FLAG_ACK:
            events.append(PingAcknowledged(value))

    def _stream_frame(self, type_: int, flags: int, stream_id: int, length: int,
                      payload: bytes, events: list) -> None:
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            stream = self._accept(stream, stream_id, events)
            if stream is None:
                return
        elif stream is None:
            # Late frame for a stream we reset or that finished: drop it, and
            # tell a sender still pushing data that the stream is gone.
            if type_ == TYPE_DATA and stream_id and not flags & FLAG_RST:
                self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
            return
        if flags & FLAG_ACK and stream.ours and not stream.acked:
            stream.acked = True
            events.append(StreamAcknowledged(stream_id))
        if type_ == TYPE_DATA:
            if length:
                if stream.remote_closed:
                    raise RemoteProtocolError(f"stream {stream_id}: data after FIN")
                if length > stream.recv_credit:
                    raise RemoteProtocolError(
                        f"stream {stream_id}: {length} bytes exceed the "
                        f"{stream.recv_credit}-byte receive window")
                stream.recv_credit -= length
                stream.buffered += length
                events.append(DataReceived(stream_id, payload))
        elif length:
            stream.send_credit += length
            if not stream.local_closed:
                events.append(WindowUpdated(stream_id, stream.send_credit))
        if flags & FLAG_RST:
            del self._streams[stream_id]
            events.append(StreamReset(stream_id))
        elif flags & FLAG_FIN and not stream.remote_closed:
            stream.remote_closed = True
            events.append(StreamEnded(stream_id))
            if stream.local_closed:
                del self._streams[stream_id]

    def _accept(self, existing: _Stream | None, stream_id: int, events: list) -> _Stream | None:
        """Validate a SYN and create the stream, ACKing it at once; None if refused."""
        if existing is not None:
            raise RemoteProtocolError(f"duplicate SYN for stream {stream_id}")
        if stream_id == 0 or stream_id & 1 != self._peer_parity:
            raise RemoteProtocolError(f"SYN with stream id {stream_id} of the wrong parity")
        if stream_id <= self._last_peer_id:
            raise RemoteProtocolError(
                f"SYN for stream {stream_id} after stream {self._last_peer_id}")
        self._last_peer_id = stream_id
        if self.go_away_sent:
            self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
            return None
        stream = _Stream(self.initial_window, ours=False)
        self._streams[stream_id] = stream
        events.append(StreamOpened(stream_id))
        # ACK immediately (as HashiCorp's AcceptStream does) with any window
        # beyond the protocol's initial one, so data we send later never needs
        # to carry the ACK itself.
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id,
                           self.initial_window - INITIAL_WINDOW))
        return stream
