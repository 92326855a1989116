"""The worker pass message: round trip, and any datagram decodes or raises PassError."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto import workerpass
from runewarp.proto.workerpass import Pass, PassError, decode, encode, next_workers

sources = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
passes = st.builds(Pass, st.tuples(sources, st.integers(0, 65535)),
                   st.binary(max_size=2048), st.floats(0, 1e9),
                   st.integers(1, workerpass.MAX_HOPS))


@given(passes)
def test_round_trip(passed):
    assert decode(encode(passed)) == passed


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_pass_error(data):
    try:
        passed = decode(data)
    except PassError:
        return
    assert 0 < passed.hops <= workerpass.MAX_HOPS


@given(passes, st.data())
def test_a_truncated_or_altered_message_decodes_or_raises_pass_error(passed, data):
    message = bytearray(encode(passed))
    at = data.draw(st.integers(0, len(message) - 1))
    message[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    try:
        decode(bytes(message[:cut]))
    except PassError:
        pass


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter"),
    (b"XXXX" + bytes(20), "magic"),
    (struct.pack(">4sBdB", b"RWP1", 0, 1.0, 4) + bytes(6), "hops"),
    (struct.pack(">4sBdB", b"RWP1", 64, 1.0, 4) + bytes(6), "hops"),
    (struct.pack(">4sBdB", b"RWP1", 1, float("nan"), 4) + bytes(6), "finite"),
    (struct.pack(">4sBdB", b"RWP1", 1, -1.0, 4) + bytes(6), "finite"),
    (struct.pack(">4sBdB", b"RWP1", 1, 1.0, 5) + bytes(6), "family"),
    (struct.pack(">4sBdB", b"RWP1", 1, 1.0, 6) + bytes(6), "truncated"),
    (struct.pack(">4sBdB", b"RWP1", 1, 1.0, 4) + bytes(6 + workerpass.MAX_BUFFERED + 1),
     "buffered"),
])
def test_bad_messages_say_what_is_wrong(data, reason):
    with pytest.raises(PassError, match=reason):
        decode(data)


def test_encode_refuses_what_decode_would():
    with pytest.raises(PassError):
        encode(Pass(("127.0.0.1", 1), b"", 1.0, 0))
    with pytest.raises(PassError):
        encode(Pass(("127.0.0.1", 1), bytes(workerpass.MAX_BUFFERED + 1), 1.0, 1))


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n - 1), st.integers(0, n - 1))))
def test_next_workers_visit_each_other_worker_once_within_count_minus_one_hops(case):
    count, index, hops = case
    targets = next_workers(index, count, hops)
    assert len(targets) == max(0, count - 1 - hops)
    assert all(hop <= count - 1 for _, hop in targets)
    assert index not in [w for w, _ in targets]
    assert len({w for w, _ in targets}) == len(targets)
    # From the accepting worker (no hops yet), every other worker is reachable.
    assert {w for w, _ in next_workers(index, count, 0)} == set(range(count)) - {index}


def test_a_single_worker_has_nowhere_to_pass():
    assert next_workers(0, 1, 0) == []
    assert next_workers(1, 2, 1) == []
