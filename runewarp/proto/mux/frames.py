"""yamux (version 0) framing: a 12-byte big-endian header, then a payload for data frames only.

Compatible with HashiCorp's yamux (spec.md there).  The decoder keeps one
bytearray and a read offset, so a read containing many small frames is parsed
in linear time, and each data payload is copied exactly once, out of the
buffer, into the `bytes` handed to the application.

A data frame can be judged from its header alone: `pending_data_header()`
shows the header of a frame whose payload is still arriving, so the session
rejects an overrun before buffering up to MAX_PAYLOAD bytes, and
`discard_payload()` drops a payload it does not want as it arrives (a skip
counter), without ever buffering it.
"""

import struct
from dataclasses import dataclass

from ...errors import LocalProtocolError, RemoteProtocolError

VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GOAWAY_NORMAL = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# The length of an RST window update: a reset code (the libp2p yamux extension's use of
# it; HashiCorp's yamux sends 0 and adds whatever arrives to a send window it then drops).
RESET_PLAIN = 0
RESET_BEFORE_BACKEND = 1  # nothing reached a Local backend: the Server may place it again

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size

# Every stream direction starts with this much credit; fixed by the protocol,
# larger windows are announced with window updates.
INITIAL_WINDOW = 256 * 1024
# Largest data payload accepted by default.  HashiCorp sends whole windows in
# one frame, so this must cover the biggest window we ever advertise.
MAX_PAYLOAD = 16 * 1024 * 1024

MAX_STREAM_ID = 0xFFFFFFFF

_HEADER_UNPACK_FROM = HEADER.unpack_from


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.  `payload` is non-empty only for data frames."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(VERSION, self.type, self.flags, self.stream_id, self.length) + self.payload


def encode_header(type: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(VERSION, type, flags, stream_id, length)


TYPE_NAMES = {TYPE_DATA: "data", TYPE_WINDOW_UPDATE: "window-update", TYPE_PING: "ping",
              TYPE_GO_AWAY: "go-away"}
_FLAG_NAMES = ((FLAG_SYN, "SYN"), (FLAG_ACK, "ACK"), (FLAG_FIN, "FIN"), (FLAG_RST, "RST"))


def describe_header(type_: int, flags: int, stream_id: int, length: int) -> dict:
    """A frame header as log fields (trace level): never any payload byte."""
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    if flags & ~0xF:
        names.append(f"0x{flags & ~0xF:x}")
    return {"type": TYPE_NAMES.get(type_, str(type_)), "flags": "|".join(names) or "-",
            "stream": stream_id, "length": length}


def frame_headers(data):
    """`(type, flags, stream_id, length)` of each frame in `data`, which holds whole frames
    (what Session.data_to_send() returns); a trailing partial header is ignored."""
    pos, end = 0, len(data)
    while end - pos >= HEADER_SIZE:
        _, type_, flags, stream_id, length = _HEADER_UNPACK_FROM(data, pos)
        yield type_, flags, stream_id, length
        pos += HEADER_SIZE + (length if type_ == TYPE_DATA else 0)


class FrameDecoder:
    """Incremental decoder: `feed()` any split of the byte stream, then pull frames.

    Raises RemoteProtocolError for a bad version, an unknown type or a data
    payload over `max_payload`; the stream cannot be resynchronised after that.
    """

    __slots__ = ("max_payload", "_buf", "_pos", "_skip")

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0  # bytes of a discarded payload still to come

    def feed(self, data) -> None:
        if self._skip:
            data = self._after_skip(data)
        buf = self._buf
        if self._pos:
            # Dropping consumed bytes from the front of a bytearray only moves
            # its start pointer in CPython, so compacting here stays cheap.
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def _after_skip(self, data):
        """Drop what a discarded payload still owes from `data`; returns the rest."""
        skip = self._skip
        if len(data) <= skip:
            self._skip = skip - len(data)
            return b""
        self._skip = 0
        with memoryview(data) as view:  # released at once: the caller may reuse its buffer
            return view[skip:].tobytes()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a skipped payload is never buffered)."""
        return len(self._buf) - self._pos

    def next_raw(self):
        """Next frame as a `(type, flags, stream_id, length, payload)` tuple, or None.

        The tuple form spares the session a dataclass per frame on the data path.
        """
        buf = self._buf
        pos = self._pos
        body = pos + HEADER_SIZE
        if len(buf) < body:
            return None
        version, type_, flags, stream_id, length = _HEADER_UNPACK_FROM(buf, pos)
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported mux version {version}")
        if type_ == TYPE_DATA:
            if length > self.max_payload:
                raise RemoteProtocolError(
                    f"data frame of {length} bytes exceeds the {self.max_payload}-byte limit")
            end = body + length
            if len(buf) < end:
                return None
            if length:
                with memoryview(buf) as view:
                    payload = view[body:end].tobytes()
            else:
                payload = b""
            self._pos = end
            return type_, flags, stream_id, length, payload
        if type_ > TYPE_GO_AWAY:
            raise RemoteProtocolError(f"unknown mux frame type {type_}")
        self._pos = body
        return type_, flags, stream_id, length, b""

    def pending_data_header(self):
        """`(flags, stream_id, length)` of the data frame at the front, or None.

        Once `next_raw()` returned None, that is the frame whose payload is
        still arriving: its header can be judged before the payload is buffered.
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        _, type_, flags, stream_id, length = _HEADER_UNPACK_FROM(buf, pos)
        if type_ != TYPE_DATA:
            return None
        return flags, stream_id, length

    def discard_payload(self) -> None:
        """Drop the pending data frame: its header, the payload so far, and the rest as it comes."""
        buf = self._buf
        pos = self._pos
        pending = self.pending_data_header()
        have = len(buf) - pos - HEADER_SIZE
        if pending is None or have >= pending[2]:
            raise LocalProtocolError("no data frame payload is pending")
        # The payload is incomplete, so the buffer ends inside it: nothing after it to keep.
        self._skip = pending[2] - have
        del buf[:]
        self._pos = 0

    def next_frame(self) -> Frame | None:
        raw = self.next_raw()
        return None if raw is None else Frame(*raw)

    def __iter__(self):
        return self

    def __next__(self) -> Frame:
        raw = self.next_raw()
        if raw is None:
            raise StopIteration
        return Frame(*raw)
