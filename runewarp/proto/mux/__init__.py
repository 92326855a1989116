"""yamux-compatible stream multiplexer, sans-I/O."""

from .budget import WindowBudget
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
    GOAWAY_INTERNAL_ERROR,
    GOAWAY_NORMAL,
    GOAWAY_PROTOCOL_ERROR,
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    RESET_BEFORE_BACKEND,
    RESET_PLAIN,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_NAMES,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    VERSION,
    Frame,
    FrameDecoder,
    describe_header,
    encode_header,
    frame_headers,
)
from .session import Role, Session

__all__ = [
    "ConnectionDead", "DataReceived", "Event", "GoAwayReceived", "PingAcknowledged",
    "StreamAcknowledged", "StreamEnded", "StreamOpened", "StreamReset", "WindowUpdated",
    "FLAG_ACK", "FLAG_FIN", "FLAG_RST", "FLAG_SYN",
    "GOAWAY_INTERNAL_ERROR", "GOAWAY_NORMAL", "GOAWAY_PROTOCOL_ERROR",
    "HEADER", "HEADER_SIZE", "INITIAL_WINDOW", "MAX_PAYLOAD", "RESET_BEFORE_BACKEND", "RESET_PLAIN",
    "TYPE_DATA", "TYPE_GO_AWAY", "TYPE_NAMES", "TYPE_PING", "TYPE_WINDOW_UPDATE", "VERSION",
    "Frame", "FrameDecoder", "describe_header", "encode_header", "frame_headers",
    "Role", "Session", "WindowBudget",
]
