"""PROXY protocol codec (v2 both ways, v1 encode only).

Backends behind a tunnel see every connection coming from the agent; the
PROXY header is how they learn the real client address. This is the single
implementation used by every component, so encoder and decoder cannot drift.
The decoder is incremental like the other proto parsers: it never guesses
from a partial header and rejects a wrong prefix as early as possible.
"""

import ipaddress
from dataclasses import dataclass

from runewarp.errors import RemoteProtocolError

__all__ = [
    "MAX_HEADER",
    "SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "decode",
    "encode",
    "encode_v1",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_HEADER = 16 * 1024
"""Most bytes (fixed part included) a v2 header may occupy."""

VERSION = 0x2
CMD_LOCAL = 0x0
CMD_PROXY = 0x1

_FIXED = len(SIGNATURE) + 4

_AF_UNSPEC = 0x00
_FAMILIES: dict[int, tuple[int, str]] = {
    0x11: (4, "tcp"),
    0x12: (4, "udp"),
    0x21: (16, "tcp"),
    0x22: (16, "udp"),
}
"""family/transport byte -> (address size, protocol name)."""

_TRANSPORTS = {"tcp": 0x1, "udp": 0x2}

Address = tuple[str, int]


class ProxyHeaderError(RemoteProtocolError):
    """Bytes that are not a PROXY v2 header we accept."""


@dataclass(frozen=True)
class ProxyHeader:
    """A decoded header; addresses are None when there is none to report.

    That is the case for the LOCAL command (health checks from the proxy
    itself) and for the UNSPEC family: use the real connection endpoints.
    IPv6 addresses are returned as sent, so IPv4-mapped ones stay mapped.
    """

    source: Address | None
    destination: Address | None
    protocol: str = "tcp"


def encode(source: Address, destination: Address, protocol: str = "tcp") -> bytes:
    """A PROXY v2 header for a connection from `source` to `destination`.

    Mixed IPv4/IPv6 pairs are encoded as IPv6 with IPv4-mapped addresses,
    since the header has a single family.
    """
    transport = _TRANSPORTS.get(protocol)
    if transport is None:
        raise ValueError(f"protocol must be 'tcp' or 'udp', not {protocol!r}")
    (src, sport), (dst, dport) = _addresses(source, destination)
    family = (0x1 if src.version == 4 else 0x2) << 4 | transport
    block = src.packed + dst.packed + sport.to_bytes(2) + dport.to_bytes(2)
    return SIGNATURE + bytes([VERSION << 4 | CMD_PROXY, family]) + len(block).to_bytes(2) + block


def encode_v1(source: Address, destination: Address) -> bytes:
    """A PROXY v1 (text) header, for backends that only speak v1."""
    (src, sport), (dst, dport) = _addresses(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")


def decode(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Decode the v2 header at the start of `buf`.

    Returns (header, header length) once complete, None while `buf` is a
    proper prefix of a valid header, and raises ProxyHeaderError as soon as
    the available bytes cannot start a valid header. Bytes after the header
    belong to the stream and are not consumed.
    """
    view = memoryview(buf).cast("B")
    size = len(view)
    if view[: len(SIGNATURE)] != SIGNATURE[:size]:
        raise ProxyHeaderError("not a PROXY v2 header (bad signature)")
    if size <= len(SIGNATURE):
        return None

    version_command = view[12]
    if version_command >> 4 != VERSION:
        raise ProxyHeaderError(f"unsupported PROXY protocol version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (CMD_LOCAL, CMD_PROXY):
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    if size < 14:
        return None

    family = view[13]
    if family != _AF_UNSPEC and family not in _FAMILIES:
        raise ProxyHeaderError(f"unsupported address family 0x{family:02x}")
    if size < _FIXED:
        return None

    length = int.from_bytes(view[14:16])
    total = _FIXED + length
    if total > MAX_HEADER:
        raise ProxyHeaderError(f"header length {total} exceeds {MAX_HEADER}")
    addr_size, protocol = _FAMILIES.get(family, (0, "unspec"))
    size_needed = 2 * addr_size + 4 if addr_size else 0
    if length < size_needed:
        raise ProxyHeaderError(f"address block of {length} bytes is too short for family 0x{family:02x}")
    if size < total:
        return None

    if command == CMD_LOCAL or family == _AF_UNSPEC:
        return ProxyHeader(None, None, protocol), total
    block = bytes(view[_FIXED : _FIXED + size_needed])
    make = ipaddress.IPv4Address if addr_size == 4 else ipaddress.IPv6Address
    src = make(block[:addr_size])
    dst = make(block[addr_size : 2 * addr_size])
    ports = block[2 * addr_size :]
    header = ProxyHeader(
        (_text(src), int.from_bytes(ports[:2])),
        (_text(dst), int.from_bytes(ports[2:])),
        protocol,
    )
    return header, total


def _addresses(
    source: Address, destination: Address
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]:
    """Parse and port-check both endpoints, lifting a mixed pair to IPv6."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    return (src, _port(source[1])), (dst, _port(destination[1]))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address, dropping any IPv6 zone: it means nothing to the peer."""
    return ipaddress.ip_address(ipaddress.ip_address(text).packed)


def _text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Canonical text, with IPv4-mapped addresses as ::ffff:a.b.c.d on every Python version."""
    mapped = getattr(addr, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


def _as_ipv6(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if addr.version == 6:
        return addr
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + addr.packed)


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    return port
