import pytest

from runewarp.errors import LocalProtocolError, RemoteProtocolError
from runewarp.proto.mux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Frame,
    FrameDecoder,
    encode_header,
)


def test_constants_match_yamux():
    assert HEADER.size == 12
    assert (TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY) == (0, 1, 2, 3)
    assert (FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST) == (1, 2, 4, 8)


@pytest.mark.parametrize(
    "args, golden",
    [
        ((TYPE_DATA, 0, 1, 5), "00 00 0000 00000001 00000005"),
        ((TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0), "00 01 0001 00000003 00000000"),
        ((TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0x40000), "00 01 0002 00000002 00040000"),
        ((TYPE_WINDOW_UPDATE, FLAG_FIN | FLAG_RST, 0xFFFFFFFF, 0), "00 01 000c ffffffff 00000000"),
        ((TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF), "00 02 0001 00000000 deadbeef"),
        ((TYPE_GO_AWAY, 0, 0, 1), "00 03 0000 00000000 00000001"),
    ],
)
def test_header_golden_bytes(args, golden):
    assert encode_header(*args) == bytes.fromhex(golden)


def _stream_of_frames():
    frames = [
        Frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
        Frame(TYPE_DATA, 0, 1, 5, b"hello"),
        Frame(TYPE_DATA, FLAG_FIN, 1, 0),
        Frame(TYPE_PING, FLAG_SYN, 0, 7),
        Frame(TYPE_DATA, FLAG_ACK, 2, 3, b"abc"),
        Frame(TYPE_GO_AWAY, 0, 0, 0),
    ]
    return frames, b"".join(f.encode() for f in frames)


def test_decoder_whole_buffer():
    frames, wire = _stream_of_frames()
    decoder = FrameDecoder()
    decoder.feed(wire)
    assert list(decoder) == frames
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


@pytest.mark.parametrize("split", range(1, 80))
def test_decoder_every_split_point(split):
    frames, wire = _stream_of_frames()
    decoder = FrameDecoder()
    decoder.feed(wire[:split])
    got = list(decoder)
    decoder.feed(wire[split:])
    got += list(decoder)
    assert got == frames


def test_decoder_byte_at_a_time_and_memoryview_input():
    frames, wire = _stream_of_frames()
    decoder = FrameDecoder()
    got = []
    view = memoryview(wire)
    for i in range(len(wire)):
        decoder.feed(view[i:i + 1])
        got += list(decoder)
    assert got == frames
    assert all(type(f.payload) is bytes for f in got)


def test_decoder_oversize_payload():
    decoder = FrameDecoder(max_payload=1024)
    decoder.feed(encode_header(TYPE_DATA, 0, 1, 1024) + b"x" * 1024)
    assert decoder.next_frame().length == 1024
    decoder.feed(encode_header(TYPE_DATA, 0, 1, 1025))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_decoder_window_update_length_is_not_payload():
    decoder = FrameDecoder(max_payload=16)
    decoder.feed(encode_header(TYPE_WINDOW_UPDATE, 0, 1, 1 << 30) + encode_header(TYPE_PING, 0, 0, 9))
    assert decoder.next_frame() == Frame(TYPE_WINDOW_UPDATE, 0, 1, 1 << 30)
    assert decoder.next_frame() == Frame(TYPE_PING, 0, 0, 9)


@pytest.mark.parametrize("bad", [bytes.fromhex("01 00 0000 00000001 00000000"),
                                 bytes.fromhex("00 04 0000 00000001 00000000")])
def test_decoder_bad_version_or_type(bad):
    decoder = FrameDecoder()
    decoder.feed(bad)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_decoder_many_small_frames_linear():
    frame = encode_header(TYPE_DATA, 0, 1, 1) + b"z"
    decoder = FrameDecoder()
    decoder.feed(frame * 100_000)
    count = sum(1 for _ in decoder)
    assert count == 100_000


def test_decoder_reports_a_data_header_whose_payload_is_still_coming():
    decoder = FrameDecoder()
    decoder.feed(encode_header(TYPE_DATA, FLAG_ACK, 3, 1000)[:11])
    assert decoder.next_raw() is None and decoder.pending_data_header() is None
    decoder.feed(encode_header(TYPE_DATA, FLAG_ACK, 3, 1000)[11:] + b"x" * 999)
    assert decoder.next_raw() is None
    assert decoder.pending_data_header() == (FLAG_ACK, 3, 1000)
    decoder.feed(b"x")
    assert decoder.pending_data_header() == (FLAG_ACK, 3, 1000)  # complete, not yet taken
    assert decoder.next_frame() == Frame(TYPE_DATA, FLAG_ACK, 3, 1000, b"x" * 1000)
    assert decoder.pending_data_header() is None


@pytest.mark.parametrize("split", [12, 13, 500, 1011])
def test_decoder_discards_a_payload_without_buffering_it(split):
    ping = Frame(TYPE_PING, FLAG_SYN, 0, 7)
    wire = encode_header(TYPE_DATA, 0, 5, 1000) + b"x" * 1000 + ping.encode()
    decoder = FrameDecoder()
    decoder.feed(wire[:split])
    assert decoder.next_raw() is None
    decoder.discard_payload()
    assert decoder.buffered == 0 and decoder.pending_data_header() is None
    for i in range(split, len(wire), 100):
        decoder.feed(wire[i:i + 100])
        assert decoder.buffered <= len(ping.encode())
    assert list(decoder) == [ping]


def test_decoder_discard_needs_a_pending_payload():
    decoder = FrameDecoder()
    decoder.feed(encode_header(TYPE_PING, FLAG_SYN, 0, 7))
    with pytest.raises(LocalProtocolError):
        decoder.discard_payload()
