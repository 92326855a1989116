"""PROXY protocol codec: v2 and v1 (the text line) both ways, v2 with TLVs.

Backends behind a tunnel see every connection coming from the agent; the
PROXY header is how they learn the real client address.  Two headers use it:
the Server's v2 header on each stream to the Client (addresses, and the routed
Public hostname as PP2_TYPE_AUTHORITY so a passthrough Client need not parse the
ClientHello again: `routed_hostname`), and the
one the Client writes to a Local backend with `proxy-protocol` (v1 or v2, with
TLVs), built fresh by `backend_header` from the parsed addresses: nothing of the
Server's header is ever forwarded as is.  This is the single implementation,
so encoder and decoder cannot drift; the file keeps its name for the v2 it
started with.  The decoder is incremental like the other proto parsers: it
never guesses from a partial header and rejects a wrong prefix as early as
possible.  proto/proxyheader.py reads either version off a connection from a
trusted load balancer with these decoders.
"""

import ipaddress
from dataclasses import dataclass

from runewarp.errors import RemoteProtocolError
from runewarp.proto.hostname import HostnameError, normalize

__all__ = [
    "MAX_HEADER",
    "SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "VisitorTLS",
    "backend_header",
    "decode",
    "decode_v1",
    "encode",
    "encode_v1",
    "routed_hostname",
    "ssl_tlv",
    "tlv",
    "tlvs",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_HEADER = 16 * 1024
"""Most bytes (fixed part included) a v2 header may occupy."""
V1_PREFIX = b"PROXY "
V1_MAX = 107
"""Most bytes of a v1 line, CRLF included: the spec's bound (TCP6 needs 104; UNKNOWN may pad)."""

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

# TLV types and the PP2_TYPE_SSL fields (haproxy's proxy-protocol.txt, section 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
"""The Visitor's connection used TLS."""
PP2_CLIENT_CERT_CONN = 0x02
"""The Visitor presented a client certificate on this connection (a Service with visitor-ca-file)."""

Address = tuple[str, int]


class ProxyHeaderError(RemoteProtocolError):
    """Bytes that are not a PROXY v2 header we accept."""


@dataclass(frozen=True)
class ProxyHeader:
    """A decoded header; addresses are None when there is none to report.

    That is the case for the LOCAL command (health checks from the proxy
    itself) and for the UNSPEC family: use the real connection endpoints.
    IPv6 addresses are returned as sent, so IPv4-mapped ones stay mapped.
    `tlvs` is the raw TLV vector after the address block, parsed only on demand
    (`tlvs()`, `routed_hostname()`): most receivers never look at it.
    """

    source: Address | None
    destination: Address | None
    protocol: str = "tcp"
    local: bool = False  # the LOCAL command: the proxy's own connection (a health check)
    tlvs: bytes = b""


@dataclass(frozen=True)
class VisitorTLS:
    """What the Client's TLS handshake with a Visitor settled (terminate mode)."""

    version: str
    cipher: str
    alpn: bytes = b""
    client_certificate: bool = False  # presented and verified (the handshake refuses any other)
    client_cn: str | None = None  # the subject CN of that certificate, if it has one


def encode(source: Address | None, destination: Address | None, protocol: str = "tcp",
           tlvs: bytes = b"", authority: str | None = None) -> bytes:
    """A PROXY v2 header for a connection from `source` to `destination`, then
    PP2_TYPE_AUTHORITY with `authority` (when given), then `tlvs`.

    Mixed IPv4/IPv6 pairs are encoded as IPv6 with IPv4-mapped addresses,
    since the header has a single family.  Without addresses (None) the family
    is UNSPEC: the receiver keeps the connection's own endpoints.
    """
    transport = _TRANSPORTS.get(protocol)
    if transport is None:
        raise ValueError(f"protocol must be 'tcp' or 'udp', not {protocol!r}")
    if authority is not None:
        tlvs = tlv(PP2_TYPE_AUTHORITY, authority.encode("ascii")) + tlvs
    if source is None or destination is None:
        family, block = _AF_UNSPEC, b""
    else:
        (src, sport), (dst, dport) = _addresses(source, destination)
        family = (0x1 if src.version == 4 else 0x2) << 4 | transport
        block = src.packed + dst.packed + sport.to_bytes(2) + dport.to_bytes(2)
    block += tlvs
    if _FIXED + len(block) > MAX_HEADER:
        raise ValueError(f"header of {_FIXED + len(block)} bytes exceeds {MAX_HEADER}")
    return SIGNATURE + bytes([VERSION << 4 | CMD_PROXY, family]) + len(block).to_bytes(2) + block


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A PROXY v1 (text) header, for backends that only speak v1; UNKNOWN without addresses."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    (src, sport), (dst, dport) = _addresses(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {_text(src)} {_text(dst)} {sport} {dport}\r\n".encode("ascii")


def tlv(kind: int, value: bytes) -> bytes:
    """One type-length-value entry (also the form of a PP2_TYPE_SSL sub-TLV)."""
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{kind:02x} value of {len(value)} bytes exceeds 65535")
    return bytes([kind]) + len(value).to_bytes(2) + value


def ssl_tlv(tls: VisitorTLS) -> bytes:
    """PP2_TYPE_SSL: client bitfield (PP2_CLIENT_SSL, plus PP2_CLIENT_CERT_CONN with a
    client certificate), verify (0: no certificate was asked for, as haproxy sends it, or
    the one presented was verified), then the version, CN (with a certificate that has
    one) and cipher sub-TLVs, in the order of their types."""
    client = PP2_CLIENT_SSL | (PP2_CLIENT_CERT_CONN if tls.client_certificate else 0)
    cn = b"" if tls.client_cn is None else tlv(PP2_SUBTYPE_SSL_CN, tls.client_cn.encode("utf-8"))
    return tlv(PP2_TYPE_SSL, bytes([client]) + (0).to_bytes(4)
               + tlv(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii"))
               + cn
               + tlv(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii")))


def backend_header(version: str, received: ProxyHeader, authority: str,
                   tls: VisitorTLS | None = None) -> bytes:
    """The header the Client writes to a Local backend: "v1" or "v2".

    Built from the addresses of the Server's header (`received`), never from
    its bytes.  A pair of IPv4-mapped addresses (a dual-stack public listener)
    goes out as plain IPv4, the form backends log.  v2 carries the SNI as
    PP2_TYPE_AUTHORITY and, after a terminated handshake, PP2_TYPE_ALPN (when
    one was negotiated) and PP2_TYPE_SSL.
    """
    source, destination = _unmapped(received.source, received.destination)
    if version == "v1":
        return encode_v1(source, destination)
    extra = b""
    if tls is not None and tls.alpn:
        extra += tlv(PP2_TYPE_ALPN, tls.alpn)
    extra += tlv(PP2_TYPE_AUTHORITY, authority.encode("ascii"))
    if tls is not None:
        extra += ssl_tlv(tls)
    return encode(source, destination, tlvs=extra)


def local_header(version: str) -> bytes:
    """A header for a connection the Client makes on its own behalf (`runewarp doctor`'s
    probe), not for a Visitor: v1 `PROXY UNKNOWN`, v2 the LOCAL command without
    addresses.  The backend keeps the connection's own endpoints."""
    if version == "v1":
        return encode_v1(None, None)
    return SIGNATURE + bytes([VERSION << 4 | CMD_LOCAL, _AF_UNSPEC]) + bytes(2)


def tlvs(data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
    """The (type, value) entries of a TLV vector: what follows the address block of a
    header, or the sub-TLVs of PP2_TYPE_SSL after its first five bytes."""
    view = memoryview(data).cast("B")
    entries, offset = [], 0
    while offset < len(view):
        if len(view) - offset < 3:
            raise ProxyHeaderError("truncated TLV")
        size = int.from_bytes(view[offset + 1 : offset + 3])
        end = offset + 3 + size
        if end > len(view):
            raise ProxyHeaderError(f"TLV 0x{view[offset]:02x} runs past the header")
        entries.append((view[offset], bytes(view[offset + 3 : end])))
        offset = end
    return entries


def routed_hostname(header: ProxyHeader) -> str | None:
    """The Public hostname the Server routed on (its PP2_TYPE_AUTHORITY), normalized;
    None when the header has none (an older Server: the Client reads the ClientHello).

    The value passes the one hostname rule (proto/hostname.py) or the header is refused
    (ProxyHeaderError), like a malformed TLV vector: a Client never routes on a name
    its own ClientHello intake would have refused.
    """
    if not header.tlvs:
        return None
    for kind, value in tlvs(header.tlvs):
        if kind == PP2_TYPE_AUTHORITY:
            try:
                return normalize(value.decode("ascii"))
            except (UnicodeDecodeError, HostnameError):
                raise ProxyHeaderError("PP2_TYPE_AUTHORITY is not a valid hostname") from None
    return None


_DOTTED = "%d.%d.%d.%d"


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

    extra = bytes(view[_FIXED + size_needed : total])
    if command == CMD_LOCAL or family == _AF_UNSPEC:
        return ProxyHeader(None, None, protocol, local=command == CMD_LOCAL, tlvs=extra), total
    block = bytes(view[_FIXED : _FIXED + size_needed])
    if addr_size == 4:  # dotted quads without ipaddress objects: every stream decodes one
        src_text, dst_text = _DOTTED % tuple(block[:4]), _DOTTED % tuple(block[4:8])
    else:
        src_text = _text(ipaddress.IPv6Address(block[:16]))
        dst_text = _text(ipaddress.IPv6Address(block[16:32]))
    ports = block[2 * addr_size :]
    header = ProxyHeader(
        (src_text, int.from_bytes(ports[:2])),
        (dst_text, int.from_bytes(ports[2:])),
        protocol,
        tlvs=extra,
    )
    return header, total


def decode_v1(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """Decode the v1 line at the start of `buf`, like `decode`: (header, length), None
    while more is needed, ProxyHeaderError as soon as the bytes cannot be a valid line.

    Strict, as the spec asks of a receiver: single spaces, canonical addresses of the
    announced family, decimal ports without leading zeros, CRLF within V1_MAX bytes.
    `PROXY UNKNOWN` (anything may follow it) carries no addresses.
    """
    data = bytes(buf[:V1_MAX])
    if data[: len(V1_PREFIX)] != V1_PREFIX[: len(data)]:
        raise ProxyHeaderError("not a PROXY v1 header (bad prefix)")
    end = data.find(b"\r\n")
    if end == -1:
        if b"\n" in data or (len(data) > 1 and b"\r" in data[:-1]):
            raise ProxyHeaderError("v1 line not ended by CRLF")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"v1 line longer than {V1_MAX} bytes")
        if not all(32 <= b < 127 or b == 13 for b in data):
            raise ProxyHeaderError("v1 line has a control or non-ASCII byte")
        return None
    line = data[:end]
    if not all(32 <= b < 127 for b in line):
        raise ProxyHeaderError("v1 line has a control or non-ASCII byte")
    fields = line.decode("ascii").split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, family, src, dst, sport, dport = fields
    make = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    try:
        if "%" in src + dst:  # a zone is not an address on the wire
            raise ValueError
        addresses = [make(text) for text in (src, dst)]
    except ValueError:
        raise ProxyHeaderError(f"v1 addresses are not both {family}") from None
    ports = [_port_text(text) for text in (sport, dport)]
    return ProxyHeader((_text(addresses[0]), ports[0]), (_text(addresses[1]), ports[1])), end + 2


def _port_text(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0") or int(text) > 0xFFFF:
        raise ProxyHeaderError(f"v1 port {text!r} is not a decimal in 0..65535")
    return int(text)


def _addresses(
    source: Address, destination: Address
) -> tuple[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], ...]:
    """Parse and port-check both endpoints, lifting a mixed pair to IPv6."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:
        src, dst = _as_ipv6(src), _as_ipv6(dst)
    return (src, _port(source[1])), (dst, _port(destination[1]))


def _unmapped(source: Address | None, destination: Address | None) -> tuple[Address | None, ...]:
    """Both endpoints as IPv4 when both are IPv4-mapped IPv6; otherwise as given.
    The prefix test suffices for decoded text (canonical, see `_text`) and keeps
    the common case free of address parsing."""
    if source is None or destination is None or not (
            source[0].startswith("::ffff:") and destination[0].startswith("::ffff:")):
        return source, destination
    mapped = [getattr(_ip(address), "ipv4_mapped", None) for address, _ in (source, destination)]
    if None in mapped:
        return source, destination
    return (str(mapped[0]), source[1]), (str(mapped[1]), destination[1])


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
