"""The peer's side of a yamux session: parsing received frames into events.

`PeerFrames` is the input half of `Session` (session.py), kept apart so each half reads
on its own: it relies on the session's stream table, windows, decoder, outbound queue
and keepalive, and on `_drop`, `_reply`, `_fail` and `flush_acks`.
"""

from ...errors import RemoteProtocolError
from .events import (DataReceived, Event, GoAwayReceived, PingAcknowledged, StreamAcknowledged,
                     StreamEnded, StreamOpened, StreamReset, WindowUpdated)
from .frames import (FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, GOAWAY_PROTOCOL_ERROR, HEADER,
                     INITIAL_WINDOW, RESET_PLAIN, TYPE_DATA, TYPE_PING, TYPE_WINDOW_UPDATE, VERSION)
from .window import StreamState

_pack = HEADER.pack

MAX_OWED_ACKS = 128
"""ACKs of peer streams held back at most (HashiCorp yamux's accept backlog is 256)."""


def _overrun(stream_id: int, length: int, credit: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"stream {stream_id}: {length} bytes exceed the {credit}-byte receive window")


class PeerFrames:
    """Turn the peer's bytes into events (the input half of Session)."""

    def receive_data(self, data, now: float, on_frame=None) -> list[Event]:
        """Parse every complete frame in `data` plus earlier leftovers.

        On a protocol violation a go away (protocol error; internal error for
        a peer that does not read its replies) is queued, the session is
        closed and RemoteProtocolError propagates.  Data arriving after the
        session closed is ignored.  `on_frame(type, flags, stream_id, length)`,
        when given (trace logging), sees each frame's header before it is handled.
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
                self._keepalive.last_received = now
            while frame is not None:
                type_, flags, stream_id, length, payload = frame
                if on_frame is not None:
                    on_frame(type_, flags, stream_id, length)
                if type_ <= TYPE_WINDOW_UPDATE:
                    self._stream_frame(type_, flags, stream_id, length, payload, events)
                elif type_ == TYPE_PING:
                    self._ping_frame(flags, stream_id, length, events, now)
                else:
                    if stream_id:
                        raise RemoteProtocolError(f"go away on stream {stream_id}")
                    self.go_away_received = True
                    events.append(GoAwayReceived(length))
                frame = next_raw()
            pending = decoder.pending_data_header()
            if pending is not None:
                self._data_header(*pending)
        except RemoteProtocolError:
            if not self.closed:
                self._fail(GOAWAY_PROTOCOL_ERROR)
            raise
        return events

    def _data_header(self, flags: int, stream_id: int, length: int) -> None:
        """Judge the data frame whose payload is still arriving by its header alone.

        An overrun fails now, not after up to MAX_PAYLOAD bytes were buffered;
        late data for a stream that is gone (legitimate after a reset) is
        answered at once and its payload skipped as it arrives.
        """
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            credit = self.initial_window  # at most; checked exactly once the frame is complete
        elif stream is None:
            self._decoder.discard_payload()
            self._stray(TYPE_DATA, flags, stream_id)
            return
        elif stream.remote_closed:
            raise RemoteProtocolError(f"stream {stream_id}: data after FIN")
        else:
            credit = stream.recv_credit
        if length > credit:
            raise _overrun(stream_id, length, credit)

    def _stray(self, type_: int, flags: int, stream_id: int) -> None:
        """A frame for a stream we reset or that finished: tell a sender still pushing data."""
        if type_ == TYPE_DATA and stream_id and not flags & FLAG_RST:
            self._reply(_pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))

    def _ping_frame(self, flags: int, stream_id: int, value: int, events: list, now: float) -> None:
        if stream_id:
            raise RemoteProtocolError(f"ping on stream {stream_id}")
        if flags & FLAG_SYN:
            self._reply(_pack(VERSION, TYPE_PING, FLAG_ACK, 0, value))
        elif flags & FLAG_ACK:
            self._keepalive.echoed(value, now)
            events.append(PingAcknowledged(value))

    def _stream_frame(self, type_: int, flags: int, stream_id: int, length: int,
                      payload: bytes, events: list) -> None:
        stream = self._streams.get(stream_id)
        if flags & FLAG_SYN:
            stream = self._accept(stream, stream_id, events)
        elif stream is None:
            self._stray(type_, flags, stream_id)
            return
        if flags & FLAG_ACK and stream.ours and not stream.acked:
            stream.acked = True
            events.append(StreamAcknowledged(stream_id))
        if type_ == TYPE_DATA:
            if length:
                if stream.remote_closed:
                    raise RemoteProtocolError(f"stream {stream_id}: data after FIN")
                if length > stream.recv_credit:
                    raise _overrun(stream_id, length, stream.recv_credit)
                stream.recv_credit -= length
                stream.buffered += length
                events.append(DataReceived(stream_id, payload))
        elif length and not flags & FLAG_RST:  # an RST window update's length is its code
            stream.send_credit += length
            if not stream.local_closed:
                events.append(WindowUpdated(stream_id, stream.send_credit))
        if flags & FLAG_RST:
            self._drop(stream_id)
            events.append(StreamReset(stream_id, RESET_PLAIN if type_ == TYPE_DATA else length))
        elif flags & FLAG_FIN and not stream.remote_closed:
            stream.remote_closed = True
            self._windows.peer_finished(stream)
            events.append(StreamEnded(stream_id))
            if stream.local_closed:
                self._drop(stream_id)

    def _accept(self, existing: StreamState | None, stream_id: int, events: list) -> StreamState:
        """Validate a SYN and create the stream, ACKing it at once (after our go away too)."""
        if existing is not None:
            raise RemoteProtocolError(f"duplicate SYN for stream {stream_id}")
        if stream_id == 0 or stream_id & 1 != self._peer_parity:
            raise RemoteProtocolError(f"SYN with stream id {stream_id} of the wrong parity")
        if stream_id <= self._last_peer_id:
            raise RemoteProtocolError(
                f"SYN for stream {stream_id} after stream {self._last_peer_id}")
        self._last_peer_id = stream_id
        self._streams[stream_id] = stream = self._windows.new_stream(ours=False)
        # The ACK (with any window beyond the initial one) waits for our first frame on the
        # stream, to leave in the same write: alone, it costs each proxied connection a Tunnel
        # write (TLS record, send, the peer's wake-up).  handle_timer sends those still owed,
        # and MAX_OWED_ACKS at once (HashiCorp's opener bounds unacknowledged streams).
        owed = self._outbound.owed
        owed[stream_id] = _pack(VERSION, TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id,
                                stream.recv_window - INITIAL_WINDOW)
        if len(owed) >= MAX_OWED_ACKS:
            self.flush_acks()
        events.append(StreamOpened(stream_id))
        return stream
