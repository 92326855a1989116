"""The frames of a client Initial and the reassembly of its CRYPTO stream.

A ClientHello with large post-quantum key shares spans several Initial packets, whose
CRYPTO frames may arrive out of order, overlap, or repeat (retransmissions).  The
stream is held in one buffer of at most `limit` bytes with a sorted list of the
ranges held; each frame is compared with what is held where they overlap (a
different byte is an attack or a broken client: "malformed") and merged, so the
work is linear in the bytes received however the peer slices them.
"""

import re
from bisect import bisect_left

from runewarp.proto.quicwire import MAX_VARINT, QuicDropped, read_varint

HANDSHAKE_CLIENT_HELLO = 1
_HANDSHAKE_HEADER = 4

FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

_NOT_PADDING = re.compile(rb"[^\x00]")


def _fatal(detail: str) -> QuicDropped:
    return QuicDropped("malformed", detail, fatal=True)


class CryptoStream:
    """The Initial CRYPTO stream, reassembled up to the end of the ClientHello.

    add() raises fatal QuicDropped: "not-client-hello" when the first byte is another
    handshake type, "too-large" when the message cannot fit `limit` bytes,
    "malformed" for data that contradicts what is held or goes past the message.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.total: int | None = None  # handshake message length, header included
        self._buffer = bytearray()
        self._starts: list[int] = []  # held ranges [start, end), disjoint, not touching
        self._ends: list[int] = []

    def add(self, offset: int, data: bytes) -> None:
        if not data:
            return
        end = offset + len(data)
        if end > MAX_VARINT:
            raise _fatal("CRYPTO frame past 2^62")
        if self.total is not None and end > self.total:
            raise _fatal("CRYPTO data past the end of the ClientHello")
        if end > self.limit:
            raise QuicDropped("too-large", f"CRYPTO data up to byte {end}", fatal=True)
        starts, ends, buffer = self._starts, self._ends, self._buffer
        first = bisect_left(ends, offset)
        last = first
        while last < len(starts) and starts[last] <= end:
            low, high = max(starts[last], offset), min(ends[last], end)
            if low < high and buffer[low:high] != data[low - offset : high - offset]:
                raise _fatal("overlapping CRYPTO data differs")
            last += 1
        if len(buffer) < end:
            buffer.extend(bytes(end - len(buffer)))
        buffer[offset:end] = data
        if first < last:
            offset, end = min(offset, starts[first]), max(end, ends[last - 1])
        starts[first:last] = [offset]
        ends[first:last] = [end]
        if self.total is None and starts[0] == 0:
            self._check_header()

    def _check_header(self) -> None:
        if self._buffer[0] != HANDSHAKE_CLIENT_HELLO:
            raise QuicDropped("not-client-hello", f"handshake type {self._buffer[0]}", fatal=True)
        if self._ends[0] < _HANDSHAKE_HEADER:
            return
        total = _HANDSHAKE_HEADER + int.from_bytes(self._buffer[1:_HANDSHAKE_HEADER])
        if total > self.limit:
            raise QuicDropped("too-large", f"ClientHello of {total} bytes", fatal=True)
        if self._ends[-1] > total:
            raise _fatal("CRYPTO data past the end of the ClientHello")
        self.total = total

    def message(self) -> bytes | None:
        """The whole handshake message once every byte of it is held."""
        if self.total is None or self._ends[0] < self.total:
            return None
        return bytes(self._buffer[: self.total])


def read_frames(payload: bytes, crypto: CryptoStream) -> None:
    """Apply the frames of one decrypted Initial: CRYPTO data to `crypto`, the rest
    checked and skipped.  Any frame type a client Initial may not carry (RFC 9000
    §12.4: only PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE of type 0x1c) or a
    truncated frame raises a fatal QuicDropped("malformed")."""
    pos, size = 0, len(payload)
    try:
        while pos < size:
            kind = payload[pos]
            if kind == FRAME_PADDING:
                found = _NOT_PADDING.search(payload, pos)
                pos = found.start() if found else size
                continue
            pos += 1
            if kind == FRAME_CRYPTO:
                offset, pos = read_varint(payload, pos)
                length, pos = read_varint(payload, pos)
                if pos + length > size:
                    raise _fatal("CRYPTO frame past the packet")
                crypto.add(offset, payload[pos : pos + length])
                pos += length
            elif kind in (FRAME_ACK, FRAME_ACK_ECN):
                pos = _skip_ack(payload, pos, kind == FRAME_ACK_ECN)
            elif kind == FRAME_CONNECTION_CLOSE:
                for _ in range(2):  # error code, frame type
                    _, pos = read_varint(payload, pos)
                length, pos = read_varint(payload, pos)
                pos += length
                if pos > size:
                    raise _fatal("CONNECTION_CLOSE reason past the packet")
            elif kind != FRAME_PING:
                raise _fatal(f"frame type 0x{kind:02x} in an Initial")
    except QuicDropped as exc:
        if exc.fatal:
            raise
        raise _fatal(exc.detail or exc.reason) from None


def _skip_ack(payload: bytes, pos: int, ecn: bool) -> int:
    """Position after an ACK frame body (RFC 9000 §19.3); every field is a varint, so
    a huge range count only runs until the packet's bytes run out."""
    for _ in range(2):  # largest acknowledged, ack delay
        _, pos = read_varint(payload, pos)
    ranges, pos = read_varint(payload, pos)
    _, pos = read_varint(payload, pos)  # first ack range
    fields = 2 * ranges + (3 if ecn else 0)
    if fields > len(payload) - pos:
        raise _fatal(f"ACK frame with {ranges} ranges past the packet")
    for _ in range(fields):
        _, pos = read_varint(payload, pos)
    return pos
