"""The PROXY header reader for connections from trusted load balancers: v1 and v2,
fed whole, byte by byte and in every split; strict rejection of anything else."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.proto import proxyv2
from runewarp.proto.proxyheader import Done, ProxyHeaderReader, Reject, networks, trusted
from runewarp.proto.proxyv2 import V1_MAX, ProxyHeader, decode_v1, encode, encode_v1, local_header

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
HELLO = b"\x16\x03\x01\x00\x05hello"
V1_LONGEST = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
              b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")


def feed_split(data, cut):
    """Feed data[:cut] then the rest: every outcome, in order."""
    reader = ProxyHeaderReader()
    return [reader.feed(data[:cut]), reader.feed(data[cut:])]


def headers():
    pairs = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))
    return st.tuples(pairs, ports, ports, st.sampled_from([encode, encode_v1])).map(
        lambda t: t[3]((t[0][0], t[1]), (t[0][1], t[2])))


@settings(max_examples=60)
@given(headers(), st.binary(max_size=40))
def test_every_prefix_needs_more_then_one_done(data, rest):
    whole = ProxyHeaderReader().feed(data + rest)
    assert isinstance(whole, Done) and whole.rest == rest
    for cut in range(len(data)):
        assert ProxyHeaderReader().feed(data[:cut]) is None, cut
        first, second = feed_split(data + rest, cut)
        assert first is None and second == whole, cut


@settings(max_examples=30)
@given(headers())
def test_byte_by_byte(data):
    reader = ProxyHeaderReader()
    outcomes = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert outcomes[:-1] == [None] * (len(data) - 1)
    assert isinstance(outcomes[-1], Done) and outcomes[-1].rest == b""


@given(ipv4, ipv4, ports, ports)
def test_v1_and_v2_agree(src, dst, sport, dport):
    one = ProxyHeaderReader().feed(encode_v1((src, sport), (dst, dport)))
    two = ProxyHeaderReader().feed(encode((src, sport), (dst, dport)))
    assert one == two == Done(ProxyHeader((src, sport), (dst, dport)), b"")


def test_the_longest_v1_line_fits_and_one_more_byte_does_not():
    assert ProxyHeaderReader().feed(V1_LONGEST).header.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    padded = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(padded) == V1_MAX
    assert ProxyHeaderReader().feed(padded) == Done(ProxyHeader(None, None), b"")
    assert ProxyHeaderReader().feed(padded[:-2]) is None  # 105 bytes, no CRLF yet
    assert ProxyHeaderReader().feed(padded[:-1]) is None  # ends in CR: the LF may come
    too_long = ProxyHeaderReader().feed(padded[:-2] + b"xx")
    assert too_long == Reject(f"v1 line longer than {V1_MAX} bytes")


def test_local_and_unknown_carry_no_address():
    local = ProxyHeaderReader().feed(local_header("v2") + HELLO)
    assert local == Done(ProxyHeader(None, None, "unspec", local=True), HELLO)
    unknown = ProxyHeaderReader().feed(b"PROXY UNKNOWN ignored text\r\n" + HELLO)
    assert unknown == Done(ProxyHeader(None, None), HELLO)
    assert not unknown.header.local  # a proxied connection with unknown endpoints, not a check


@pytest.mark.parametrize("data, reason", [
    (HELLO, "not a PROXY header"),
    (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
    (b"PROXZ", "not a PROXY v1 header (bad prefix)"),
    (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY v2 header (bad signature)"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1 line not ended by CRLF"),
    (b"PROXY TCP4 1.2.3.4\r5", "v1 line not ended by CRLF"),
    (b"PROXY TCP4 1.2.3.4 \x00", "v1 line has a control or non-ASCII byte"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1 line is not PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1 addresses are not both TCP4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 addresses are not both TCP6"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1 addresses are not both TCP4"),
    (b"PROXY TCP6 fe80::1%lo ::1 1 2\r\n", "v1 addresses are not both TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1 port '65536' is not a decimal in 0..65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1 port '01' is not a decimal in 0..65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1 port '+1' is not a decimal in 0..65535"),
    (proxyv2.SIGNATURE + b"\x21\x11\xff\xff", f"header length {16 + 0xFFFF} exceeds {proxyv2.MAX_HEADER}"),
    (proxyv2.SIGNATURE + b"\x11", "unsupported PROXY protocol version 1"),
    (encode(("192.0.2.1", 1), ("192.0.2.2", 2), "udp"), "a UDP PROXY header on a TCP connection"),
])
def test_rejections(data, reason):
    assert ProxyHeaderReader().feed(data) == Reject(reason)


@given(st.binary(min_size=1, max_size=120))
def test_any_bytes_give_one_of_three_outcomes_and_rejects_stay_rejected(data):
    outcome = ProxyHeaderReader().feed(data)
    assert outcome is None or isinstance(outcome, (Done, Reject))
    if isinstance(outcome, Reject):  # a rejected prefix is never completed by more bytes
        assert isinstance(ProxyHeaderReader().feed(data + V1_LONGEST), Reject)
    if data[:1] not in (b"P", b"\r"):
        assert isinstance(outcome, Reject)


def test_a_truncated_v2_header_needs_more_forever():
    data = encode(("192.0.2.1", 1), ("192.0.2.2", 2))[:20]
    reader = ProxyHeaderReader()
    assert reader.feed(data) is None
    assert reader.feed(b"") is None


def test_decode_v1_leaves_the_rest():
    assert decode_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nabc") == (
        ProxyHeader(("192.0.2.1", 1), ("192.0.2.2", 2)), 36)


@pytest.mark.parametrize("peer, entries, expected", [
    ("10.1.2.3", ("10.0.0.0/8",), True),
    ("11.1.2.3", ("10.0.0.0/8",), False),
    ("::ffff:10.1.2.3", ("10.0.0.0/8",), True),  # a dual-stack listener's IPv4 peer
    ("2001:db8::7", ("2001:db8::/32",), True),
    ("2001:db9::7", ("2001:db8::/32", "127.0.0.5/32"), False),
    ("127.0.0.5", ("2001:db8::/32", "127.0.0.5/32"), True),
    ("fe80::1%eth0", ("fe80::/64",), True),
    ("127.0.0.1", (), False),
])
def test_trusted(peer, entries, expected):
    assert trusted(peer, entries) is expected


def test_networks_names_the_bad_entry():
    with pytest.raises(ValueError, match="'10.0.0.1/8' is not an IP address or CIDR"):
        networks(("10.0.0.1/8",))
