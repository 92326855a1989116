"""ClientHellos for tests, the fuzz targets and the bench: the parser's counterpart.

Kept out of runewarp/proto/clienthello.py: nothing in the product builds a ClientHello.
"""

from runewarp.proto.clienthello import (CONTENT_HANDSHAKE, EXT_ALPN, EXT_SERVER_NAME,
                                        HANDSHAKE_CLIENT_HELLO, NAME_TYPE_HOST_NAME)


def build(
    server_name: str | None = None,
    alpn_protocols: tuple[str, ...] | list[str] = (),
    *,
    record_size: int | None = None,
    extra_extensions: bytes = b"",
    random: bytes = bytes(64),
) -> bytes:
    """A syntactically valid TLS 1.3-capable ClientHello, for tests and probes.

    `record_size` fragments the handshake message into records of at most
    that many bytes; `extra_extensions` is appended verbatim to the
    extensions block.  `random` is the 64 bytes of client random and
    session id: the caller draws them (os.urandom(64)) when they must differ.
    """
    limit = 2**14 if record_size is None else record_size
    if len(random) != 64:
        raise ValueError(f"random must be 64 bytes, not {len(random)}")
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
        + random[:32]
        + _u8_vector(random[32:])
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
