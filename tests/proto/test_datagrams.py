"""The datagram framing and the bounded per-flow queue (proto/datagrams.py)."""

import pytest
from hypothesis import given, strategies as st

from runewarp.proto.datagrams import (MAX_DATAGRAM, DatagramDecoder, DatagramFramingError,
                                      DatagramQueue, frame, frame_all)

datagrams = st.lists(st.binary(min_size=1, max_size=1500), max_size=20)


@given(datagrams, st.lists(st.integers(min_value=1, max_value=4000), max_size=50))
def test_decoder_returns_the_datagrams_however_the_stream_is_cut(sent, cuts):
    stream = frame_all(sent)
    assert stream == b"".join(frame(d) for d in sent)
    decoder = DatagramDecoder()
    received = []
    pos = 0
    for cut in cuts:
        received += decoder.feed(stream[pos:pos + cut])
        pos += cut
    received += decoder.feed(stream[pos:])
    assert received == sent
    assert decoder.pending == 0


def test_partial_frame_is_held_until_complete():
    decoder = DatagramDecoder()
    data = frame(b"hello")
    assert decoder.feed(data[:1]) == []
    assert decoder.feed(data[1:4]) == []
    assert decoder.pending == 4
    assert decoder.feed(data[4:] + frame(b"x")) == [b"hello", b"x"]


def test_zero_length_frame_is_refused():
    with pytest.raises(DatagramFramingError):
        DatagramDecoder().feed(frame(b"a") + b"\x00\x00")


@pytest.mark.parametrize("size", [0, MAX_DATAGRAM + 1])
def test_frame_refuses_what_the_length_cannot_carry(size):
    with pytest.raises(DatagramFramingError):
        frame(b"x" * size)


def test_largest_datagram_round_trips():
    big = bytes(range(256)) * 255 + b"x" * 255
    assert len(big) == MAX_DATAGRAM
    assert DatagramDecoder().feed(frame(big)) == [big]


def test_queue_drops_oldest_on_count_overflow():
    queue = DatagramQueue(max_datagrams=3)
    assert [queue.push(bytes([i])) for i in range(5)] == [0, 0, 0, 1, 1]
    assert queue.take() == [b"\x02", b"\x03", b"\x04"]
    assert queue.dropped == 2 and len(queue) == 0 and queue.size == 0


def test_queue_drops_oldest_on_byte_overflow():
    queue = DatagramQueue(max_datagrams=100, max_bytes=MAX_DATAGRAM + 10)
    queue.push(b"a" * 10)
    queue.push(b"b" * MAX_DATAGRAM)
    assert queue.push(b"c") == 1
    assert queue.take() == [b"b" * MAX_DATAGRAM, b"c"]


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=200))
def test_queue_stays_within_its_bounds(pushed):
    queue = DatagramQueue(max_datagrams=16, max_bytes=MAX_DATAGRAM)
    for datagram in pushed:
        queue.push(datagram)
        assert len(queue) <= 16 and queue.size <= MAX_DATAGRAM
    kept = queue.take()
    assert kept == pushed[len(pushed) - len(kept):]
    assert queue.dropped == len(pushed) - len(kept)
