"""The yamux session state machine: streams, flow-control windows, pings and go away.

Sans-I/O in the style of h2/h11: feed received bytes to `receive_data()`, act
on the returned events, and write whatever `data_to_send()` returns.  Time
only enters through the `now` arguments.

Flow control and window growth (window.py): the peer's credit is exactly
`window - buffered - unacked`, checked from each data frame's header; windows
grow for a reader that keeps up, shrink for one that falls behind, and take
their growth beyond 256 KiB from a WindowBudget shared by every session.

Replies to the peer's frames are bounded by `max_reply_backlog` (outbound.py).
"""

import enum
import sys

from ...errors import LocalProtocolError, RemoteProtocolError
from .budget import WindowBudget
from .events import ConnectionDead, Event
from .frames import (FLAG_FIN, FLAG_RST, FLAG_SYN, GOAWAY_INTERNAL_ERROR, HEADER, HEADER_SIZE,
                     INITIAL_WINDOW, MAX_PAYLOAD, MAX_STREAM_ID, RESET_PLAIN, TYPE_DATA, TYPE_GO_AWAY,
                     TYPE_PING, TYPE_WINDOW_UPDATE, VERSION, FrameDecoder)
from .inbound import PeerFrames
from .keepalive import Keepalive
from .outbound import Outbound
from .window import ReceiveWindows, StreamState

_pack = HEADER.pack


class Role(enum.Enum):
    """CLIENT dialed the connection and opens odd stream ids; SERVER opens even ones."""

    CLIENT = "client"
    SERVER = "server"


class Session(PeerFrames):
    """One side of a yamux connection.

    `window_budget` supplies window growth beyond 256 KiB (None: a private,
    unlimited one).  `max_reply_backlog` bounds the replies waiting for a peer
    that does not read: 1 MiB is four full 256 KiB reads of nothing but pings,
    far beyond what a peer that reads at all leaves queued, and each 12-byte
    reply waits as its own object (~50 bytes), so ~5 MiB per connection at most.
    """

    def __init__(self, role: Role, *, initial_window: int = INITIAL_WINDOW,
                 max_window: int = 16 * 1024 * 1024, max_frame_size: int = 64 * 1024,
                 keepalive_interval: float = 20.0, idle_timeout: float = 60.0,
                 now: float = 0.0, window_budget: WindowBudget | None = None,
                 max_reply_backlog: int = 1024 * 1024):
        if initial_window < INITIAL_WINDOW:
            raise ValueError(f"initial_window below the protocol's {INITIAL_WINDOW} bytes")
        if max_window < initial_window:
            raise ValueError("max_window smaller than initial_window")
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        if max_reply_backlog < HEADER_SIZE:
            raise ValueError("max_reply_backlog must hold at least one frame")
        self.role = role
        self.initial_window = initial_window
        self.max_window = max_window
        self.max_frame_size = max_frame_size
        self.window_budget = WindowBudget(sys.maxsize) if window_budget is None else window_budget
        self.max_reply_backlog = max_reply_backlog
        self._windows = ReceiveWindows(self.window_budget, initial_window, max_window)
        self.go_away_sent = False
        self.go_away_received = False
        self.closed = False
        self._streams: dict[int, StreamState] = {}
        self._next_id = 1 if role is Role.CLIENT else 2
        self._peer_parity = 0 if role is Role.CLIENT else 1
        self._last_peer_id = 0
        self._decoder = FrameDecoder(max(MAX_PAYLOAD, max_window))
        self._outbound = Outbound(max_reply_backlog)
        self._emit = self._outbound.emit
        self._keepalive = Keepalive(keepalive_interval, idle_timeout, now)

    # -- output --

    def data_to_send(self) -> bytes:
        """All queued outbound bytes (b"" if none); the queue is emptied."""
        return self._outbound.take()

    @property
    def outbound_pending(self) -> int:
        return self._outbound.pending

    def _reply(self, chunk) -> None:
        """Queue a frame the peer's input calls for; fail if the peer is not reading them."""
        if not self._outbound.reply(chunk):
            # Nothing malformed arrived: we give up for our own sake, hence "internal".
            self._fail(GOAWAY_INTERNAL_ERROR)
            raise RemoteProtocolError(f"peer is not reading: over {self.max_reply_backlog} bytes "
                                      "of replies to its frames are queued")

    # -- queries --

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def ping_rtt(self) -> float | None:
        """Seconds from the last keepalive ping to its echo; None before the first."""
        return self._keepalive.rtt

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
        if self.go_away_received:
            raise LocalProtocolError("the peer sent go away: no new streams")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted")
        self._next_id = stream_id + 2
        self._streams[stream_id] = stream = self._windows.new_stream(ours=True)
        # The SYN window update announces any window beyond the protocol's initial one.
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id,
                         stream.recv_window - INITIAL_WINDOW))
        return stream_id

    def send_data(self, stream_id: int, data) -> int:
        """Frame as much of `data` as the send credit allows; returns the bytes taken."""
        stream = self._streams.get(stream_id)
        if stream is None:  # a closed session has forgotten every stream
            raise LocalProtocolError("session is closed" if self.closed else f"stream {stream_id} is not open")
        if stream.local_closed:
            raise LocalProtocolError(f"stream {stream_id} already ended")
        if self._outbound.owed:
            self._ack(stream_id)
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
        if stream is None or stream.local_closed:
            return
        stream.local_closed = True
        if self._outbound.owed:
            self._ack(stream_id)
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0))
        if stream.remote_closed:
            self._drop(stream_id)

    def reset_stream(self, stream_id: int, code: int = RESET_PLAIN) -> None:
        """Abort the stream with RST (its window update carries `code`) and forget it;
        no-op if gone."""
        if not 0 <= code <= 0xFFFFFFFF:
            raise ValueError("reset code must fit in 32 bits")
        if stream_id not in self._streams:
            return
        self._drop(stream_id)
        self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, code))

    def _drop(self, stream_id: int) -> None:
        """Forget the stream; every stream leaves through here or close(), returning its growth."""
        self._windows.release((self._streams.pop(stream_id),))
        self._outbound.owed.pop(stream_id, None)  # an RST needs no ACK before it

    def _ack(self, stream_id: int) -> None:
        """Queue the ACK owed for a peer's stream, if it still is."""
        ack = self._outbound.owed.pop(stream_id, None)
        if ack is not None:
            self._reply(ack)

    def flush_acks(self) -> None:
        """Queue every ACK still owed (the timer does, so none waits past a tick)."""
        for stream_id in list(self._outbound.owed):
            self._ack(stream_id)

    def consumed(self, stream_id: int, n: int) -> None:
        """The application delivered `n` received bytes; returns credit per the window policy."""
        stream = self._streams.get(stream_id)
        if stream is None or n == 0:
            return
        if n < 0 or n > stream.buffered:
            raise LocalProtocolError(
                f"stream {stream_id}: consumed {n} bytes but only {stream.buffered} are buffered")
        delta = self._windows.consumed(stream, n)
        if delta:
            if self._outbound.owed:
                self._ack(stream_id)
            self._emit(_pack(VERSION, TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    def go_away(self, reason: int = 0) -> None:
        """Ask the peer to open no new streams; existing streams may finish.  Idempotent.

        As in HashiCorp's yamux, only the receiver of a go away stops opening
        streams: this side still may.  Unlike HashiCorp's, this side also still
        accepts the peer's SYNs: the peer sent them before it read the go away,
        and refusing them would fail work it started in good faith.
        """
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
        return self._keepalive.next_timer()

    def handle_timer(self, now: float) -> list[Event]:
        """Send a keepalive ping when due; report ConnectionDead (once) after idle_timeout."""
        if self.closed:
            return []
        if self._keepalive.dead(now):
            self.close()
            return [ConnectionDead()]
        self.flush_acks()
        value = self._keepalive.ping_due(now)
        if value is not None:
            self._emit(_pack(VERSION, TYPE_PING, FLAG_SYN, 0, value))
        return []

    def close(self) -> None:
        """The connection is over: forget every stream, returning its growth to the budget.

        Idempotent, and queues nothing (call go_away() first to say goodbye).
        A RemoteProtocolError or ConnectionDead has closed the session already.
        """
        self.closed = True
        self._outbound.owed.clear()
        streams, self._streams = self._streams, {}
        self._windows.release(streams.values())

    def _fail(self, reason: int) -> None:
        self._emit(_pack(VERSION, TYPE_GO_AWAY, 0, 0, reason))
        self.go_away_sent = True
        self.close()
