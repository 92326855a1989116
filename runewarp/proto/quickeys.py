"""Client Initial packet protection of QUIC v1 (RFC 9001 §5) and v2 (RFC 9369 §3.3).

Initial keys are derived from the client's first Destination Connection ID with a
published salt, so anyone who sees that ID can read (and write) Initials: they
protect against off-path tampering, not observers.  This module derives the client
Initial keys and nothing else, which is all the Server needs to read a ClientHello:
no server keys, no Handshake or 1-RTT keys.
"""

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from runewarp.proto.quicwire import VERSION_1, VERSION_2, QuicDropped

INITIAL_SALT = {
    VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABELS = {
    VERSION_1: (b"quic key", b"quic iv", b"quic hp"),
    VERSION_2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
}
SAMPLE_SIZE = 16


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    mac = hmac.HMAC(salt, hashes.SHA256())
    mac.update(ikm)
    return mac.finalize()


def hkdf_expand_label(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 §7.1) with SHA-256."""
    full = b"tls13 " + label
    info = length.to_bytes(2) + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def client_initial_secret(version: int, dcid: bytes) -> bytes:
    return hkdf_expand_label(hkdf_extract(INITIAL_SALT[version], dcid), b"client in", 32)


class InitialKeys:
    """The client Initial key, IV and header-protection key for one version and DCID."""

    __slots__ = ("_aead", "_hp", "hp", "iv", "key", "version")

    def __init__(self, version: int, dcid: bytes):
        secret = client_initial_secret(version, dcid)
        key_label, iv_label, hp_label = LABELS[version]
        self.version = version
        self.key = hkdf_expand_label(secret, key_label, 16)
        self.iv = hkdf_expand_label(secret, iv_label, 12)
        self.hp = hkdf_expand_label(secret, hp_label, 16)
        self._aead = AESGCM(self.key)
        self._hp = Cipher(algorithms.AES(self.hp), modes.ECB())

    def mask(self, sample: bytes) -> bytes:
        """The 5-byte header-protection mask for a 16-byte ciphertext sample (RFC 9001 §5.4.3)."""
        encryptor = self._hp.encryptor()
        return (encryptor.update(bytes(sample)) + encryptor.finalize())[:5]

    def _nonce(self, packet_number: int) -> bytes:
        return (int.from_bytes(self.iv) ^ packet_number).to_bytes(12)

    def open(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes:
        """The payload; QuicDropped("undecryptable") when authentication fails."""
        try:
            return self._aead.decrypt(self._nonce(packet_number), bytes(ciphertext), bytes(header))
        except InvalidTag:
            raise QuicDropped("undecryptable", "Initial packet authentication failed") from None

    def seal(self, packet_number: int, header: bytes, payload: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(packet_number), bytes(payload), bytes(header))


def decode_packet_number(largest: int, truncated: int, bits: int) -> int:
    """The full packet number nearest the next expected one (RFC 9000 Appendix A.3)."""
    expected = largest + 1
    window = 1 << bits
    half = window // 2
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def unprotect(keys: InitialKeys, buf: bytes, start: int, pn_offset: int, end: int,
              largest: int) -> tuple[int, int, bytes]:
    """(first byte, packet number, payload) of the protected packet buf[start:end].

    Removes header protection (RFC 9001 §5.4), decodes the packet number against the
    largest one seen and decrypts.  The caller has checked there is room for the sample.
    """
    sample_at = pn_offset + 4
    mask = keys.mask(buf[sample_at : sample_at + SAMPLE_SIZE])
    first = buf[start] ^ (mask[0] & 0x0F)
    pn_length = (first & 0x03) + 1
    header = bytearray(buf[start : pn_offset + pn_length])
    header[0] = first
    at = pn_offset - start
    for i in range(pn_length):
        header[at + i] ^= mask[1 + i]
    truncated = int.from_bytes(header[at:])
    packet_number = decode_packet_number(largest, truncated, 8 * pn_length)
    payload = keys.open(packet_number, header, buf[pn_offset + pn_length : end])
    return first, packet_number, payload


def protect(keys: InitialKeys, header: bytes, pn_length: int, packet_number: int,
            payload: bytes) -> bytes:
    """The packet: `header` (ending in the packet number) sealed and header-protected."""
    ciphertext = keys.seal(packet_number, header, payload)
    sample_at = 4 - pn_length
    mask = keys.mask(ciphertext[sample_at : sample_at + SAMPLE_SIZE])
    packet = bytearray(header + ciphertext)
    packet[0] ^= mask[0] & 0x0F
    pn_offset = len(header) - pn_length
    for i in range(pn_length):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)
