"""Events returned by `Session.receive_data()` and `Session.handle_timer()`."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every mux event."""


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer opened a stream (its SYN arrived; our ACK is already queued)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamAcknowledged(Event):
    """The peer ACKed a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Payload for a stream; report it with `Session.consumed()` once delivered."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer sent FIN: it will send no more data on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The peer sent RST: the stream is gone in both directions.  `code` is the reset
    code an RST window update carries (RESET_PLAIN from a peer that sends none)."""

    stream_id: int
    code: int = 0


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """Our send credit on the stream grew; `credit` is the new total, not the increment."""

    stream_id: int
    credit: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged(Event):
    """The peer echoed a ping (ours or a keepalive) carrying `value`."""

    value: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer accepts no new streams; existing ones may finish."""

    reason: int


@dataclass(frozen=True, slots=True)
class ConnectionDead(Event):
    """No frame arrived for `idle_timeout` seconds; the transport should be dropped."""
