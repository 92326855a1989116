"""A correct, protected client Initial: the other half of the Initial reader, for
tests, the fuzz seeds and the bench (the Server itself never sends QUIC)."""

from collections.abc import Iterable

from runewarp.proto.quickeys import InitialKeys, protect
from runewarp.proto.quicwire import MAX_CID, TYPE_INITIAL, encode_varint

_TAG = 16


def crypto_frame(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame carrying `data` at `offset` of the stream."""
    return b"\x06" + encode_varint(offset) + encode_varint(len(data)) + bytes(data)


def seal_initial(version: int, dcid: bytes, scid: bytes, packet_number: int,
                 frames: bytes | Iterable[bytes], *, token: bytes = b"", pad_to: int = 1200,
                 pn_length: int | None = None) -> bytes:
    """A client Initial packet of `version` carrying `frames`, protected with the keys of
    `dcid`, PADDING frames added until the packet is `pad_to` bytes long.

    `pn_length` (1-4) defaults to the fewest bytes that hold `packet_number`.  Coalesce
    packets by concatenating them (pad only the last, the datagram must reach 1200).
    """
    payload = bytes(frames) if isinstance(frames, (bytes, bytearray)) else b"".join(frames)
    if pn_length is None:
        pn_length = max(1, (packet_number.bit_length() + 7) // 8)
    if not 1 <= pn_length <= 4 or not 0 <= packet_number < 1 << (8 * pn_length):
        raise ValueError(f"packet number {packet_number} in {pn_length} bytes")
    if len(dcid) > MAX_CID or len(scid) > MAX_CID:
        raise ValueError("connection ID longer than 20 bytes")
    payload += bytes(max(0, 4 - pn_length - len(payload)))  # room for the header sample
    width = 2 if max(pad_to, len(payload) + len(token) + 64) < 1 << 14 else 4
    first = 0xC0 | TYPE_INITIAL[version] << 4 | (pn_length - 1)
    prefix = (bytes([first]) + version.to_bytes(4) + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid + encode_varint(len(token)) + token)
    size = len(prefix) + width + pn_length + len(payload) + _TAG
    payload += bytes(max(0, pad_to - size))
    header = (prefix + encode_varint(pn_length + len(payload) + _TAG, width)
              + packet_number.to_bytes(pn_length))
    return protect(InitialKeys(version, dcid), header, pn_length, packet_number, payload)
