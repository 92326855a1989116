import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.errors import RemoteProtocolError
from runewarp.proto.proxyv2 import (
    MAX_HEADER,
    SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    decode,
    encode,
    encode_v1,
)

GOLDEN_V4 = (
    b"\r\n\r\n\x00\r\nQUIT\n"  # signature
    b"\x21"  # v2, PROXY
    b"\x11"  # TCP over IPv4
    b"\x00\x0c"  # 12 address bytes
    b"\xc0\x00\x02\x01"  # 192.0.2.1
    b"\xc6\x33\x64\x07"  # 198.51.100.7
    b"\xc8\x22"  # 51234
    b"\x01\xbb"  # 443
)
SOURCE_V4 = ("192.0.2.1", 51234)
DEST_V4 = ("198.51.100.7", 443)


def header(version_command=0x21, family=0x11, block=b"\x00" * 12, length=None) -> bytes:
    length = len(block) if length is None else length
    return SIGNATURE + bytes([version_command, family]) + length.to_bytes(2) + block


def error_of(data) -> str:
    with pytest.raises(ProxyHeaderError) as info:
        decode(data)
    return str(info.value)


def test_signature_constant():
    assert SIGNATURE == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    assert MAX_HEADER == 16 * 1024


def test_golden_ipv4():
    assert encode(SOURCE_V4, DEST_V4) == GOLDEN_V4
    assert decode(GOLDEN_V4) == (ProxyHeader(SOURCE_V4, DEST_V4, "tcp"), 28)


def test_ipv6_layout():
    data = encode(("2001:db8::1", 1), ("2001:db8::2", 2))
    assert data[12:16] == b"\x21\x21\x00\x24"
    assert data[16:32] == ipaddress.IPv6Address("2001:db8::1").packed
    assert data[48:] == b"\x00\x01\x00\x02"
    assert decode(data) == (ProxyHeader(("2001:db8::1", 1), ("2001:db8::2", 2)), 52)


def test_mixed_families_become_ipv4_mapped_ipv6():
    data = encode(("192.0.2.1", 1000), ("2001:db8::2", 443))
    assert data[13] == 0x21
    assert data[16:32] == b"\x00" * 10 + b"\xff\xff\xc0\x00\x02\x01"
    hdr, _ = decode(data)
    assert hdr.source == ("::ffff:192.0.2.1", 1000)
    assert hdr.destination == ("2001:db8::2", 443)


def test_udp():
    data = encode(SOURCE_V4, DEST_V4, protocol="udp")
    assert data[13] == 0x12
    assert decode(data)[0].protocol == "udp"
    data6 = encode(("::1", 1), ("::2", 2), protocol="udp")
    assert data6[13] == 0x22
    assert decode(data6)[0] == ProxyHeader(("::1", 1), ("::2", 2), "udp")


def test_address_text_is_canonical():
    hdr, _ = decode(encode(("2001:DB8:0:0::1", 1), ("0:0::1", 2)))
    assert hdr.source == ("2001:db8::1", 1)
    assert hdr.destination == ("::1", 2)


def test_ipv6_zone_is_dropped():
    assert decode(encode(("fe80::1%eth0", 1), ("fe80::2", 2)))[0].source == ("fe80::1", 1)


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


def expected_text(addr: str, as_v6: bool) -> str:
    ip = ipaddress.ip_address(addr)
    if as_v6 and ip.version == 4:
        return f"::ffff:{ip}"
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped else str(ip)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(ipv4, ipv6), st.tuples(ipv6, ipv4)),
    ports,
    ports,
    st.sampled_from(["tcp", "udp"]),
    st.binary(max_size=20),
)
def test_round_trip(addrs, sport, dport, protocol, trailing):
    src, dst = addrs
    data = encode((src, sport), (dst, dport), protocol)
    hdr, length = decode(data + trailing)
    assert length == len(data)
    as_v6 = ":" in src or ":" in dst
    assert hdr == ProxyHeader((expected_text(src, as_v6), sport), (expected_text(dst, as_v6), dport), protocol)


@settings(max_examples=50)
@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6), st.tuples(ipv4, ipv6)), ports, ports)
def test_every_prefix_needs_more(addrs, sport, dport):
    data = encode((addrs[0], sport), (addrs[1], dport))
    for cut in range(len(data)):
        assert decode(data[:cut]) is None, cut
    assert decode(data) is not None


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(kind):
    assert decode(kind(GOLDEN_V4 + b"GET /")) == (ProxyHeader(SOURCE_V4, DEST_V4), 28)
    assert decode(kind(GOLDEN_V4[:20])) is None


def test_trailing_bytes_not_consumed():
    payload = b"\x16\x03\x01\x00\x05hello"
    _, length = decode(GOLDEN_V4 + payload)
    assert (GOLDEN_V4 + payload)[length:] == payload


def test_local_command():
    data = header(0x20, 0x00, b"")
    assert decode(data + b"rest") == (ProxyHeader(None, None, "unspec", local=True), 16)
    local_with_addresses = header(0x20, 0x11, GOLDEN_V4[16:])
    assert decode(local_with_addresses) == (ProxyHeader(None, None, "tcp", local=True), 28)


def test_proxy_command_with_unspec_family_has_no_addresses():
    assert decode(header(0x21, 0x00, b"")) == (ProxyHeader(None, None, "unspec"), 16)


def test_tlvs_after_addresses_are_skipped():
    tlvs = b"\x04\x00\x00" + b"\x01\x00\x02h2" + b"\x20\x00\x05\x01\x00\x00\x00\x00"
    data = header(0x21, 0x11, GOLDEN_V4[16:] + tlvs)
    for cut in range(len(data)):
        assert decode(data[:cut]) is None
    hdr, length = decode(data + b"x")
    assert hdr == ProxyHeader(SOURCE_V4, DEST_V4, tlvs=tlvs)  # kept raw, parsed on demand
    assert length == len(data) == 28 + len(tlvs)


def test_largest_allowed_header():
    block = GOLDEN_V4[16:] + b"\x00" * (MAX_HEADER - 28)
    data = header(0x21, 0x11, block)
    assert len(data) == MAX_HEADER
    assert decode(data)[1] == MAX_HEADER


def test_header_over_cap_rejected_from_length_field():
    data = header(0x21, 0x11, b"", length=MAX_HEADER - 16 + 1)
    assert "exceeds" in error_of(data[:16])
    assert "exceeds" in error_of(header(0x21, 0x11, b"", length=0xFFFF))


@pytest.mark.parametrize("pos", range(12))
def test_corrupted_signature_rejected_at_once(pos):
    data = bytearray(GOLDEN_V4)
    data[pos] ^= 0x40
    assert "signature" in error_of(bytes(data[: pos + 1]))
    assert "signature" in error_of(bytes(data))


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"]
)
def test_other_protocols(data):
    assert "signature" in error_of(data)


@pytest.mark.parametrize("version_command", [0x11, 0x31, 0x01, 0xF1, 0x22, 0x2F])
def test_bad_version_or_command(version_command):
    data = header(version_command, 0x11, GOLDEN_V4[16:])
    with pytest.raises(ProxyHeaderError, match=r"version|command"):
        decode(data[:13])


@pytest.mark.parametrize("family", [0x10, 0x13, 0x31, 0x32, 0x01, 0x41, 0xFF])
def test_unknown_family(family):
    data = header(0x21, family, GOLDEN_V4[16:])
    assert "family" in error_of(data[:14])


@pytest.mark.parametrize(("family", "length"), [(0x11, 11), (0x11, 0), (0x21, 35), (0x21, 12), (0x12, 4), (0x22, 0)])
def test_address_block_too_short(family, length):
    data = header(0x21, family, b"\x00" * length)
    assert "too short" in error_of(data[:16])


def test_error_types():
    assert issubclass(ProxyHeaderError, RemoteProtocolError)


@given(st.binary(max_size=80))
def test_arbitrary_bytes(data):
    try:
        result = decode(data)
    except ProxyHeaderError:
        return
    assert result is None or (isinstance(result[0], ProxyHeader) and 16 <= result[1] <= len(data))


@given(st.binary(max_size=60))
def test_arbitrary_bytes_after_signature(rest):
    try:
        result = decode(SIGNATURE + rest)
    except ProxyHeaderError:
        return
    assert result is None or 16 <= result[1] <= len(SIGNATURE + rest)


@pytest.mark.parametrize("port", [-1, 65536, 1.5, "80", True])
def test_encode_rejects_bad_port(port):
    with pytest.raises(ValueError):
        encode(("192.0.2.1", port), DEST_V4)
    with pytest.raises(ValueError):
        encode(SOURCE_V4, ("192.0.2.1", port))
    with pytest.raises(ValueError):
        encode_v1(SOURCE_V4, ("192.0.2.1", port))


@pytest.mark.parametrize("addr", ["example.com", "", "1.2.3", "::g"])
def test_encode_rejects_bad_address(addr):
    with pytest.raises(ValueError):
        encode((addr, 1), DEST_V4)


def test_encode_rejects_unknown_protocol():
    with pytest.raises(ValueError):
        encode(SOURCE_V4, DEST_V4, protocol="sctp")


def test_encode_v1():
    assert encode_v1(SOURCE_V4, DEST_V4) == b"PROXY TCP4 192.0.2.1 198.51.100.7 51234 443\r\n"
    assert encode_v1(("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    assert encode_v1(("192.0.2.1", 1), ("::1", 2)) == b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"
