"""Reading the PROXY header a trusted load balancer puts before a connection's bytes.

A Server behind an L4 balancer (HAProxy `send-proxy`/`send-proxy-v2`) sees the
balancer as every connection's peer; the header names the real Visitor (or Client).
Only peers in `[server] trusted-proxies` may speak it: from anyone else the same
bytes are an ordinary (non-TLS) Visitor, so a spoofed address is never believed.
Sans-I/O and incremental, like the ClientHello parser: feed what arrived, get one of
three outcomes, and never guess from a partial header.  The codecs are
proto/proxyv2.py's: this module only picks the version and bounds the bytes.
"""

import functools
import ipaddress
from dataclasses import dataclass

from . import proxyv2
from .proxyv2 import ProxyHeader, ProxyHeaderError

__all__ = ["Done", "ProxyHeaderReader", "Reject", "networks", "trusted"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Done:
    """A complete header; `rest` is what followed it (the start of the ClientHello)."""

    header: ProxyHeader
    rest: bytes


@dataclass(frozen=True)
class Reject:
    """Bytes that cannot start a valid header; `reason` is for the debug log."""

    reason: str


class ProxyHeaderReader:
    """Feed the connection's first bytes: None (need more), Done or Reject.

    The version is told by the first byte ("P" for v1, CR for v2); each decoder
    rejects a wrong prefix at once and bounds its header (v1: 107 bytes, v2:
    proxyv2.MAX_HEADER), so a reader never holds more than one header's bytes
    plus one read.  After Done or Reject the reader is spent.
    """

    def __init__(self):
        self._buf = bytearray()
        self._decode = None

    def feed(self, data: bytes) -> Done | Reject | None:
        self._buf += data
        if not self._buf:
            return None
        if self._decode is None:
            first = self._buf[0]
            if first == proxyv2.V1_PREFIX[0]:
                self._decode = proxyv2.decode_v1
            elif first == proxyv2.SIGNATURE[0]:
                self._decode = proxyv2.decode
            else:
                return Reject("not a PROXY header")
        try:
            decoded = self._decode(self._buf)
        except ProxyHeaderError as exc:
            return Reject(str(exc))
        if decoded is None:
            return None
        header, length = decoded
        if header.protocol == "udp":
            return Reject("a UDP PROXY header on a TCP connection")
        return Done(header, bytes(self._buf[length:]))


@functools.lru_cache(maxsize=8)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """Parse CIDRs or single addresses (a /32 or /128); ValueError names the bad one.
    Host bits must be zero, so a typo like 10.0.0.1/8 is refused rather than widened.
    Cached: the Server calls it with its config's tuple as each connection arrives."""
    result = []
    for text in entries:
        if "%" in text:
            raise ValueError(f"{text!r}: an IPv6 zone is not allowed")
        try:
            result.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not an IP address or CIDR ({exc})") from None
    return tuple(result)


def trusted(address: str, entries: tuple[str, ...]) -> bool:
    """Whether a socket peer `address` is in the CIDRs `entries` (already validated by
    the config); an IPv4-mapped IPv6 peer (a dual-stack listener) is checked as IPv4."""
    if not entries:
        return False
    allowed = networks(entries)
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return any(ip in network for network in allowed)
