"""The PROXY header the Client writes to a Local backend (proto/proxyv2.backend_header):
golden bytes for v1 and v2 with each TLV, for IPv4, IPv6 and an unknown family, and a
round trip through the one decoder."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.proxyv2 import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    VisitorTLS,
    backend_header,
    decode,
    local_header,
    encode,
    tlv,
    tlvs,
)

V4 = ProxyHeader(("192.0.2.1", 51234), ("198.51.100.7", 443))
V6 = ProxyHeader(("2001:db8::1", 1), ("2001:db8::2", 443))
UNKNOWN = ProxyHeader(None, None, "unspec")
SNI = "app.example.com"
TLS13 = VisitorTLS("TLSv1.3", "TLS_AES_256_GCM_SHA384", b"h2")

AUTHORITY = b"\x02\x00\x0f" + b"app.example.com"
ALPN = b"\x01\x00\x02" + b"h2"
SSL = (b"\x20\x00\x28"  # PP2_TYPE_SSL, 40 bytes
       b"\x01"  # client: PP2_CLIENT_SSL
       b"\x00\x00\x00\x00"  # verify: 0
       b"\x21\x00\x07" + b"TLSv1.3"  # PP2_SUBTYPE_SSL_VERSION
       + b"\x23\x00\x16" + b"TLS_AES_256_GCM_SHA384")  # PP2_SUBTYPE_SSL_CIPHER
V4_BLOCK = (b"\xc0\x00\x02\x01"  # 192.0.2.1
            b"\xc6\x33\x64\x07"  # 198.51.100.7
            b"\xc8\x22\x01\xbb")  # 51234, 443
V6_BLOCK = (ipaddress.IPv6Address("2001:db8::1").packed + ipaddress.IPv6Address("2001:db8::2").packed
            + b"\x00\x01\x01\xbb")


def v2(family, block):
    return SIGNATURE + b"\x21" + bytes([family]) + len(block).to_bytes(2) + block


@pytest.mark.parametrize("received, line", [
    (V4, b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\r\n"),
    (V6, b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n"),
    (UNKNOWN, b"PROXY UNKNOWN\r\n"),
    (ProxyHeader(("::ffff:192.0.2.1", 51234), ("::ffff:198.51.100.7", 443)),
     b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\r\n"),
    (ProxyHeader(("::ffff:192.0.2.1", 51234), ("2001:db8::2", 443)),
     b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 51234 443\r\n"),
])
def test_v1_golden(received, line):
    assert backend_header("v1", received, SNI) == line
    assert backend_header("v1", received, SNI, TLS13) == line  # v1 has no room for TLVs


@pytest.mark.parametrize("received, family, block", [
    (V4, 0x11, V4_BLOCK),
    (V6, 0x21, V6_BLOCK),
    (UNKNOWN, 0x00, b""),
    (ProxyHeader(("::ffff:192.0.2.1", 51234), ("::ffff:198.51.100.7", 443)), 0x11, V4_BLOCK),
])
def test_v2_passthrough_golden_has_the_authority_only(received, family, block):
    assert backend_header("v2", received, SNI) == v2(family, block + AUTHORITY)


@pytest.mark.parametrize("received, family, block", [
    (V4, 0x11, V4_BLOCK), (V6, 0x21, V6_BLOCK), (UNKNOWN, 0x00, b""),
])
def test_v2_terminate_golden_has_alpn_authority_and_ssl(received, family, block):
    assert backend_header("v2", received, SNI, TLS13) == v2(family, block + ALPN + AUTHORITY + SSL)


def test_v2_terminate_without_alpn_leaves_the_alpn_tlv_out():
    tls = VisitorTLS("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    ssl = (b"\x20\x00\x2d\x01\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.2"
           + b"\x23\x00\x1bECDHE-RSA-AES128-GCM-SHA256")
    assert backend_header("v2", V4, SNI, tls) == v2(0x11, V4_BLOCK + AUTHORITY + ssl)


def test_decoder_reads_the_addresses_and_keeps_the_tlvs_raw():
    data = backend_header("v2", V6, SNI, TLS13)
    header, length = decode(data + b"\x16\x03\x01")
    assert (header.source, header.destination, length) == (V6.source, V6.destination, len(data))
    assert header.tlvs == data[52:]
    assert decode(backend_header("v2", UNKNOWN, SNI)) == (
        ProxyHeader(None, None, "unspec", tlvs=AUTHORITY), 16 + len(AUTHORITY))


def test_tlvs_parse_what_tlv_builds():
    assert tlvs(tlv(1, b"h2") + tlv(0x20, b"")) == [(1, b"h2"), (0x20, b"")]
    for bad in (b"\x01\x00", b"\x01\x00\x03ab"):
        with pytest.raises(ProxyHeaderError):
            tlvs(bad)
    with pytest.raises(ValueError):
        tlv(1, b"x" * 0x10000)


def test_oversized_header_is_refused():
    with pytest.raises(ValueError):
        encode(None, None, tlvs=tlv(2, b"x" * 16 * 1024))


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)
hostnames = st.lists(label, min_size=2, max_size=5).map(".".join)
visitor_tls = st.builds(VisitorTLS, st.sampled_from(["TLSv1.2", "TLSv1.3"]),
                        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-0123456789", min_size=1, max_size=40),
                        st.sampled_from([b"", b"h2", b"http/1.1"]))


def _plain(address):
    mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    return str(mapped) if mapped else address


def expected_pair(received):
    """What backend_header sends: a pair IPv4-mapped on both ends as IPv4, else as received."""
    src, dst = received.source, received.destination
    if _plain(src[0]) != src[0] and _plain(dst[0]) != dst[0]:
        return (_plain(src[0]), src[1]), (_plain(dst[0]), dst[1])
    return src, dst


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, hostnames,
       st.none() | visitor_tls)
def test_v2_round_trip(addrs, sport, dport, sni, tls):
    src, dst = addrs
    received = decode(encode((src, sport), (dst, dport)))[0]
    data = backend_header("v2", received, sni, tls)
    header, length = decode(data)
    assert length == len(data)
    assert (header.source, header.destination) == expected_pair(received)
    address_size = 12 if header.source[0].count(":") == 0 else 36
    entries = dict(tlvs(data[16 + address_size:]))
    assert entries[PP2_TYPE_AUTHORITY] == sni.encode()
    if tls is None:
        assert set(entries) == {PP2_TYPE_AUTHORITY}
        return
    assert entries.get(PP2_TYPE_ALPN, b"") == tls.alpn
    ssl = entries[PP2_TYPE_SSL]
    assert ssl[:5] == b"\x01\x00\x00\x00\x00"
    assert tlvs(ssl[5:]) == [(0x21, tls.version.encode()), (0x23, tls.cipher.encode())]


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_v1_line_carries_the_decoded_addresses(addrs, sport, dport):
    received = decode(encode((addrs[0], sport), (addrs[1], dport)))[0]
    line = backend_header("v1", received, SNI)
    assert line.endswith(b"\r\n") and len(line) <= 107  # the spec's longest v1 line
    proxy, family, src, dst, sp, dp = line[:-2].decode().split(" ")
    (esrc, esport), (edst, edport) = expected_pair(received)
    assert proxy == "PROXY"
    assert family == ("TCP6" if ":" in esrc else "TCP4")
    assert (src, dst, int(sp), int(dp)) == (esrc, edst, esport, edport)


def test_local_header_golden_bytes_and_decoded_without_addresses():
    """The doctor's probe is no Visitor: v1 UNKNOWN, v2 LOCAL with an empty address block."""
    assert local_header("v1") == b"PROXY UNKNOWN\r\n"
    v2 = local_header("v2")
    assert v2 == SIGNATURE + b"\x20\x00\x00\x00"
    header, used = decode(v2)
    assert used == len(v2) and header.source is None and header.destination is None
