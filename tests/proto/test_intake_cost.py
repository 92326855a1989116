"""CPU per intake is linear in its bytes, however a peer slices them.

Work is counted, not timed: a tracer counts the bytecode instructions run in
the parser and intake modules, which is deterministic. Doubling a hello must
about double the count; the old re-parse-after-every-read intake quadrupled it
when the hello came as 1-byte records (an attacker's choice).
"""

import sys
from pathlib import Path

import pytest

from runewarp.io import intake as intake_module
from runewarp.io.intake import IntakeRejected, read_client_hello
from runewarp.proto import clienthello
from tests.clienthellos import build

COUNTED = {Path(clienthello.__file__).resolve(), Path(intake_module.__file__).resolve()}
UNCAPPED = 10**6  # lift the record cap, so 1-byte records reach the reassembly code
CCS = b"\x14\x03\x03\x00\x01\x01"
PER_BYTE = 300  # instructions per byte fed: a generous bound (about 120 are needed)


class OverBudget(AssertionError):
    pass


def count_instructions(fn, budget=None):
    """(fn's result, bytecode instructions executed in COUNTED files while it ran).

    Stops fn with OverBudget past `budget` instructions, so quadratic code fails fast.
    """
    count = 0
    files: dict[str, bool] = {}

    def local(frame, event, arg):
        nonlocal count
        if event == "opcode":
            count += 1
            if budget is not None and count > budget:
                raise OverBudget(f"more than {budget} instructions")
        return local

    def global_(frame, event, arg):
        name = frame.f_code.co_filename
        if name not in files:
            files[name] = Path(name).resolve() in COUNTED
        if not files[name]:
            return None
        frame.f_trace_opcodes = True
        return local

    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        result = fn()
    finally:
        sys.settrace(previous)
    return result, count


def padded(message_size: int, record_size: int) -> bytes:
    """A hello whose handshake message is `message_size` bytes, in records of `record_size`."""
    base = len(build("app.example.com")) - 5
    pad = b"\x00\x15" + (message_size - base - 4).to_bytes(2) + bytes(message_size - base - 4)
    data = build("app.example.com", record_size=record_size, extra_extensions=pad)
    assert sum(data[i + 3] << 8 | data[i + 4] for i in _record_starts(data)) == message_size
    return data


def _record_starts(data: bytes):
    pos = 0
    while pos < len(data):
        yield pos
        pos += 5 + int.from_bytes(data[pos + 3 : pos + 5])


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def feed_all(pieces, max_records):
    parser = clienthello.ClientHelloParser(max_records=max_records)
    results = [parser.feed(piece) for piece in pieces]
    assert results[:-1] == [None] * (len(results) - 1)
    return results[-1]


# (record_size, chunk_size): the attacker's 1-byte records and 1-byte segments,
# and the ordinary shapes, which must stay linear too.
SHAPES = [(1, 1), (1, 7), (1, None), (2**14, 1), (3, 2), (100, 1), (2**14, None)]


@pytest.mark.parametrize(("record_size", "chunk_size"), SHAPES)
def test_parser_work_is_linear_in_bytes(record_size, chunk_size):
    counts = []
    for message_size in (400, 800):
        data = padded(message_size, record_size)
        pieces = chunks(data, chunk_size or len(data))
        budget = PER_BYTE * len(data)
        hello, count = count_instructions(lambda pieces=pieces: feed_all(pieces, UNCAPPED), budget)
        assert hello.server_name == "app.example.com"
        assert hello.consumed == len(data)
        counts.append((len(data), count))
    (n, small), (n2, large) = counts
    assert n2 < 2.1 * n
    assert large < 2.5 * small, counts  # linear: ~2x; quadratic: ~4x


@pytest.mark.parametrize(("record_size", "chunk_size"), [(1, 1), (1, 5), (2**14, 1), (9, 4)])
def test_intake_work_is_linear_in_bytes(monkeypatch, record_size, chunk_size):
    monkeypatch.setattr(clienthello, "MAX_RECORDS", UNCAPPED)
    counts = []
    for message_size in (400, 800):
        data = padded(message_size, record_size) + CCS
        pieces = iter(chunks(data, chunk_size))
        budget = PER_BYTE * len(data)
        taken, count = count_instructions(lambda pieces=pieces: read_client_hello(lambda: next(pieces, b"")), budget)
        assert taken.hostname == "app.example.com"
        assert taken.buffered == data[: len(taken.buffered)]
        counts.append((len(data), count))
    (n, small), (n2, large) = counts
    assert large < 2.5 * small, counts


def test_record_cap_bounds_the_work_of_1_byte_records():
    data = padded(4000, 1)
    reason, count = count_instructions(lambda: _reason(chunks(data, 1)), PER_BYTE * 6 * clienthello.MAX_RECORDS)
    assert reason == "too-many-records"


def _reason(pieces):
    parser = clienthello.ClientHelloParser()
    with pytest.raises(clienthello.ClientHelloError) as info:
        for piece in pieces:
            parser.feed(piece)
    return info.value.reason


def test_counter_sees_quadratic_work():
    """The yardstick itself: re-parsing the growing buffer after every byte is caught."""

    def reparse(data):
        for end in range(1, len(data) + 1):
            assert clienthello.parse(data[:end], max_records=UNCAPPED) is None

    data = padded(400, 1)
    counts = [count_instructions(lambda n=n: reparse(data[:n]))[1] for n in (150, 300)]
    assert counts[1] > 3.5 * counts[0]


# --- intake ---------------------------------------------------------------------


@pytest.mark.parametrize("initial_size", [0, 1, 10, 300])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_intake_buffers_exactly_the_bytes_read(initial_size, chunk_size):
    data = build("App.Example.com", ["h2"], record_size=200) + CCS + b"\x17\x03\x03\x00\x02hi"
    initial, rest = data[:initial_size], data[initial_size:]
    pieces = iter(chunks(rest, chunk_size))
    read = []
    taken = read_client_hello(lambda: read.append(next(pieces, b"")) or read[-1], initial)
    assert taken.buffered == initial + b"".join(read)
    assert len(taken.buffered) >= taken.hello.consumed
    assert taken.size == len(taken.buffered)
    assert taken.hostname == "app.example.com"


def sni_hello(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + len(n).to_bytes(2) + n for n in names)
    extension = b"\x00\x00" + (len(entries) + 2).to_bytes(2) + len(entries).to_bytes(2) + entries
    return build(None, extra_extensions=extension)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (sni_hello(b"other.example", b"app.example"), "multiple-sni"),
        (padded(400, 1), "too-many-records"),
        (b"GET / HTTP/1.1\r\n", "not-tls"),
        (build(None), "no-sni"),
        (build("app.example.com")[:-1], "closed-before-client-hello"),
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 10**6])
def test_intake_rejects_with_the_parser_reason(data, reason, chunk_size):
    pieces = iter(chunks(data, chunk_size))
    with pytest.raises(IntakeRejected) as info:
        read_client_hello(lambda: next(pieces, b""))
    assert info.value.reason == reason


def test_single_host_name_still_routes():
    pieces = iter([sni_hello(b"App.Example.com")])
    assert read_client_hello(lambda: next(pieces, b"")).hostname == "app.example.com"
