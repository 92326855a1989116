"""The encrypted_client_hello extension (docs/ech.md): the parser flags it and routes by the
outer SNI, the ECH public name; a GREASE ECH extension is flagged the same way."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runewarp.proto.clienthello import EXT_ECH, ClientHello, parse
from tests.clienthellos import build

from .test_clienthello import (
    CHANGE_CIPHER_SPEC,
    FIXTURES,
    UNCAPPED,
    alpn_ext,
    body,
    ext,
    feed_in_chunks,
    frame,
    handshake_message,
    hello_from_body,
    hostnames,
    outcome,
    protocols,
    reason_of,
    sni_ext,
)

PUBLIC_NAME = "public.example.com"


def ech_ext(payload=b"\xaa" * 144, enc=b"\xbb" * 32, config_id=7):
    """An outer ECHClientHello: type 0, HKDF-SHA256 + AES-128-GCM, config_id, enc, payload."""
    return ext(EXT_ECH, b"\x00\x00\x01\x00\x01" + bytes([config_id]) + len(enc).to_bytes(2) + enc
               + len(payload).to_bytes(2) + payload)


def test_the_codepoint_is_the_one_of_the_ech_drafts():
    assert EXT_ECH == 0xFE0D


def test_an_ech_hello_is_routed_by_its_outer_sni():
    exts = sni_ext((0, PUBLIC_NAME.encode())) + alpn_ext(b"h2") + ech_ext()
    hello = parse(hello_from_body(body(extensions=exts)))
    assert (hello.server_name, hello.alpn_protocols, hello.ech) == (PUBLIC_NAME, ("h2",), True)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_hellos_without_the_extension_are_not_ech(name):
    assert parse(FIXTURES[name]).ech is False


@pytest.mark.parametrize("payload", [b"", b"\x01", os.urandom(300)])
def test_the_payload_is_not_interpreted(payload):
    # GREASE ECH is random bytes in the shape of a real one; the Server holds no ECH key,
    # so any payload is only "the extension is there".
    hello = parse(hello_from_body(body(extensions=sni_ext((0, b"a.example")) + ext(EXT_ECH, payload))))
    assert (hello.server_name, hello.ech) == ("a.example", True)


def test_an_ech_hello_without_sni_has_no_name_to_route_by():
    hello = parse(hello_from_body(body(extensions=ech_ext())))
    assert (hello.server_name, hello.ech) == (None, True)


def test_two_ech_extensions_are_malformed():
    assert reason_of(hello_from_body(body(extensions=ech_ext() + ech_ext()))) == "malformed"


def test_an_ech_extension_overrunning_the_block_is_malformed():
    exts = sni_ext((0, b"a.example")) + EXT_ECH.to_bytes(2) + b"\x00\x09abc"
    assert reason_of(hello_from_body(body(extensions=exts))) == "malformed"


def grease_ech(random):
    """An ECH extension cut from the caller's 64 random bytes, as a GREASE one would be:
    for build(extra_extensions=...)."""
    return ech_ext(payload=random * 3, enc=random[:32], config_id=random[0])


def test_a_built_hello_with_an_ech_extension_is_flagged():
    assert parse(build(PUBLIC_NAME, extra_extensions=grease_ech(bytes(range(64))))).ech is True
    assert parse(build(PUBLIC_NAME)).ech is False


def test_every_proper_prefix_of_an_ech_hello_needs_more():
    drawn = os.urandom(64)
    data = build(PUBLIC_NAME, ["h2", "http/1.1"], extra_extensions=grease_ech(drawn), random=drawn)
    assert parse(data).ech
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut


@settings(max_examples=200)
@given(server_name=st.none() | hostnames, alpn=protocols, record_size=st.none() | st.integers(1, 2**14),
       ech=st.booleans(), random=st.binary(min_size=64, max_size=64))
def test_build_round_trip_with_ech(server_name, alpn, record_size, ech, random):
    data = build(server_name, alpn, record_size=record_size,
                 extra_extensions=grease_ech(random) if ech else b"", random=random)
    assert parse(data, max_records=UNCAPPED) == ClientHello(server_name, tuple(alpn), 0x0303, len(data), ech)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 2**14), min_size=1, max_size=8),
       max_records=st.sampled_from([None, 3, UNCAPPED]), data=st.data())
def test_any_chunking_of_an_ech_hello_gives_the_one_shot_outcome(sizes, max_records, data):
    records = frame(handshake_message(build(PUBLIC_NAME, ["h2"], extra_extensions=ech_ext())), sizes) + CHANGE_CIPHER_SPEC
    cuts = data.draw(st.lists(st.integers(0, len(records)), max_size=20))
    whole = outcome(records, max_records=max_records)
    assert feed_in_chunks(records, cuts, max_records=max_records) == whole
    if isinstance(whole, ClientHello):
        assert (whole.server_name, whole.ech) == (PUBLIC_NAME, True)
