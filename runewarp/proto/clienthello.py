"""Incremental TLS ClientHello parser: just enough to route by SNI and ALPN.

The edge never terminates TLS; it peeks at the first flight, picks a route
from the server_name, and forwards the bytes untouched. So the parser only
has to answer "done, need more, or garbage" for a growing stream, with a hard
cap on how much it is willing to buffer before deciding, and it must be
strict: anything it accepts is what the router trusts.

A ClientHello may be fragmented over several handshake records (large
post-quantum key shares make this common), with a record boundary anywhere,
including inside the 4-byte handshake header.

ClientHelloParser is sans-I/O and resumable: each byte fed is examined once
(record headers parsed once, handshake fragments appended once to one
reassembly buffer), so the cost of an intake is linear in its bytes however
a peer slices them into records and segments. Re-parsing a growing buffer
after every recv() was quadratic: a hello trickled as 1-byte records could
burn most of a core per connection.
"""

from dataclasses import dataclass

from runewarp.errors import RemoteProtocolError

__all__ = [
    "MAX_CLIENTHELLO",
    "MAX_RECORDS",
    "ClientHello",
    "ClientHelloError",
    "ClientHelloParser",
    "parse",
    "parse_handshake",
]

MAX_CLIENTHELLO = 16 * 1024
"""Most bytes (record headers included) buffered before giving up."""

MAX_RECORDS = 32
"""Most TLS records one ClientHello may span.

TLS stacks fragment a ClientHello only at their maximum record size (2**14
by default), so real clients send 1 record, 2 with very large post-quantum
key shares. The smallest send fragment OpenSSL can be configured to
(max_send_fragment, 512 bytes) needs 32 records for a hello filling
MAX_CLIENTHELLO, so 32 admits every conventionally fragmented hello that
fits the byte cap, while a peer cutting its hello into tiny records (an
evasion and CPU-exhaustion pattern) is refused after at most 32 records.
"""

MAX_RECORD = 2**14 + 2048
"""Largest record length field RFC 8446 allows on the wire."""

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_ECH = 0xFE0D  # encrypted_client_hello (draft-ietf-tls-esni-13 and later; docs/ech.md)
NAME_TYPE_HOST_NAME = 0

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4


class ClientHelloError(RemoteProtocolError):
    """The peer's first bytes are not an acceptable ClientHello.

    `reason` is a short stable token for logs and metrics: "not-tls",
    "unexpected-record", "not-client-hello", "too-large", "too-many-records",
    "multiple-sni" or "malformed".
    """

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ClientHello:
    """What routing needs from a ClientHello.

    `server_name` is the raw SNI host_name (not normalized), None without SNI.
    `consumed` is the length of the records that carried the message; any
    bytes after it (e.g. ChangeCipherSpec, 0-RTT data) belong to the stream.
    `ech`: the hello carries an encrypted_client_hello extension; its SNI is then
    the ECH public name (the outer SNI), which routing uses as any SNI.  A GREASE
    ECH extension counts too: it is built to look like a real one, and only the
    holder of the ECH keys can tell them apart.
    """

    server_name: str | None
    alpn_protocols: tuple[str, ...]
    legacy_version: int
    consumed: int
    ech: bool = False


class ClientHelloParser:
    """Resumable parser for the ClientHello at the start of a byte stream.

    feed() each chunk exactly once, in order. It returns the ClientHello once
    complete and None while more bytes are needed; it raises ClientHelloError
    as soon as the bytes seen cannot become a valid ClientHello within
    MAX_CLIENTHELLO bytes and `max_records` records (None: MAX_RECORDS).
    The outcome depends only on the bytes, never on how they were chunked.
    Once finished, feed() examines nothing: it returns the same ClientHello
    (bytes after `consumed` are the caller's) or raises the same error again.
    """

    def __init__(self, *, max_records: int | None = None):
        self.max_records = MAX_RECORDS if max_records is None else max_records
        self.offset = 0  # stream bytes examined so far
        self.records = 0  # records whose header is complete
        self._header = bytearray()  # the current record header while incomplete
        self._record_left = 0  # payload bytes still due in the current record
        self._record_end = 0  # stream offset where the current record ends
        self._declared = 0  # sum of the record length fields so far
        self._message = bytearray()  # the handshake message, reassembled
        self._total: int | None = None  # full handshake message length, once known
        self._hello: ClientHello | None = None
        self._error: tuple[str, str | None] | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        if self._error is None and self._hello is None:
            try:
                self._consume(memoryview(data).cast("B"))
            except ClientHelloError as exc:
                self._error = (exc.reason, exc.detail)
        if self._error is not None:
            # A fresh exception: the first one's traceback holds views of `data`,
            # which would keep a caller's bytearray from growing.
            raise ClientHelloError(*self._error)
        return self._hello

    def _consume(self, view: memoryview) -> None:
        pos, size = 0, len(view)
        while pos < size and self._hello is None:
            if self._record_left:
                n = min(self._record_left, size - pos)
                self._payload(view[pos : pos + n])
                pos += n
            else:
                self._header_byte(view[pos])
                pos += 1

    def _header_byte(self, byte: int) -> None:
        at = len(self._header)
        if at == 0:
            if byte != CONTENT_HANDSHAKE:
                if self.offset == 0:
                    raise ClientHelloError("not-tls", f"first byte 0x{byte:02x} is not a handshake record")
                raise ClientHelloError("unexpected-record", f"content type {byte} before the ClientHello ended")
            if self.offset >= MAX_CLIENTHELLO:
                raise ClientHelloError("too-large", f"no complete ClientHello in {self.offset} bytes")
        elif at == 1 and byte != 3:
            raise ClientHelloError("not-tls", f"record version major {byte} is not 3")
        self._header.append(byte)
        self.offset += 1
        if at + 1 == _RECORD_HEADER:
            self._start_record(int.from_bytes(self._header[3:5]))

    def _start_record(self, length: int) -> None:
        self._header.clear()
        if not 0 < length <= MAX_RECORD:
            raise ClientHelloError("malformed", f"record length {length}")
        end = self.offset + length
        if end > MAX_CLIENTHELLO:
            raise ClientHelloError("too-large", f"record ends at byte {end}")
        self.records += 1
        self._record_left = length
        self._record_end = end
        self._declared += length
        if self._total is not None:
            self._check_total()

    def _payload(self, fragment: memoryview) -> None:
        self._message += fragment
        self.offset += len(fragment)
        self._record_left -= len(fragment)
        if self._total is None:
            if self._message[0] != HANDSHAKE_CLIENT_HELLO:
                raise ClientHelloError("not-client-hello", f"handshake type {self._message[0]}")
            if len(self._message) >= _HANDSHAKE_HEADER:
                self._total = _HANDSHAKE_HEADER + int.from_bytes(self._message[1:_HANDSHAKE_HEADER])
                self._check_total()
        if self._record_left == 0:
            self._end_record()

    def _check_total(self) -> None:
        """Reject as soon as the declared lengths rule the hello out."""
        missing = self._total - self._declared
        if missing < 0:
            raise ClientHelloError("malformed", "data after the ClientHello in its last record")
        if missing:
            least_end = self._record_end + _RECORD_HEADER + missing
            if least_end > MAX_CLIENTHELLO:
                raise ClientHelloError("too-large", f"ClientHello needs at least {least_end} bytes")
            if self.records >= self.max_records:
                raise ClientHelloError("too-many-records", f"ClientHello needs more than {self.records} records")

    def _end_record(self) -> None:
        if self._declared == self._total:
            body = bytes(self._message[_HANDSHAKE_HEADER:])
            self._hello = _parse_body(body, consumed=self.offset)
        elif self.records >= self.max_records:
            raise ClientHelloError("too-many-records", f"no complete ClientHello in {self.records} records")


def parse(buf: bytes | bytearray | memoryview, *, max_records: int | None = None) -> ClientHello | None:
    """Parse the ClientHello at the start of `buf` in one go.

    Returns the ClientHello once complete, None while more bytes are needed,
    and raises ClientHelloError as ClientHelloParser.feed() does. For a
    growing buffer, feed a ClientHelloParser the new bytes instead: parsing
    the whole buffer again after each read is quadratic.
    """
    return ClientHelloParser(max_records=max_records).feed(buf)


def parse_handshake(message: bytes | bytearray | memoryview) -> ClientHello:
    """Parse a whole ClientHello handshake message that came without TLS records.

    QUIC carries the handshake in CRYPTO frames (RFC 9001 §4), so the Initial reader
    hands over the bare message: type, 3-byte length, body.  `consumed` is the message
    length.  Raises ClientHelloError as the record parser does.
    """
    message = bytes(message)
    if len(message) < _HANDSHAKE_HEADER:
        raise ClientHelloError("malformed", f"handshake message of {len(message)} bytes")
    if message[0] != HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError("not-client-hello", f"handshake type {message[0]}")
    length = int.from_bytes(message[1:_HANDSHAKE_HEADER])
    if length != len(message) - _HANDSHAKE_HEADER:
        raise ClientHelloError("malformed", f"handshake length {length} for a "
                               f"{len(message) - _HANDSHAKE_HEADER}-byte body")
    return _parse_body(message[_HANDSHAKE_HEADER:], consumed=len(message))


class _Reader:
    """Bounds-checked cursor: every overrun is a "malformed" error."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def __len__(self) -> int:
        return self.end - self.pos

    def at_end(self) -> bool:
        return self.pos == self.end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ClientHelloError("malformed", f"{what} overruns its container")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, width: int, what: str) -> int:
        return int.from_bytes(self.take(width, what))

    def vector(self, width: int, what: str) -> "_Reader":
        """A sub-reader over a length-prefixed vector, which must fit inside this one."""
        n = self.uint(width, f"{what} length")
        if self.pos + n > self.end:
            raise ClientHelloError("malformed", f"{what} overruns its container")
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub

    def rest(self) -> bytes:
        return self.data[self.pos : self.end]

    def expect_end(self, what: str) -> None:
        if not self.at_end():
            raise ClientHelloError("malformed", f"{self.end - self.pos} stray bytes after {what}")


def _parse_body(body: bytes, consumed: int) -> ClientHello:
    r = _Reader(body)
    legacy_version = r.uint(2, "legacy_version")
    r.take(32, "random")
    if len(r.vector(1, "session_id")) > 32:
        raise ClientHelloError("malformed", "session_id longer than 32 bytes")
    n_suites = len(r.vector(2, "cipher_suites"))
    if n_suites == 0 or n_suites % 2:
        raise ClientHelloError("malformed", f"cipher_suites length {n_suites}")
    if r.vector(1, "compression_methods").at_end():
        raise ClientHelloError("malformed", "no compression methods")

    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    if not r.at_end():
        extensions = r.vector(2, "extensions")
        r.expect_end("extensions")
        while not extensions.at_end():
            ext_type = extensions.uint(2, "extension type")
            data = extensions.vector(2, f"extension {ext_type}")
            if ext_type in seen:
                raise ClientHelloError("malformed", f"duplicate extension {ext_type}")
            seen.add(ext_type)
            if ext_type == EXT_SERVER_NAME:
                server_name = _parse_server_name(data)
            elif ext_type == EXT_ALPN:
                alpn = _parse_alpn(data)
    return ClientHello(server_name, alpn, legacy_version, consumed, EXT_ECH in seen)


def _parse_server_name(data: _Reader) -> str | None:
    """The host_name of the server_name_list (RFC 6066 section 3).

    RFC 6066 allows one name per name_type, and OpenSSL and Go refuse a second
    host_name: accepting one would let the edge route on a different name than
    the one the backend's TLS stack sees. Entries of other types are ignored.
    """
    names = data.vector(2, "server_name_list")
    data.expect_end("server_name_list")
    if names.at_end():
        raise ClientHelloError("malformed", "empty server_name_list")
    host_name: str | None = None
    while not names.at_end():
        name_type = names.uint(1, "name_type")
        name = names.vector(2, "server name").rest()
        if name_type != NAME_TYPE_HOST_NAME:
            continue
        if host_name is not None:
            raise ClientHelloError("multiple-sni", "more than one host_name in server_name_list")
        if not name:
            raise ClientHelloError("malformed", "empty host_name")
        try:
            host_name = name.decode("ascii")
        except UnicodeDecodeError:
            raise ClientHelloError("malformed", "non-ASCII host_name") from None
    return host_name


def _parse_alpn(data: _Reader) -> tuple[str, ...]:
    """protocol_name_list of RFC 7301 section 3.1, in the client's preference order."""
    names = data.vector(2, "protocol_name_list")
    data.expect_end("protocol_name_list")
    if names.at_end():
        raise ClientHelloError("malformed", "empty protocol_name_list")
    protocols = []
    while not names.at_end():
        name = names.vector(1, "protocol name").rest()
        if not name:
            raise ClientHelloError("malformed", "empty protocol name")
        protocols.append(name.decode("latin-1"))
    return tuple(protocols)
