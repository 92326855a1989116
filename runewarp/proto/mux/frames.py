"""yamux (version 0) framing: a 12-byte big-endian header, then a payload for data frames only.

Compatible with HashiCorp's yamux (spec.md there).  The decoder keeps one
bytearray and a read offset, so a read containing many small frames is parsed
in linear time, and each data payload is copied exactly once, out of the
buffer, into the `bytes` handed to the application.
"""

import struct
from dataclasses import dataclass

from ...errors import RemoteProtocolError

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


class FrameDecoder:
    """Incremental decoder: `feed()` any split of the byte stream, then pull frames.

    Raises RemoteProtocolError for a bad version, an unknown type or a data
    payload over `max_payload`; the stream cannot be resynchronised after that.
    """

    __slots__ = ("max_payload", "_buf", "_pos")

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data) -> None:
        buf = self._buf
        if self._pos:
            # Dropping consumed bytes from the front of a bytearray only moves
            # its start pointer in CPython, so compacting here stays cheap.
            del buf[: self._pos]
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
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
