"""Reading the ClientHello from a QUIC client's Initial packets (v1 and v2), sans-I/O.

The Server routes QUIC by SNI without terminating it (docs/quic.md).  A client's
first datagrams carry Initial packets protected with keys anyone can derive from the
Destination Connection ID; InitialReader derives the client Initial keys (and never
anything else), removes header protection, decrypts, reassembles the CRYPTO stream
and parses the ClientHello with the one ClientHello parser
(`clienthello.parse_handshake`).  It never produces bytes to send: no Retry, no
Version Negotiation, no acknowledgement.

Three outcomes per datagram: None (need more), the ClientHello (done) or QuicDropped
(reject; `.fatal` says whether the pending flow is finished or only this datagram is
dropped).  Everything is bounded: `max_packets` accepted Initials, `max_crypto`
reassembled bytes, work linear in the bytes received.
"""

from runewarp.proto.clienthello import ClientHello, ClientHelloError, parse_handshake
from runewarp.proto.quiccrypto import CryptoStream, read_frames
from runewarp.proto.quickeys import InitialKeys, unprotect
from runewarp.proto.quicseal import crypto_frame, seal_initial
from runewarp.proto.quicwire import (
    MIN_INITIAL_DATAGRAM,
    VERSION_1,
    VERSION_2,
    LongHeader,
    QuicDropped,
    first_header,
    parse_packet,
)

__all__ = [
    "MAX_CRYPTO",
    "MAX_INITIALS",
    "MIN_INITIAL_DATAGRAM",
    "VERSION_1",
    "VERSION_2",
    "InitialReader",
    "LongHeader",
    "QuicDropped",
    "crypto_frame",
    "first_header",
    "seal_initial",
]

MAX_CRYPTO = 8 * 1024
"""Most CRYPTO stream bytes reassembled per flow: a ClientHello with a hybrid
post-quantum key share (X25519MLKEM768, ~1.2 KiB) is about 2 KiB."""

MAX_INITIALS = 16
"""Most Initial packets one ClientHello may span, duplicates included."""


class InitialReader:
    """The ClientHello of one QUIC flow, from its client's datagrams in arrival order.

    feed() returns None while more is needed and the ClientHello once complete (its
    `consumed` is the handshake message length); it raises QuicDropped.  A non-fatal
    drop leaves the reader exactly as it was.  Once done or fatally dropped, feed()
    examines nothing: it returns the same ClientHello or raises the same error.
    `version` and `dcid` are set by the first accepted Initial: the keys of the flow
    are derived from that DCID (RFC 9001 §5.2) whatever later packets carry.
    """

    def __init__(self, *, max_crypto: int = MAX_CRYPTO, max_packets: int = MAX_INITIALS):
        self.max_crypto = max_crypto
        self.max_packets = max_packets
        self.version: int | None = None
        self.dcid: bytes | None = None
        self.packets = 0  # Initial packets accepted
        self._keys: InitialKeys | None = None
        self._largest = -1  # largest packet number accepted
        self._crypto: CryptoStream | None = CryptoStream(max_crypto)
        self._hello: ClientHello | None = None
        self._error: tuple[str, str | None] | None = None

    def feed(self, datagram: bytes | bytearray | memoryview) -> ClientHello | None:
        if self._hello is not None:
            return self._hello
        if self._error is not None:
            raise QuicDropped(*self._error, fatal=True)
        try:
            return self._feed(bytes(datagram))
        except QuicDropped as exc:
            if exc.fatal:
                self._error = (exc.reason, exc.detail)
                self._crypto = self._keys = None  # a finished reader holds nothing
            raise

    def _feed(self, datagram: bytes) -> ClientHello | None:
        dcid, keys, largest, payloads = self._open(datagram)
        self._keys, self.version = keys, keys.version
        if self.dcid is None:
            self.dcid = dcid
        self._largest = largest
        self.packets += len(payloads)
        for payload in payloads:
            read_frames(payload, self._crypto)
        message = self._crypto.message()
        if message is None:
            return None
        try:
            self._hello = parse_handshake(message)
        except ClientHelloError as exc:
            reason = "not-client-hello" if exc.reason == "not-client-hello" else "malformed"
            raise QuicDropped(reason, str(exc), fatal=True) from None
        self._crypto = self._keys = None
        return self._hello

    def _open(self, datagram: bytes) -> tuple[bytes, InitialKeys, int, list[bytes]]:
        """Decrypt every client Initial of the datagram, changing nothing.

        Non-fatal drops come from here, before any state changes; the only fatal ones
        are authenticated: too many packets, reserved bits set, an empty payload.
        """
        if not datagram:
            raise QuicDropped("malformed", "empty datagram")
        first = parse_packet(datagram, 0)
        if self.version is not None and first.version != self.version:
            raise QuicDropped("unsupported-version", f"version 0x{first.version:08x} in a flow "
                              f"of 0x{self.version:08x}")
        if not first.initial:
            raise QuicDropped("not-initial")
        if len(datagram) < MIN_INITIAL_DATAGRAM:
            raise QuicDropped("malformed", f"client Initial in a {len(datagram)}-byte datagram")
        keys = self._keys or InitialKeys(first.version, first.dcid)
        largest, payloads = self._largest, []
        packet = first
        while True:
            if packet.initial:
                bits, number, payload = unprotect(keys, datagram, packet.start, packet.pn_offset,
                                                  packet.end, largest)
                payloads.append(payload)
                largest = max(largest, number)
                if bits & 0x0C:
                    raise QuicDropped("malformed", "reserved header bits set", fatal=True)
                if not payload:
                    raise QuicDropped("malformed", "Initial without frames", fatal=True)
                if self.packets + len(payloads) > self.max_packets:
                    raise QuicDropped("too-many-packets", f"more than {self.max_packets} Initials",
                                      fatal=True)
            if packet.end >= len(datagram):
                break
            try:
                packet = parse_packet(datagram, packet.end)
            except QuicDropped:
                break  # trailing bytes that are no packet of ours (RFC 9000 §12.2)
            if packet.version != first.version or packet.dcid != first.dcid:
                break  # a receiver ignores what follows with another DCID (RFC 9000 §12.2)
        return first.dcid, keys, largest, payloads
