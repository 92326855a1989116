"""Hypothesis properties of the QUIC Initial reader: however a client (or the network)
cuts, repeats, reorders and coalesces the ClientHello's CRYPTO data, the reader finds
the same ClientHello; anything else is a QuicDropped, never another exception."""

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runewarp.proto import quiccrypto, quickeys, quicwire
from runewarp.proto.clienthello import parse_handshake
from runewarp.proto.quic import (
    VERSION_1,
    VERSION_2,
    InitialReader,
    QuicDropped,
    crypto_frame,
    seal_initial,
)
from runewarp.proto.quicwire import REASONS

from . import test_intake_cost
from .test_quic import DCID, SCID, hello_message, initials

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PAYLOAD = 1100  # frame bytes per Initial, so a padded packet fits a 1200-byte datagram


@st.composite
def delivered(draw):
    """(message, datagrams): the message's CRYPTO frames cut at arbitrary offsets, some
    repeated (overlapping ranges of the true bytes), shuffled, packed into Initials,
    the Initials coalesced into datagrams and the datagrams reordered."""
    size = draw(st.integers(200, 4000))
    message = hello_message(f"h{size}.example.com", ("h3", "h3-29"), size=size)
    cuts = draw(st.sets(st.integers(1, size - 1), max_size=24))
    edges = sorted({0, size, *cuts, *range(1000, size, 1000)})  # no frame over 1000 bytes
    bounds = list(pairwise(edges))
    extra = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 600)), max_size=6))
    bounds += [(at, min(size, at + n)) for at, n in extra]
    frames = [crypto_frame(a, message[a:b]) for a, b in draw(st.permutations(bounds))]
    packets, current = [], b""
    for frame in frames:
        if current and len(current) + len(frame) > PAYLOAD:
            packets.append(current)
            current = b""
        current += frame
    packets.append(current)
    version = draw(st.sampled_from([VERSION_1, VERSION_2]))
    sealed = [seal_initial(version, DCID, SCID, n, p, pad_to=0) for n, p in enumerate(packets)]
    datagrams, group = [], b""
    for packet in sealed:
        if group and (len(group) + len(packet) > 1400 or draw(st.booleans())):
            datagrams.append(group)
            group = b""
        group += packet
    datagrams.append(group)
    datagrams = [d + bytes(max(0, 1200 - len(d))) for d in datagrams]
    return message, draw(st.permutations(datagrams))


@SETTINGS
@given(delivered())
def test_any_delivery_of_the_crypto_stream_yields_the_client_hello(case):
    message, datagrams = case
    expected = parse_handshake(message)
    reader = InitialReader(max_packets=64)
    results = [reader.feed(d) for d in datagrams]
    assert results[-1] == expected
    assert all(r is None or r == expected for r in results)


@SETTINGS
@given(delivered(), st.data())
def test_every_prefix_of_a_datagram_is_dropped_or_needs_more(case, data):
    _, datagrams = case
    datagram = data.draw(st.sampled_from(datagrams)) + bytes(300)
    reader = InitialReader(max_packets=64)
    for end in range(0, len(datagram), 37):
        try:
            reader.feed(datagram[:end])
        except QuicDropped as exc:
            assert exc.reason in REASONS


@SETTINGS
@given(st.binary(max_size=1600), st.sampled_from([b"", b"\xc0\x00\x00\x00\x01\x08" + DCID + b"\x00\x00"]))
def test_random_bytes_are_only_ever_dropped(junk, prefix):
    reader = InitialReader()
    with pytest.raises(QuicDropped) as info:
        reader.feed(prefix + junk + bytes(1200))
    assert info.value.reason in REASONS


@SETTINGS
@given(st.integers(0, 3 * 1200 * 8 - 1))
def test_a_bit_flip_in_an_initial_is_dropped_and_the_flow_still_completes(bit):
    packets = initials(hello_message(size=3000), per_packet=1100)
    reader = InitialReader()
    which, at = divmod(bit // 8, 1200)
    flipped = bytearray(packets[which])
    flipped[at] ^= 1 << (bit % 8)
    with pytest.raises(QuicDropped) as info:
        reader.feed(bytes(flipped))
    assert not info.value.fatal
    if at >= quicwire.parse_packet(packets[which], 0).pn_offset:
        assert info.value.reason == "undecryptable"
    assert [reader.feed(p) for p in packets][-1].consumed == 3000


@SETTINGS
@given(st.lists(st.tuples(st.integers(4, 3000), st.binary(min_size=1, max_size=40)), min_size=1, max_size=30))
def test_crypto_frames_that_disagree_with_held_bytes_are_refused(writes):
    """Against a model: a frame is refused exactly when it changes a held byte."""
    header = b"\x01\x00\x0f\x00"  # a ClientHello of 3844 bytes
    stream, model = quiccrypto.CryptoStream(4096), dict(enumerate(header))
    stream.add(0, header)
    for offset, data in writes:
        conflict = any(model.get(offset + i, b) != b for i, b in enumerate(data))
        try:
            stream.add(offset, data)
        except QuicDropped as exc:
            assert (exc.reason, exc.fatal, conflict) == ("malformed", True, True)
            return
        assert not conflict
        model.update((offset + i, b) for i, b in enumerate(data))
    held = bytes(model.get(i, 0) for i in range(3844))
    assert (stream.message() == held) == (len(model) == 3844)


def work(frames_per_packet):
    message = hello_message(size=2 * frames_per_packet)
    order = [*range(len(message) - 2, -1, -2), *range(len(message) - 1, -1, -2)]  # gaps, then fill them
    pieces = [crypto_frame(at, message[at : at + 1]) for at in order]
    groups = [pieces[i : i + frames_per_packet] for i in range(0, len(pieces), frames_per_packet)]
    datagrams = [seal_initial(VERSION_1, DCID, SCID, n, g) for n, g in enumerate(groups)]
    reader = InitialReader(max_packets=len(datagrams))
    return test_intake_cost.count_instructions(lambda: [reader.feed(d) for d in datagrams][-1])


def test_reassembly_work_is_linear_in_one_byte_frames(monkeypatch):
    """Adversarial slicing (1-byte CRYPTO frames, last byte first) costs linear work."""
    counted = {quiccrypto.__file__, quickeys.__file__, quicwire.__file__}
    monkeypatch.setattr(test_intake_cost, "COUNTED", {Path(f).resolve() for f in counted})
    (small_hello, small), (large_hello, large) = work(150), work(300)
    assert small_hello.consumed == 300 and large_hello.consumed == 600
    assert large < 2.5 * small, (small, large)
