import pathlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runewarp.errors import RemoteProtocolError
from runewarp.proto.clienthello import (
    MAX_CLIENTHELLO,
    MAX_RECORDS,
    ClientHello,
    ClientHelloError,
    ClientHelloParser,
    parse,
)
from tests.clienthellos import build

FIXTURE_DIR = pathlib.Path(__file__).parent / "fixtures"

# name -> (server_name, alpn_protocols); captured by fixtures/capture.py.
EXPECTED = {
    "openssl_sni_alpn": ("app.example.com", ("h2", "http/1.1")),
    "curl_sni_alpn": ("app.example.com", ("h2", "http/1.1")),
    "openssl_no_sni": (None, ()),
    "openssl_tunnel": ("tunnel.example.com", ("runewarp/1",)),
    "openssl_large": ("large.example.com", ("h2", "http/1.1")),
}
FIXTURES = {name: (FIXTURE_DIR / f"{name}.bin").read_bytes() for name in EXPECTED}

UNCAPPED = 10**6  # max_records for tests of fragmentation itself, not of the record cap
CHANGE_CIPHER_SPEC = b"\x14\x03\x03\x00\x01\x01"
ALERT = b"\x15\x03\x03\x00\x02\x02\x28"


def handshake_message(records: bytes) -> bytes:
    """Concatenate the fragments of the handshake records in `records`."""
    out, pos = [], 0
    while pos < len(records):
        assert records[pos] == 22
        length = int.from_bytes(records[pos + 3 : pos + 5])
        out.append(records[pos + 5 : pos + 5 + length])
        pos += 5 + length
    return b"".join(out)


def frame(message: bytes, sizes) -> bytes:
    """Split a handshake message into records, cycling through `sizes`."""
    out, pos, i = [], 0, 0
    while pos < len(message):
        chunk = message[pos : pos + sizes[i % len(sizes)]]
        out.append(b"\x16\x03\x01" + len(chunk).to_bytes(2) + chunk)
        pos += len(chunk)
        i += 1
    return b"".join(out)


def hello_from_body(body: bytes, msg_type: int = 1) -> bytes:
    return frame(bytes([msg_type]) + len(body).to_bytes(3) + body, [2**14])


def body(
    *,
    version=b"\x03\x03",
    session_id=b"\x00" * 32,
    suites=b"\x13\x01\x13\x02",
    compression=b"\x00",
    extensions: bytes | None = b"",
) -> bytes:
    out = version + b"\x11" * 32 + bytes([len(session_id)]) + session_id
    out += len(suites).to_bytes(2) + suites + bytes([len(compression)]) + compression
    if extensions is not None:
        out += len(extensions).to_bytes(2) + extensions
    return out


def ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2) + len(data).to_bytes(2) + data


def sni_ext(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([t]) + len(n).to_bytes(2) + n for t, n in entries)
    return ext(0, len(names).to_bytes(2) + names)


def alpn_ext(*protocols: bytes) -> bytes:
    names = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(16, len(names).to_bytes(2) + names)


def outcome(data, **kw):
    try:
        return parse(data, **kw)
    except ClientHelloError as e:
        return e.reason


def reason_of(data, **kw) -> str:
    with pytest.raises(ClientHelloError) as info:
        parse(data, **kw)
    return info.value.reason


# --- golden fixtures --------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_parses(name):
    data = FIXTURES[name]
    hello = parse(data)
    assert hello == ClientHello(*EXPECTED[name], legacy_version=0x0303, consumed=len(data))


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_every_proper_prefix_needs_more(name):
    data = FIXTURES[name]
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_followed_by_more_records(name):
    data = FIXTURES[name]
    tail = CHANGE_CIPHER_SPEC + b"\x17\x03\x03\x00\x05hello"
    assert parse(data + tail).consumed == len(data)


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_in_100_byte_records(name):
    data = FIXTURES[name]
    reframed = frame(handshake_message(data), [100])
    assert reframed.count(b"\x16\x03\x01\x00\x64") >= len(data) // 100
    hello = parse(reframed)
    assert (hello.server_name, hello.alpn_protocols) == EXPECTED[name]
    assert hello.consumed == len(reframed)
    for cut in range(len(reframed)):
        assert parse(reframed[:cut]) is None, cut


def test_fixture_in_1_byte_records():
    data = FIXTURES["openssl_tunnel"]
    reframed = frame(handshake_message(data), [1])
    assert len(reframed) == 6 * (len(data) - 5)
    assert parse(reframed, max_records=UNCAPPED).server_name == "tunnel.example.com"
    assert parse(reframed[:-1], max_records=UNCAPPED) is None
    assert reason_of(reframed) == "too-many-records"


def test_large_fixture_is_large():
    assert len(FIXTURES["openssl_large"]) > 1024


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(kind):
    data = FIXTURES["curl_sni_alpn"]
    assert parse(kind(data)).server_name == "app.example.com"
    assert parse(kind(data[:10])) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(EXPECTED)),
    sizes=st.lists(st.integers(1, 2**14), min_size=1, max_size=8),
    data=st.data(),
)
def test_random_record_splits_and_cuts(name, sizes, data):
    reframed = frame(handshake_message(FIXTURES[name]), sizes)
    hello = parse(reframed, max_records=UNCAPPED)
    assert (hello.server_name, hello.alpn_protocols, hello.legacy_version) == (*EXPECTED[name], 0x0303)
    assert hello.consumed == len(reframed)
    cut = data.draw(st.integers(0, len(reframed) - 1))
    assert parse(reframed[:cut], max_records=UNCAPPED) is None


# --- robustness -------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data):
    assert isinstance(outcome(data), (ClientHello, str, type(None)))


@settings(max_examples=500)
@given(st.integers(0, 2**14), st.binary(max_size=600))
def test_arbitrary_bytes_behind_a_record_header(length, rest):
    result = outcome(b"\x16\x03\x01" + length.to_bytes(2) + b"\x01" + rest)
    assert isinstance(result, (ClientHello, str, type(None)))


@settings(max_examples=500)
@given(st.sampled_from(sorted(EXPECTED)), st.data())
def test_mutated_fixtures(name, data):
    buf = bytearray(FIXTURES[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    result = outcome(bytes(buf[:cut]))
    assert isinstance(result, (ClientHello, str, type(None)))


def test_empty_buffer_needs_more():
    assert parse(b"") is None


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\n", b"G", b"SSH-2.0-OpenSSH\r\n", b"\x80\x2e\x01\x03\x01", b"\x00"]
)
def test_not_tls_at_once(data):
    assert reason_of(data) == "not-tls"


def test_record_version_major_must_be_3():
    assert reason_of(b"\x16\x02") == "not-tls"
    assert reason_of(b"\x16\x04\x01") == "not-tls"
    assert parse(b"\x16\x03") is None


def test_error_types():
    assert issubclass(ClientHelloError, RemoteProtocolError)
    with pytest.raises(RemoteProtocolError, match="not-tls"):
        parse(b"GET")


def test_not_client_hello():
    server_hello = hello_from_body(body(), msg_type=2)
    assert reason_of(server_hello[:6]) == "not-client-hello"
    assert reason_of(server_hello) == "not-client-hello"


def test_handshake_type_checked_across_record_boundary():
    message = bytes([2]) + (41).to_bytes(3) + body()
    assert reason_of(frame(message, [1])[:6]) == "not-client-hello"


@pytest.mark.parametrize("record_type", [ALERT, CHANGE_CIPHER_SPEC, b"\x17\x03\x03\x00\x01x"])
def test_interleaved_non_handshake_record(record_type):
    message = handshake_message(FIXTURES["openssl_sni_alpn"])
    first, second = frame(message[:50], [50]), frame(message[50:], [2**14])
    assert parse(first) is None
    assert reason_of(first + record_type + second) == "unexpected-record"
    assert reason_of(first + record_type[:1]) == "unexpected-record"


@pytest.mark.parametrize("length", [0, 2**14 + 2048 + 1, 0xFFFF])
def test_bad_record_length(length):
    assert reason_of(b"\x16\x03\x01" + length.to_bytes(2)) == "malformed"


def test_data_after_hello_in_same_record():
    message = handshake_message(FIXTURES["openssl_no_sni"])
    assert reason_of(frame(message + b"\x00", [2**14])) == "malformed"


# --- size cap ---------------------------------------------------------------


@pytest.mark.parametrize(("record_size", "error_at"), [(4096, 9), (2**14, 5)])
def test_junk_hello_with_large_declared_length(record_size, error_at):
    # 9: once the handshake length is readable; 5: the first record alone overshoots.
    junk = frame(b"\x01" + (20 * 1024).to_bytes(3) + b"\xaa" * (20 * 1024), [record_size])
    first_error = next(cut for cut in range(len(junk) + 1) if outcome(junk[:cut]) is not None)
    assert first_error == error_at <= MAX_CLIENTHELLO + 1
    assert reason_of(junk) == "too-large"


def test_cap_reached_through_record_overhead():
    # The message alone fits, but in 10-byte records the framing pushes it past the cap.
    message = b"\x01" + (16000 - 4).to_bytes(3) + b"\xaa" * (16000 - 4)
    records = frame(message, [10])
    parser, first_error = ClientHelloParser(max_records=UNCAPPED), None
    for cut in range(MAX_CLIENTHELLO + 2):
        try:
            parser.feed(records[cut : cut + 1])
        except ClientHelloError:
            first_error = cut + 1
            break
    assert first_error <= MAX_CLIENTHELLO + 1
    assert reason_of(records, max_records=UNCAPPED) == "too-large"
    assert reason_of(records) == "too-many-records"


def test_buffer_over_cap_without_complete_hello():
    junk = frame(b"\x01" + (16000).to_bytes(3) + b"\xaa" * 16000, [1])
    assert reason_of(junk[: MAX_CLIENTHELLO + 1], max_records=UNCAPPED) == "too-large"


def padded_hello(total: int) -> bytes:
    base = build("pad.example.com")
    padding = total - len(base) - 4
    return build("pad.example.com", extra_extensions=ext(21, b"\x00" * padding))


def test_hello_of_exactly_the_cap_is_accepted():
    data = padded_hello(MAX_CLIENTHELLO)
    assert len(data) == MAX_CLIENTHELLO
    assert parse(data).consumed == MAX_CLIENTHELLO
    assert parse(data + b"\x14").consumed == MAX_CLIENTHELLO


def test_hello_one_byte_over_the_cap_is_rejected_early():
    data = padded_hello(MAX_CLIENTHELLO + 1)
    assert reason_of(data[:5]) == "too-large"


def test_cap_counts_record_headers():
    message = handshake_message(padded_hello(MAX_CLIENTHELLO))
    two_records = frame(message, [len(message) // 2])
    assert reason_of(two_records[:9]) == "too-large"


# --- record cap ------------------------------------------------------------


def test_too_many_records_rejected_early():
    records = frame(handshake_message(FIXTURES["openssl_sni_alpn"]), [1])
    first_error = next(cut for cut in range(len(records)) if outcome(records[:cut]) is not None)
    assert first_error == (MAX_RECORDS - 1) * 6 + 5  # the header of the last record allowed
    assert reason_of(records) == "too-many-records"


@pytest.mark.parametrize("max_records", [1, 2, 5, MAX_RECORDS])
def test_hello_in_exactly_max_records_is_accepted(max_records):
    message = handshake_message(FIXTURES["openssl_sni_alpn"])
    exact = frame(message, [1] * (max_records - 1) + [2**14])
    assert len(list(iter_fragments(exact))) == max_records
    assert parse(exact, max_records=max_records).server_name == "app.example.com"
    one_more = frame(message, [1] * max_records + [2**14])
    assert reason_of(one_more, max_records=max_records) == "too-many-records"
    assert parse(one_more, max_records=max_records + 1).consumed == len(one_more)


def test_max_records_admits_a_full_hello_in_openssl_smallest_fragments():
    # OpenSSL's max_send_fragment can go down to 512: a hello filling the byte cap then needs 32 records.
    message = handshake_message(padded_hello(MAX_CLIENTHELLO - 31 * 5))
    records = frame(message, [512])
    assert len(records) == MAX_CLIENTHELLO
    assert len(list(iter_fragments(records))) == MAX_RECORDS
    assert parse(records).consumed == MAX_CLIENTHELLO


def test_max_records_is_unreachable_for_real_clients():
    for name, data in FIXTURES.items():
        assert len(list(iter_fragments(data))) <= 2, name


# --- incremental feeding ----------------------------------------------------


def feed_in_chunks(data: bytes, cuts, **kw):
    """Feed `data` cut at `cuts`; check each step against parsing that prefix at once; the outcome."""
    parser = ClientHelloParser(**kw)
    bounds = sorted({c for c in cuts if 0 < c < len(data)} | {len(data)})
    start = 0
    for end in bounds:
        try:
            result = parser.feed(data[start:end])
        except ClientHelloError as e:
            assert outcome(data[:end], **kw) == e.reason
            with pytest.raises(ClientHelloError, match=e.reason):  # sticky
                parser.feed(b"\x16")
            return e.reason
        assert result == outcome(data[:end], **kw), end
        if result is not None:
            assert parser.feed(b"\x15") == result  # done: no more bytes examined
            return result
        start = end
    return None


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x00\x05\x02", FIXTURES["openssl_tunnel"][:100]])
def test_feeding_a_bytearray_does_not_pin_it(data):
    buf, parser = bytearray(data), ClientHelloParser()
    try:
        parser.feed(buf)
    except ClientHelloError:
        pass
    buf += b"more"  # BufferError if the parser still held a view of it


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(EXPECTED)),
    sizes=st.lists(st.integers(1, 2**14), min_size=1, max_size=8),
    max_records=st.sampled_from([None, 3, UNCAPPED]),
    data=st.data(),
)
def test_any_chunking_gives_the_one_shot_outcome(name, sizes, max_records, data):
    records = frame(handshake_message(FIXTURES[name]), sizes) + CHANGE_CIPHER_SPEC
    cuts = data.draw(st.lists(st.integers(0, len(records)), max_size=20))
    whole = outcome(records, max_records=max_records)
    assert feed_in_chunks(records, cuts, max_records=max_records) == whole
    if isinstance(whole, ClientHello):
        assert (whole.server_name, whole.alpn_protocols) == EXPECTED[name]
        assert whole.consumed == len(records) - len(CHANGE_CIPHER_SPEC)


def test_every_byte_alone_gives_the_one_shot_outcome():
    for name, data in FIXTURES.items():
        assert feed_in_chunks(data, range(len(data))) == parse(data), name
        records = frame(handshake_message(data), [1])[:3000]
        assert feed_in_chunks(records, range(len(records))) == "too-many-records", name


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EXPECTED)), st.data())
def test_any_chunking_of_garbage_gives_the_one_shot_reason(name, data):
    buf = bytearray(frame(handshake_message(FIXTURES[name]), data.draw(st.sampled_from([[2**14], [7], [1]]))))
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, min(len(buf), 400) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    buf = bytes(buf[: data.draw(st.integers(0, len(buf)))]) + data.draw(st.binary(max_size=20))
    cuts = data.draw(st.lists(st.integers(0, len(buf)), max_size=20))
    assert feed_in_chunks(buf, cuts) == outcome(buf)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=20))
def test_any_chunking_of_arbitrary_bytes(data, cuts):
    assert feed_in_chunks(b"\x16\x03\x01" + data, cuts) == outcome(b"\x16\x03\x01" + data)


# --- body structure ---------------------------------------------------------


def test_minimal_hello_without_extensions():
    hello = parse(hello_from_body(body(extensions=None)))
    assert hello.server_name is None
    assert hello.alpn_protocols == ()


def test_empty_extensions_block():
    assert parse(hello_from_body(body(extensions=b""))).server_name is None


def test_legacy_version_reported():
    assert parse(hello_from_body(body(version=b"\x03\x01"))).legacy_version == 0x0301


def test_sni_and_alpn_from_hand_built_body():
    exts = ext(0xFF01, b"\x00") + sni_ext((0, b"Mixed.Case.")) + alpn_ext(b"h2", b"\xff\x00x")
    hello = parse(hello_from_body(body(extensions=exts)))
    assert hello.server_name == "Mixed.Case."
    assert hello.alpn_protocols == ("h2", "\xff\x00x")


@pytest.mark.parametrize(
    "entries",
    [
        [(0, b"other.example"), (0, b"app.example")],
        [(0, b"app.example"), (0, b"app.example")],
        [(7, b"x"), (0, b"first.example"), (0, b"second.example")],
        [(0, b"a.example"), (7, b"x"), (0, b"")],
    ],
)
def test_multiple_host_names_rejected(entries):
    assert reason_of(hello_from_body(body(extensions=sni_ext(*entries)))) == "multiple-sni"


@pytest.mark.parametrize("entries", [[(7, b"other"), (0, b"app.example")], [(0, b"app.example"), (7, b"other")]])
def test_sni_ignores_other_name_types(entries):
    assert parse(hello_from_body(body(extensions=sni_ext(*entries)))).server_name == "app.example"


def test_sni_without_host_name_entry():
    exts = sni_ext((7, b"other"))
    assert parse(hello_from_body(body(extensions=exts))).server_name is None


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": b"\x00" * 33},
        {"suites": b""},
        {"suites": b"\x13\x01\x13"},
        {"compression": b""},
        {"extensions": ext(0, b"")},
        {"extensions": sni_ext((0, b""))},
        {"extensions": sni_ext((0, b"caf\xc3\xa9.example"))},
        {"extensions": ext(0, b"\x00\x00")},
        {"extensions": ext(0, b"\x00\x05\x00\x00\x03ab")},
        {"extensions": ext(0, b"\x00\x05\x00\x00\x02abc")},
        {"extensions": ext(0, b"\x00\x06\x00\x00\x04abc")},
        {"extensions": sni_ext((0, b"a.example")) + sni_ext((0, b"b.example"))},
        {"extensions": alpn_ext(b"h2") + alpn_ext(b"h2")},
        {"extensions": ext(13, b"") + ext(13, b"")},
        {"extensions": ext(16, b"\x00\x00")},
        {"extensions": alpn_ext(b"h2", b"")},
        {"extensions": ext(16, b"\x00\x03\x02h2\x00")},
        {"extensions": ext(16, b"\x00\x04\x05h2")},
        {"extensions": b"\x00"},
        {"extensions": b"\x00\x00\x00\x05ab"},
    ],
)
def test_malformed_body(fields):
    assert reason_of(hello_from_body(body(**fields))) == "malformed"


@pytest.mark.parametrize("cut", [0, 1, 10, 34, 40])
def test_truncated_body_is_malformed(cut):
    assert reason_of(hello_from_body(body()[:cut])) == "malformed"


def test_stray_bytes_after_extensions():
    assert reason_of(hello_from_body(body(extensions=b"") + b"\x00")) == "malformed"


def test_extensions_length_overruns_message():
    data = body(extensions=None) + b"\x00\x10" + ext(13, b"")
    assert reason_of(hello_from_body(data)) == "malformed"


# --- build ------------------------------------------------------------------


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,4}", fullmatch=True)
protocols = st.lists(st.binary(min_size=1, max_size=20).map(lambda b: b.decode("latin-1")), max_size=5)


@settings(max_examples=200)
@given(
    server_name=st.none() | hostnames,
    alpn=protocols,
    record_size=st.none() | st.integers(1, 2**14),
)
def test_build_round_trip(server_name, alpn, record_size):
    data = build(server_name, alpn, record_size=record_size)
    hello = parse(data, max_records=UNCAPPED)
    assert hello == ClientHello(server_name, tuple(alpn), 0x0303, len(data))
    assume(len(data) > 1)
    assert parse(data[:-1], max_records=UNCAPPED) is None


def test_build_record_size():
    data = build("a.example", ["h2"], record_size=16)
    assert all(len(r) <= 16 for r in iter_fragments(data))
    assert len(list(iter_fragments(data))) > 5


def iter_fragments(records: bytes):
    pos = 0
    while pos < len(records):
        length = int.from_bytes(records[pos + 3 : pos + 5])
        yield records[pos + 5 : pos + 5 + length]
        pos += 5 + length


@pytest.mark.parametrize("record_size", [0, -1, 2**14 + 1])
def test_build_rejects_bad_record_size(record_size):
    with pytest.raises(ValueError):
        build("a.example", record_size=record_size)


def test_build_takes_its_random_from_the_caller():
    assert build("a.example") == build("a.example")  # deterministic: proto draws no randomness
    drawn = bytes(range(64))
    hello = build("a.example", random=drawn)
    assert drawn[:32] in hello and drawn[32:] in hello
    assert parse(hello).server_name == "a.example"
    with pytest.raises(ValueError):
        build("a.example", random=b"short")


def test_build_empty_host_name_is_malformed():
    assert reason_of(build("")) == "malformed"


def test_build_extra_extensions():
    assert reason_of(build("a.example", extra_extensions=sni_ext((0, b"b.example")))) == "malformed"
    assert parse(build(extra_extensions=sni_ext((0, b"b.example")))).server_name == "b.example"
