"""The QUIC Initial reader: golden vectors of RFC 9001 and RFC 9369, and each outcome.

The protected packets of RFC 9001 A.2 and RFC 9369 A.2 are in fixtures/*.hex; both
authenticate (AES-GCM tag), so a transcription error could not pass.
"""

import pathlib

import pytest

from runewarp.errors import RemoteProtocolError
from runewarp.proto import clienthello, quickeys
from tests import clienthellos
from runewarp.proto.clienthello import ClientHelloError, parse_handshake
from runewarp.proto.quic import (
    MAX_CRYPTO,
    MAX_INITIALS,
    VERSION_1,
    VERSION_2,
    InitialReader,
    LongHeader,
    QuicDropped,
    crypto_frame,
    first_header,
    seal_initial,
)
from runewarp.proto.quickeys import (
    InitialKeys,
    client_initial_secret,
    decode_packet_number,
    protect,
    unprotect,
)
from runewarp.proto.quicwire import encode_varint, parse_packet, read_varint

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
RFC_DCID = bytes.fromhex("8394c8f03e515708")
DCID = bytes.fromhex("0001020304050607")
SCID = b"\x99" * 8


def rfc_packet(name):
    return bytes.fromhex((FIXTURES / name).read_text().replace("\n", ""))


RFC9001_A2 = rfc_packet("rfc9001_a2_client_initial.hex")
RFC9369_A2 = rfc_packet("rfc9369_a2_client_initial.hex")


def hello_message(server_name="app.example.com", alpn=("h3",), size=None):
    """A ClientHello handshake message (no record header), padded to `size` bytes."""
    message = clienthellos.build(server_name, alpn)[5:]
    if size is not None:
        pad = size - len(message) - 4
        message = clienthellos.build(server_name, alpn, extra_extensions=b"\x00\x15" + pad.to_bytes(2)
                                    + bytes(pad))[5:]
        assert len(message) == size
    return message


def initials(message, version=VERSION_1, per_packet=1000, dcid=DCID):
    """The message in CRYPTO frames of at most `per_packet` bytes, one Initial each."""
    return [seal_initial(version, dcid, SCID, n, crypto_frame(at, message[at : at + per_packet]))
            for n, at in enumerate(range(0, len(message), per_packet))]


def dropped(reader, datagram):
    with pytest.raises(QuicDropped) as info:
        reader.feed(datagram)
    return info.value


# --- golden vectors -----------------------------------------------------------------


@pytest.mark.parametrize(("version", "secret", "key", "iv", "hp"), [
    (VERSION_1, "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
     "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"),
    (VERSION_2, "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
     "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"),
])
def test_client_initial_keys_of_the_rfc_appendices(version, secret, key, iv, hp):
    """RFC 9001 A.1 and RFC 9369 A.1."""
    assert client_initial_secret(version, RFC_DCID).hex() == secret
    keys = InitialKeys(version, RFC_DCID)
    assert (keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == (key, iv, hp)


@pytest.mark.parametrize(("version", "sample", "mask"), [
    (VERSION_1, "d1b1c98dd7689fb8ec11d242b123dc9b", "437b9aec36"),
    (VERSION_2, "ffe67b6abcdb4298b485dd04de806071", "94a0c95e80"),
])
def test_header_protection_mask_of_the_rfc_appendices(version, sample, mask):
    assert InitialKeys(version, RFC_DCID).mask(bytes.fromhex(sample)).hex() == mask


@pytest.mark.parametrize(("packet", "version"), [(RFC9001_A2, VERSION_1), (RFC9369_A2, VERSION_2)])
def test_the_rfc_client_initial_yields_its_client_hello(packet, version):
    reader = InitialReader()
    hello = reader.feed(packet)
    assert hello.server_name == "example.com"
    assert hello.alpn_protocols == ("alpn",)
    assert hello.consumed == 241  # the CRYPTO frame's length, 0xf1
    assert (reader.version, reader.dcid, reader.packets) == (version, RFC_DCID, 1)
    assert first_header(packet) == LongHeader(version, RFC_DCID, b"", True)


@pytest.mark.parametrize(("packet", "version"), [(RFC9001_A2, VERSION_1), (RFC9369_A2, VERSION_2)])
def test_seal_initial_reproduces_the_rfc_packet(packet, version):
    """The builder is exact: same header (4-byte packet number 2), frames and padding."""
    keys = InitialKeys(version, RFC_DCID)
    header = parse_packet(packet, 0)
    bits, number, payload = unprotect(keys, packet, 0, header.pn_offset, header.end, -1)
    assert (bits & 0x03, number) == (3, 2)
    assert payload.startswith(bytes.fromhex("060040f1010000ed0303ebf8fa56f129"))
    frames = payload.rstrip(b"\x00")
    assert seal_initial(version, RFC_DCID, b"", 2, frames, pn_length=4) == packet


# --- first_header ---------------------------------------------------------------------


def test_first_header_reads_the_invariant_fields_without_crypto():
    v2 = seal_initial(VERSION_2, DCID, SCID, 0, b"\x01")
    assert first_header(v2) == LongHeader(VERSION_2, DCID, SCID, True)
    handshake = bytes([0xE0]) + VERSION_1.to_bytes(4) + b"\x08" + DCID + b"\x00" + bytes(30)
    assert first_header(handshake) == LongHeader(VERSION_1, DCID, b"", False)
    other = bytes([0xC0]) + (0x1A2A3A4A).to_bytes(4) + b"\x30" + bytes(48) + b"\x00"
    assert first_header(other) == LongHeader(0x1A2A3A4A, bytes(48), b"", False)  # RFC 8999: up to 255
    assert first_header(b"\x40" + DCID) is None


@pytest.mark.parametrize("datagram", [
    b"", b"\xc0\x00\x00\x00", b"\xc0\x00\x00\x00\x01\x08" + DCID[:7],
    b"\xc0\x00\x00\x00\x01\x08" + DCID, b"\xc0\x00\x00\x00\x01\x15" + bytes(22),
])
def test_first_header_refuses_a_truncated_or_oversized_header(datagram):
    with pytest.raises(QuicDropped) as info:
        first_header(datagram)
    assert (info.value.reason, info.value.fatal) == ("malformed", False)


# --- outcomes ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_a_client_hello_over_several_initials_out_of_order(version):
    message = hello_message(size=3000)
    packets = initials(message, version)
    reader = InitialReader()
    assert [reader.feed(p) for p in reversed(packets[1:])] == [None] * (len(packets) - 1)
    hello = reader.feed(packets[0])
    assert (hello.server_name, hello.alpn_protocols, hello.consumed) == ("app.example.com", ("h3",), 3000)
    assert reader.feed(b"anything") is hello  # done: nothing more is examined


def test_coalesced_initials_and_zero_rtt_in_one_datagram():
    message = hello_message(size=1500)
    first = seal_initial(VERSION_1, DCID, SCID, 0, crypto_frame(0, message[:700]), pad_to=0)
    zero_rtt = (bytes([0xD0]) + VERSION_1.to_bytes(4) + b"\x08" + DCID + b"\x08" + SCID
                + encode_varint(40, 2) + bytes(40))
    second = seal_initial(VERSION_1, DCID, SCID, 1, crypto_frame(700, message[700:]), pad_to=0)
    reader = InitialReader()
    hello = reader.feed(first + zero_rtt + second + bytes(100))  # trailing zeros are ignored
    assert hello.consumed == 1500
    assert reader.packets == 2


def test_a_coalesced_packet_of_another_dcid_is_ignored():
    message = hello_message()
    head = seal_initial(VERSION_1, DCID, SCID, 0, crypto_frame(0, message[:50]), pad_to=0)
    other = seal_initial(VERSION_1, b"\x01" * 8, SCID, 1, crypto_frame(50, message[50:]))
    reader = InitialReader()
    assert reader.feed(head + other) is None
    assert reader.packets == 1


def test_ping_ack_and_connection_close_are_allowed():
    message = hello_message()
    ack = b"\x02" + encode_varint(5) + encode_varint(0) + encode_varint(1) + encode_varint(0) + b"\x01\x01"
    ack_ecn = b"\x03\x00\x00\x00\x00\x01\x02\x03"
    close = b"\x1c" + encode_varint(0x0A) + encode_varint(0) + encode_varint(3) + b"bye"
    frames = b"\x01" + ack + ack_ecn + crypto_frame(0, message) + b"\x00\x00" + close
    assert InitialReader().feed(seal_initial(VERSION_1, DCID, SCID, 0, frames)).consumed == len(message)


@pytest.mark.parametrize(("datagram", "reason"), [
    (b"\x40" + bytes(1300), "short-header"),
    (bytes([0xC0]) + (0x1A2A3A4A).to_bytes(4) + b"\x08" + DCID + b"\x00" + bytes(1200), "unsupported-version"),
    (bytes([0x80]) + bytes(4) + b"\x08" + DCID + b"\x00" + b"\x00\x00\x00\x01" * 300, "unsupported-version"),
    (bytes([0xE0]) + VERSION_1.to_bytes(4) + b"\x08" + DCID + b"\x00" + encode_varint(1190, 2) + bytes(1190),
     "not-initial"),
    (bytes([0xD0]) + VERSION_1.to_bytes(4) + b"\x08" + DCID + b"\x00" + encode_varint(1190, 2) + bytes(1190),
     "not-initial"),
    (bytes([0xF0]) + VERSION_1.to_bytes(4) + b"\x08" + DCID + b"\x00" + bytes(1200), "malformed"),  # Retry
    (seal_initial(VERSION_1, DCID, SCID, 0, b"\x01", pad_to=1199), "malformed"),  # RFC 9000 §14.1
    (seal_initial(VERSION_1, DCID, SCID, 0, b"\x01")[:-1], "malformed"),  # length past the datagram
    (seal_initial(VERSION_1, DCID, SCID, 0, b"\x01")[:-1] + b"\x00", "undecryptable"),
    (b"", "malformed"),
])
def test_datagrams_dropped_without_touching_the_flow(datagram, reason):
    reader = InitialReader()
    info = dropped(reader, datagram)
    assert (info.reason, info.fatal) == (reason, False)
    assert isinstance(info, RemoteProtocolError)
    assert (reader.version, reader.dcid, reader.packets) == (None, None, 0)
    assert reader.feed(initials(hello_message())[0]).server_name == "app.example.com"


def test_a_datagram_of_another_version_or_dcid_does_not_poison_the_flow():
    message = hello_message(size=1800)
    first, second = initials(message)
    reader = InitialReader()
    assert reader.feed(first) is None
    info = dropped(reader, initials(message, VERSION_2)[1])
    assert (info.reason, info.fatal) == ("unsupported-version", False)
    info = dropped(reader, initials(message, dcid=b"\x05" * 8)[1])  # keys stay those of the first DCID
    assert (info.reason, info.fatal) == ("undecryptable", False)
    assert reader.feed(second).consumed == 1800


def test_one_undecryptable_coalesced_initial_drops_the_whole_datagram():
    message = hello_message()
    good = seal_initial(VERSION_1, DCID, SCID, 0, crypto_frame(0, message), pad_to=0)
    bad = bytearray(seal_initial(VERSION_1, DCID, SCID, 1, b"\x01"))
    bad[-1] ^= 1
    reader = InitialReader()
    assert dropped(reader, good + bad).reason == "undecryptable"
    assert reader.packets == 0
    assert reader.feed(good + bytes(1200)).server_name == "app.example.com"


def test_too_many_packets_finishes_the_flow():
    message = hello_message()
    reader = InitialReader(max_packets=3)
    packet = seal_initial(VERSION_1, DCID, SCID, 0, crypto_frame(0, message[:10]))
    for _ in range(3):
        assert reader.feed(packet) is None  # duplicates count
    info = dropped(reader, packet)
    assert (info.reason, info.fatal) == ("too-many-packets", True)
    assert dropped(reader, initials(message)[0]).reason == "too-many-packets"  # final
    assert MAX_INITIALS == 16


def fatal_reason(frames, **reader_args):
    reader = InitialReader(**reader_args)
    info = dropped(reader, seal_initial(VERSION_1, DCID, SCID, 0, frames, pad_to=0) + bytes(1200))
    assert info.fatal
    again = dropped(reader, initials(hello_message())[0])
    assert (again.reason, again.fatal) == (info.reason, True)
    return info.reason


def test_fatal_outcomes_of_decrypted_content():
    message = hello_message()
    assert fatal_reason(crypto_frame(0, b"\x02" + message[1:])) == "not-client-hello"
    assert fatal_reason(crypto_frame(0, b"\x01\x00\x20\x00")) == "too-large"  # 8196 > MAX_CRYPTO
    assert fatal_reason(crypto_frame(MAX_CRYPTO, b"x")) == "too-large"
    assert fatal_reason(crypto_frame(0, message[:100]), max_crypto=99) == "too-large"
    assert fatal_reason(crypto_frame(0, message + b"\x00")) == "malformed"  # past the message
    assert fatal_reason(crypto_frame(0, message[:9]) + crypto_frame(len(message), b"x")) == "malformed"
    assert fatal_reason(crypto_frame(len(message), b"x") + crypto_frame(0, message[:9])) == "malformed"
    assert fatal_reason(crypto_frame(0, message[:50]) + crypto_frame(10, b"z" * 5)) == "malformed"
    assert fatal_reason(b"\x08\x00\x00") == "malformed"  # STREAM is not allowed in an Initial
    assert fatal_reason(b"\x1d\x00\x00\x00") == "malformed"  # the application CONNECTION_CLOSE
    assert fatal_reason(b"\x06\x00\x40\x50abc") == "malformed"  # CRYPTO past the packet
    assert fatal_reason(b"\x02\x00\x00\x80\x10\x00\x00\x00") == "malformed"  # ACK ranges past it
    assert fatal_reason(b"\x06\xc0\x00") == "malformed"  # truncated varint
    bad_sni = clienthellos.build(None, extra_extensions=b"\x00\x00\x00\x03\x00\x01\x00")[5:]
    assert fatal_reason(crypto_frame(0, bad_sni)) == "malformed"


def raw_initial(first_bits, payload, pn_length=4):
    """An Initial whose first byte carries `first_bits` (reserved bits, say)."""
    keys = InitialKeys(VERSION_1, DCID)
    header = (bytes([0xC0 | first_bits | (pn_length - 1)]) + VERSION_1.to_bytes(4) + b"\x08" + DCID
              + b"\x00\x00" + encode_varint(pn_length + len(payload) + 16, 2) + bytes(pn_length))
    return protect(keys, header, pn_length, 0, payload)


def test_reserved_bits_and_empty_payloads_are_fatal_once_authenticated():
    reader = InitialReader()
    info = dropped(reader, raw_initial(0x04, b"\x01" * 1200))
    assert (info.reason, info.fatal) == ("malformed", True)
    reader = InitialReader()
    info = dropped(reader, raw_initial(0, b"") + bytes(1200))
    assert (info.reason, info.fatal) == ("malformed", True)


def test_a_bit_flip_anywhere_is_a_harmless_drop():
    packet = initials(hello_message())[0]
    reader = InitialReader()
    for at in range(0, len(packet), 7):
        flipped = bytearray(packet)
        flipped[at] ^= 0x10
        info = dropped(reader, bytes(flipped))
        assert not info.fatal
    assert reader.packets == 0
    assert reader.feed(packet).server_name == "app.example.com"


def test_the_reader_never_derives_more_than_the_client_initial_keys(monkeypatch):
    packets = initials(hello_message(size=3000))
    labels = []
    real = quickeys.hkdf_expand_label

    def spy(secret, label, length, context=b""):
        labels.append(label)
        return real(secret, label, length, context)

    monkeypatch.setattr(quickeys, "hkdf_expand_label", spy)
    reader = InitialReader()
    assert [reader.feed(p) for p in packets][-1].consumed == 3000
    assert labels == [b"client in", b"quic key", b"quic iv", b"quic hp"]  # once, for the first DCID


# --- parse_handshake -------------------------------------------------------------------


def test_parse_handshake_agrees_with_the_record_parser():
    for path in sorted(FIXTURES.glob("*.bin")):
        records = path.read_bytes()
        hello = clienthello.parse(records)
        message = b"".join(_fragments(records))
        bare = parse_handshake(message)
        assert (bare.server_name, bare.alpn_protocols, bare.ech) == (hello.server_name,
                                                                     hello.alpn_protocols, hello.ech)
        assert bare.consumed == len(message)


def _fragments(records):
    pos = 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5])
        yield records[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if clienthello.parse(records[:pos]) is not None:
            return


@pytest.mark.parametrize(("message", "reason"), [
    (b"", "malformed"), (b"\x01\x00\x00", "malformed"), (b"\x02\x00\x00\x00", "not-client-hello"),
    (hello_message()[:-1], "malformed"), (hello_message() + b"\x00", "malformed"),
])
def test_parse_handshake_refuses(message, reason):
    with pytest.raises(ClientHelloError) as info:
        parse_handshake(message)
    assert info.value.reason == reason


def test_varints_round_trip():
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        encoded = encode_varint(value)
        assert read_varint(encoded + b"x", 0) == (value, len(encoded))
    assert read_varint(bytes.fromhex("c2197c5eff14e88c"), 0)[0] == 151288809941952652  # RFC 9000 A.1
    assert read_varint(bytes.fromhex("9d7f3e7d"), 0)[0] == 494878333
    assert read_varint(bytes.fromhex("7bbd"), 0)[0] == 15293
    with pytest.raises(ValueError):
        encode_varint(2**62)


def test_packet_numbers_decode_against_the_largest_seen():
    assert decode_packet_number(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32  # RFC 9000 A.3
    assert decode_packet_number(-1, 0, 8) == 0
    assert decode_packet_number(254, 0x01, 8) == 257
    assert decode_packet_number(300, 0xFF, 8) == 255
