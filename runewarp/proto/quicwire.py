"""QUIC wire primitives for the Server's Initial reader: variable-length integers, the
long header (RFC 8999 invariants, RFC 9000 §17.2, RFC 9369 §3.2) and the drop error.

Only what a client's first datagrams carry is parsed; `runewarp.proto.quic` is the
import surface.
"""

from dataclasses import dataclass

from runewarp.errors import RemoteProtocolError

VERSION_1 = 0x00000001
VERSION_2 = 0x6B3343CF
VERSIONS = (VERSION_1, VERSION_2)

MAX_CID = 20
"""Longest connection ID QUIC v1 and v2 allow (RFC 9000 §17.2)."""

MIN_INITIAL_DATAGRAM = 1200
"""A server discards a client Initial in a smaller UDP payload (RFC 9000 §14.1)."""

MAX_VARINT = (1 << 62) - 1

# Long-header packet type bits (0x30 of the first byte): v2 permutes them (RFC 9369 §3.2).
TYPE_INITIAL = {VERSION_1: 0b00, VERSION_2: 0b01}
TYPE_RETRY = {VERSION_1: 0b11, VERSION_2: 0b00}

_SAMPLE = 16
_PN_MAX = 4

REASONS = frozenset({"short-header", "unsupported-version", "not-initial", "undecryptable",
                     "malformed", "too-large", "too-many-packets", "not-client-hello"})


class QuicDropped(RemoteProtocolError):
    """A datagram the Initial reader refuses.

    `reason` is a stable token for logs and metrics (REASONS).  `fatal`: the pending
    flow is finished (what was decrypted proves it can never route); otherwise only
    this datagram is dropped and the reader is unchanged, so a spoofed or corrupted
    datagram cannot poison a pending flow.
    """

    def __init__(self, reason: str, detail: str | None = None, *, fatal: bool = False):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.fatal = fatal


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the variable-length integer at `pos` (RFC 9000 §16)."""
    if pos >= len(buf):
        raise QuicDropped("malformed", "truncated variable-length integer")
    size = 1 << (buf[pos] >> 6)
    end = pos + size
    if end > len(buf):
        raise QuicDropped("malformed", "truncated variable-length integer")
    return int.from_bytes(buf[pos:end]) & ((1 << (8 * size - 2)) - 1), end


def encode_varint(value: int, size: int | None = None) -> bytes:
    """`value` as a variable-length integer: the shortest form, or `size` bytes."""
    if size is None:
        size = 1 if value < 1 << 6 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8
    if size not in (1, 2, 4, 8) or not 0 <= value < 1 << (8 * size - 2):
        raise ValueError(f"{value} does not fit a {size}-byte varint")
    return (value | (size.bit_length() - 1) << (8 * size - 2)).to_bytes(size)


@dataclass(frozen=True)
class LongHeader:
    """The invariant fields of a long-header packet; `initial` for a v1/v2 Initial."""

    version: int
    dcid: bytes
    scid: bytes
    initial: bool


@dataclass(frozen=True)
class Packet:
    """One long-header packet of a known version, located in its datagram.

    `kind` is the type bits; `pn_offset` is where the protected packet number starts
    and `end` where the packet ends (the next coalesced packet may start there).
    """

    start: int
    version: int
    dcid: bytes
    scid: bytes
    kind: int
    pn_offset: int
    end: int

    @property
    def initial(self) -> bool:
        return self.kind == TYPE_INITIAL[self.version]


def _invariant(buf: bytes, pos: int) -> tuple[int, bytes, bytes, int]:
    """(version, dcid, scid, position after scid) of the long header at `pos`."""
    if pos + 6 > len(buf):
        raise QuicDropped("malformed", "truncated long header")
    version = int.from_bytes(buf[pos + 1 : pos + 5])
    limit = MAX_CID if version in VERSIONS else 255
    at = pos + 5
    cids = []
    for what in ("destination", "source"):
        if at >= len(buf):
            raise QuicDropped("malformed", "truncated long header")
        size = buf[at]
        if size > limit:
            raise QuicDropped("malformed", f"{what} connection ID of {size} bytes")
        if at + 1 + size > len(buf):
            raise QuicDropped("malformed", f"truncated {what} connection ID")
        cids.append(bytes(buf[at + 1 : at + 1 + size]))
        at += 1 + size
    return version, cids[0], cids[1], at


def first_header(datagram: bytes) -> LongHeader | None:
    """The first packet's invariant header, without crypto; None for a short header.

    Raises QuicDropped("malformed") when the header is truncated or a connection ID
    is longer than its version allows.
    """
    if not datagram:
        raise QuicDropped("malformed", "empty datagram")
    if not datagram[0] & 0x80:
        return None
    version, dcid, scid, _ = _invariant(datagram, 0)
    kind = (datagram[0] >> 4) & 0b11
    return LongHeader(version, dcid, scid, version in VERSIONS and kind == TYPE_INITIAL[version])


def parse_packet(buf: bytes, pos: int) -> Packet:
    """The long-header packet of QUIC v1 or v2 starting at `pos` (header protection on).

    Raises QuicDropped: "short-header", "unsupported-version" (Version Negotiation
    included) or "malformed" (truncated, a length past the datagram, no room for the
    header-protection sample, a Retry: a client never sends one).
    """
    if pos >= len(buf):
        raise QuicDropped("malformed", "no packet")
    if not buf[pos] & 0x80:
        raise QuicDropped("short-header")
    version, dcid, scid, at = _invariant(buf, pos)
    if version not in VERSIONS:
        raise QuicDropped("unsupported-version", f"version 0x{version:08x}")
    kind = (buf[pos] >> 4) & 0b11
    if kind == TYPE_RETRY[version]:
        raise QuicDropped("malformed", "a Retry packet from a client")
    if kind == TYPE_INITIAL[version]:
        token_length, at = read_varint(buf, at)
        at += token_length
    length, at = read_varint(buf, at)
    end = at + length
    if end > len(buf):
        raise QuicDropped("malformed", f"packet length {length} past the datagram")
    if length < _PN_MAX + _SAMPLE:
        raise QuicDropped("malformed", f"packet length {length} leaves no header-protection sample")
    return Packet(pos, version, dcid, scid, kind, at, end)
