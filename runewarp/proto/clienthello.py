"""Incremental TLS ClientHello parser: just enough to route by SNI and ALPN.

The edge never terminates TLS; it peeks at the first flight, picks a route
from the server_name, and forwards the bytes untouched. So the parser only
has to answer "done, need more, or garbage" for a growing buffer, with a hard
cap on how much it is willing to buffer before deciding, and it must be
strict: anything it accepts is what the router trusts.

A ClientHello may be fragmented over several handshake records (large
post-quantum key shares make this common), with a record boundary anywhere,
including inside the 4-byte handshake header.
"""

import os
from dataclasses import dataclass

from runewarp.errors import RemoteProtocolError

__all__ = ["MAX_CLIENTHELLO", "ClientHello", "ClientHelloError", "build", "parse"]

MAX_CLIENTHELLO = 16 * 1024
"""Most bytes (record headers included) buffered before giving up."""

MAX_RECORD = 2**14 + 2048
"""Largest record length field RFC 8446 allows on the wire."""

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
NAME_TYPE_HOST_NAME = 0

_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4


class ClientHelloError(RemoteProtocolError):
    """The peer's first bytes are not an acceptable ClientHello.

    `reason` is a short stable token for logs and metrics: "not-tls",
    "unexpected-record", "not-client-hello", "too-large" or "malformed".
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
    """

    server_name: str | None
    alpn_protocols: tuple[str, ...]
    legacy_version: int
    consumed: int


def parse(buf: bytes | bytearray | memoryview) -> ClientHello | None:
    """Parse the ClientHello at the start of `buf`.

    Returns the ClientHello once complete, None while more bytes are needed,
    and raises ClientHelloError as soon as the bytes cannot become a valid
    ClientHello within MAX_CLIENTHELLO bytes.
    """
    view = memoryview(buf).cast("B")
    size = len(view)
    fragments: list[memoryview] = []
    declared = 0
    total: int | None = None
    pos = 0
    while pos < size:
        header = view[pos : pos + _RECORD_HEADER]
        if header[0] != CONTENT_HANDSHAKE:
            if pos == 0:
                raise ClientHelloError("not-tls", f"first byte 0x{header[0]:02x} is not a handshake record")
            raise ClientHelloError("unexpected-record", f"content type {header[0]} before the ClientHello ended")
        if len(header) > 1 and header[1] != 3:
            raise ClientHelloError("not-tls", f"record version major {header[1]} is not 3")
        if len(header) < _RECORD_HEADER:
            break
        length = int.from_bytes(header[3:5])
        if not 0 < length <= MAX_RECORD:
            raise ClientHelloError("malformed", f"record length {length}")
        end = pos + _RECORD_HEADER + length
        if end > MAX_CLIENTHELLO:
            raise ClientHelloError("too-large", f"record ends at byte {end}")
        fragments.append(view[pos + _RECORD_HEADER : end])
        declared += length

        if total is None:
            total = _handshake_total(fragments)
        if total is not None:
            if declared > total:
                raise ClientHelloError("malformed", "data after the ClientHello in its last record")
            least_end = end
            if declared < total:
                least_end += _RECORD_HEADER + total - declared
            if least_end > MAX_CLIENTHELLO:
                raise ClientHelloError("too-large", f"ClientHello needs at least {least_end} bytes")

        if end > size:
            break
        pos = end
        if total is not None and declared == total:
            message = b"".join(fragments)
            return _parse_body(message[_HANDSHAKE_HEADER:], consumed=pos)

    if size > MAX_CLIENTHELLO:
        raise ClientHelloError("too-large", f"no complete ClientHello in {size} bytes")
    return None


def _handshake_total(fragments: list[memoryview]) -> int | None:
    """Full handshake message length once its header has arrived; checks the type early."""
    head = bytes(fragments[0][:_HANDSHAKE_HEADER])
    if len(head) < _HANDSHAKE_HEADER:
        head = b"".join(fragments)[:_HANDSHAKE_HEADER]
    if head and head[0] != HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError("not-client-hello", f"handshake type {head[0]}")
    if len(head) < _HANDSHAKE_HEADER:
        return None
    return _HANDSHAKE_HEADER + int.from_bytes(head[1:4])


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
    if not r.at_end():
        extensions = r.vector(2, "extensions")
        r.expect_end("extensions")
        seen: set[int] = set()
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
    return ClientHello(server_name, alpn, legacy_version, consumed)


def _parse_server_name(data: _Reader) -> str | None:
    """First host_name of the server_name_list (RFC 6066 section 3)."""
    names = data.vector(2, "server_name_list")
    data.expect_end("server_name_list")
    if names.at_end():
        raise ClientHelloError("malformed", "empty server_name_list")
    host_name: str | None = None
    while not names.at_end():
        name_type = names.uint(1, "name_type")
        name = names.vector(2, "server name").rest()
        if name_type != NAME_TYPE_HOST_NAME or host_name is not None:
            continue
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


def build(
    server_name: str | None = None,
    alpn_protocols: tuple[str, ...] | list[str] = (),
    *,
    record_size: int | None = None,
    extra_extensions: bytes = b"",
) -> bytes:
    """A syntactically valid TLS 1.3-capable ClientHello, for tests and probes.

    `record_size` fragments the handshake message into records of at most
    that many bytes; `extra_extensions` is appended verbatim to the
    extensions block.
    """
    limit = 2**14 if record_size is None else record_size
    if not 0 < limit <= 2**14:
        raise ValueError(f"record_size must be in 1..16384, not {record_size}")

    extensions = []
    if server_name is not None:
        host = server_name.encode("ascii")
        entry = bytes([NAME_TYPE_HOST_NAME]) + _u16(len(host)) + host
        extensions.append(_extension(EXT_SERVER_NAME, _u16(len(entry)) + entry))
    if alpn_protocols:
        names = b"".join(_u8_vector(p.encode("latin-1")) for p in alpn_protocols)
        extensions.append(_extension(EXT_ALPN, _u16(len(names)) + names))
    extensions.append(_extension(10, _u16(2) + b"\x00\x1d"))  # supported_groups: x25519
    extensions.append(_extension(13, _u16(4) + b"\x04\x03\x08\x04"))  # signature_algorithms
    extensions.append(_extension(43, _u8_vector(b"\x03\x04\x03\x03")))  # supported_versions
    ext_block = b"".join(extensions) + extra_extensions

    suites = b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f"
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + _u8_vector(os.urandom(32))
        + _u16(len(suites))
        + suites
        + b"\x01\x00"
        + _u16(len(ext_block))
        + ext_block
    )
    message = bytes([HANDSHAKE_CLIENT_HELLO]) + len(body).to_bytes(3) + body
    return b"".join(
        bytes([CONTENT_HANDSHAKE]) + b"\x03\x01" + _u16(len(chunk)) + chunk
        for chunk in (message[i : i + limit] for i in range(0, len(message), limit))
    )


def _u16(n: int) -> bytes:
    return n.to_bytes(2)


def _u8_vector(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _extension(ext_type: int, data: bytes) -> bytes:
    return _u16(ext_type) + _u16(len(data)) + data
