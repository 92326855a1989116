"""PP2_TYPE_AUTHORITY on the Server's header: the routed Public hostname for the Client."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.proto.hostname import is_valid
from runewarp.proto.proxyv2 import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    ProxyHeader,
    ProxyHeaderError,
    decode,
    encode,
    routed_hostname,
    tlv,
    tlvs,
)

SOURCE, DEST = ("192.0.2.1", 51234), ("198.51.100.7", 443)

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(label, min_size=1, max_size=5).map(".".join).filter(is_valid)


@settings(max_examples=50)
@given(hostnames, st.binary(max_size=20))
def test_authority_round_trip_at_every_prefix(hostname, trailing):
    data = encode(SOURCE, DEST, authority=hostname)
    for cut in range(len(data)):
        assert decode(data[:cut]) is None, cut  # never a guess from a partial header
    header, length = decode(data + trailing)
    assert length == len(data)
    assert (header.source, header.destination) == (SOURCE, DEST)
    assert tlvs(header.tlvs) == [(PP2_TYPE_AUTHORITY, hostname.encode())]
    assert routed_hostname(header) == hostname


def test_authority_comes_before_other_tlvs():
    header, _ = decode(encode(SOURCE, DEST, tlvs=tlv(PP2_TYPE_ALPN, b"h2"), authority="a.example"))
    assert tlvs(header.tlvs) == [(PP2_TYPE_AUTHORITY, b"a.example"), (PP2_TYPE_ALPN, b"h2")]
    assert routed_hostname(header) == "a.example"


def test_a_header_without_authority_names_no_hostname():
    """An older Server's header (addresses only), or other TLVs only: the Client reads the hello."""
    assert routed_hostname(decode(encode(SOURCE, DEST))[0]) is None
    assert routed_hostname(decode(encode(SOURCE, DEST, tlvs=tlv(PP2_TYPE_ALPN, b"h2")))[0]) is None
    assert routed_hostname(decode(encode(None, None, authority="a.example"))[0]) == "a.example"


def test_authority_is_normalized_by_the_hostname_rule():
    assert routed_hostname(ProxyHeader(SOURCE, DEST, tlvs=tlv(PP2_TYPE_AUTHORITY, b"App.Example.COM."))) \
        == "app.example.com"


@pytest.mark.parametrize("value", [
    b"", b"a b.example", b"*.example.com", b"192.0.2.1", b"under_score.example", b"x" * 254,
    b"a." * 127 + b"a", "d\u00e9j\u00e0.example".encode(), b"\xff\xfe", b"a..example", b"-a.example",
])
def test_an_invalid_authority_refuses_the_header(value):
    with pytest.raises(ProxyHeaderError, match="AUTHORITY"):
        routed_hostname(ProxyHeader(SOURCE, DEST, tlvs=tlv(PP2_TYPE_AUTHORITY, value)))


@pytest.mark.parametrize("vector", [b"\x02", b"\x02\x00", b"\x02\x00\x05abc", b"\x01\x00\x01"])
def test_a_malformed_tlv_vector_refuses_the_header(vector):
    with pytest.raises(ProxyHeaderError):
        routed_hostname(ProxyHeader(SOURCE, DEST, tlvs=vector))


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_any_tlv_bytes_give_a_hostname_none_or_a_header_error(vector):
    try:
        name = routed_hostname(ProxyHeader(SOURCE, DEST, tlvs=vector))
    except ProxyHeaderError:
        return
    assert name is None or isinstance(name, str)
