"""Log lines: peer data can never forge lines or drive a terminal; warnings stay bounded."""

import io
import json
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.logs import Logger, RateLimitedWarning

# key=value where value is either bare (no space) or a JSON string literal.
FIELD = re.compile(r' ([^ =]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?= |$)')
HEADER = re.compile(r"^\S+ [A-Z]+ +(\S+)")


def one_line(logger_stream) -> str:
    text = logger_stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text[:-1]


def text_line(**fields) -> str:
    out = io.StringIO()
    Logger("info", stream=out).info("peer-said", **fields)
    return one_line(out)


def parse_text(line: str) -> tuple[str, dict]:
    """Inverse of the text format: event name and fields (quoted values JSON-decoded)."""
    event = HEADER.match(line).group(1)
    rest = line[HEADER.match(line).end():]
    fields = {}
    position = 0
    for match in FIELD.finditer(rest):
        assert match.start() == position, f"unparsed text in {rest!r}"
        key, value = match.groups()
        fields[key] = json.loads(value) if value.startswith('"') else value
        position = match.end()
    assert position == len(rest), f"unparsed text in {rest!r}"
    return event, fields


def assert_no_raw_controls(line: str) -> None:
    bad = [c for c in line if not c.isprintable()]
    assert not bad, f"raw {[hex(ord(c)) for c in bad]} in {line!r}"


CONTROLS = (
    [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u2028", "\u2029", "\u200b", "\u202e", "\ufeff", "\u00a0", "\U000e0001", "\udcff",
       "\U000f0000"]
)


@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_non_printable_character_is_escaped(char):
    value = f"a{char}b"
    line = text_line(reason=value)
    assert_no_raw_controls(line)
    assert parse_text(line)[1] == {"reason": value}


@pytest.mark.parametrize("value", [
    "\r\x1b[2J", "x\n2024-01-01T00:00:00.000Z ERROR forged-event", "\x1b]0;title\x07",
    "\x85next", "a\u2028b", "tab\there", 'quote" back\\slash', "", " ", "=", "a=b c=d",
    "\\", '"', "ends with \\",
])
def test_hostile_values_round_trip(value):
    line = text_line(reason=value, tunnel="apps")
    assert_no_raw_controls(line)
    assert parse_text(line) == ("peer-said", {"reason": value, "tunnel": "apps"})


def test_plain_and_printable_non_ascii_values_stay_readable():
    line = text_line(public_hostname="app.example.com", reason="bücher", count=3)
    assert line.endswith(" public-hostname=app.example.com reason=bücher count=3")


def test_event_name_and_keys_are_escaped_too():
    out = io.StringIO()
    Logger("info", stream=out).info("ev\r\x1b[2Jil", **{"k\x1bey": "v", "a=b": "c"})
    line = one_line(out)
    assert_no_raw_controls(line)
    assert "\x1b" not in line and "\r" not in line


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_text_value_is_one_clean_line_that_round_trips(value):
    line = text_line(reason=value)
    assert_no_raw_controls(line)
    assert parse_text(line)[1] == {"reason": value}


class Weird:
    def __str__(self):
        return "obj\r\n\x1b[2J"


@pytest.mark.parametrize("value", ["\r\x1b[2J\u2028\x85\udcff", Weird(), float("nan"),
                                   float("inf"), {1: 2}, b"\x00bytes"])
def test_json_lines_stay_valid_json(value):
    out = io.StringIO()
    Logger("info", fmt="json", stream=out).warn("peer-said", reason=value, tunnel="apps")
    line = one_line(out)
    assert_no_raw_controls(line)
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert record["event"] == "peer-said" and record["tunnel"] == "apps"
    assert "reason" in record


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_json_any_text_round_trips(value):
    out = io.StringIO()
    Logger("info", fmt="json", stream=out).info("e", reason=value)
    assert json.loads(one_line(out))["reason"] == value


def test_text_value_classes_cover_unicode_categories():
    """Every character Python will not print is escaped, whatever its category."""
    for category_sample in ("\u0600", "\u2066", "\ue000", "\U0010fffd"):
        assert not category_sample.isprintable(), unicodedata.category(category_sample)
        assert_no_raw_controls(text_line(reason=category_sample))


# --------------------------------------------------------------------------
# RateLimitedWarning


class Lines:
    def __init__(self):
        self.out = io.StringIO()
        self.log = Logger("info", stream=self.out)

    def events(self):
        return [parse_text(line) for line in self.out.getvalue().splitlines()]


def test_one_line_per_scope_per_interval_then_recovery():
    lines = Lines()
    warning = RateLimitedWarning(lines.log, "tunnel-connection-refused", interval=10.0)
    warning.warn("10.0.0.1", 0.0)
    warning.warn("10.0.0.1", 1.0)
    warning.warn("10.0.0.1", 2.0)
    warning.warn("10.0.0.1", 11.0)
    warning.warn("10.0.0.1", 12.0)
    warning.recovered("10.0.0.1")
    assert lines.events() == [
        ("tunnel-connection-refused", {"scope": "10.0.0.1"}),
        ("tunnel-connection-refused", {"scope": "10.0.0.1", "suppressed": "2"}),
        ("tunnel-connection-refused-recovered", {"scope": "10.0.0.1", "suppressed": "1"}),
    ]


def test_many_scopes_keep_the_table_and_the_log_bounded():
    lines = Lines()
    warning = RateLimitedWarning(lines.log, "tunnel-connection-refused", interval=10.0,
                                 max_scopes=64)
    span = 0.0
    for i in range(100_000):
        now = i * 0.001  # 100 000 addresses over 100 s: ten intervals
        warning.warn(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", now, peer=f"p{i}")
        assert len(warning) <= 64
        span = now
    emitted = len(lines.events())
    intervals = span / 10.0 + 1
    assert emitted <= intervals * (64 + 1)
    assert any(fields.get("scope") == "other" for _, fields in lines.events())


def test_overflow_is_rate_limited_as_one_scope():
    lines = Lines()
    warning = RateLimitedWarning(lines.log, "refused", interval=10.0, max_scopes=2)
    for i in range(1000):
        warning.warn(f"s{i}", 1.0)
    assert [f["scope"] for _, f in lines.events()] == ["s0", "s1", "other"]
    warning.warn("s5000", 12.0)  # expired entries make room for a new scope again
    assert lines.events()[-1][1]["scope"] == "s5000"
    assert len(warning) <= 2


def test_full_table_reports_overflow_suppressions():
    lines = Lines()
    warning = RateLimitedWarning(lines.log, "refused", interval=10.0, max_scopes=1)
    warning.warn("a", 0.0)
    for i in range(5):
        warning.warn(f"b{i}", 1.0)
    warning.warn("a", 5.0)  # live entries are never evicted, so "a" is still limited
    warning.warn("c", 11.5)
    assert [f for _, f in lines.events()] == [
        {"scope": "a"}, {"scope": "other"}, {"scope": "c"}]
    warning.warn("d", 12.0)  # "c" is live: "d" joins the overflow, whose interval has passed
    assert lines.events()[-1][1] == {"scope": "other", "suppressed": "4"}


def test_recovery_still_works_for_a_scope_that_was_not_pruned():
    lines = Lines()
    warning = RateLimitedWarning(lines.log, "server-saturated", interval=10.0, max_scopes=4)
    warning.warn("intake-full", 0.0)
    warning.recovered("intake-full")
    warning.recovered("intake-full")
    assert [e for e, _ in lines.events()] == ["server-saturated", "server-saturated-recovered"]


# -- trace level: one line per mux frame, headers only --

def _tunnel_exchange(level):
    """Two real mux sessions over loopback TCP; one stream carries a payload both ways.

    Returns the text lines the Client side logged at `level`.
    """
    import gevent

    from runewarp.io.tunnel import TunnelSession
    from runewarp.proto.mux import Role

    from .io.test_splice import _Log, pair

    out = io.StringIO()
    near, far = pair()
    accepted = []
    server = TunnelSession(far, Role.SERVER, on_stream=lambda _s, st: accepted.append(st),
                           log=_Log())
    client = TunnelSession(near, Role.CLIENT, on_stream=lambda _s, st: None,
                           log=Logger(level, stream=out), name="tunnel.example.com:443")
    server.start()
    client.start()
    try:
        stream = client.open_stream()
        stream.sendall(SECRET)
        with gevent.Timeout(5):
            while not accepted:
                gevent.sleep(0.01)
            assert accepted[0].recv_consumed() == SECRET
            accepted[0].sendall(SECRET[::-1])
            assert stream.recv_consumed() == SECRET[::-1]
            stream.end()
            accepted[0].end()
            assert stream.recv_consumed() == b""
            gevent.sleep(0.05)  # the last FIN reaches the writer
    finally:
        client.close()
        server.close()
    return out.getvalue().splitlines()


SECRET = b"payload-bytes-never-logged:" + bytes(range(256))


def test_trace_logs_every_frame_header_and_never_a_payload_byte():
    lines = _tunnel_exchange("trace")
    frames = [parse_text(line) for line in lines]
    assert frames, "no trace lines"
    assert {event for event, _ in frames} == {"mux-frame-sent", "mux-frame-received"}
    sent = [f for e, f in frames if e == "mux-frame-sent"]
    received = [f for e, f in frames if e == "mux-frame-received"]
    assert {"type": "window-update", "flags": "SYN", "stream": "1", "length": "0",
            "connection": "tunnel.example.com:443"} in sent
    assert {"type": "data", "flags": "-", "stream": "1", "length": str(len(SECRET)),
            "connection": "tunnel.example.com:443"} in sent
    assert {"type": "window-update", "flags": "ACK", "stream": "1", "length": "0",
            "connection": "tunnel.example.com:443"} in received
    assert {"type": "data", "flags": "-", "stream": "1", "length": str(len(SECRET))} \
        .items() <= next(f for f in received if f["type"] == "data").items()
    assert any(f["flags"] == "FIN" for f in sent) and any(f["flags"] == "FIN" for f in received)
    for line in lines:
        assert line.split()[1] == "TRACE"
        assert "payload-bytes" not in line and "never-logged" not in line


def test_debug_logs_no_frame_lines():
    assert not [line for line in _tunnel_exchange("debug") if "mux-frame" in line]


def test_frame_headers_walks_whole_frames_and_names_them():
    from runewarp.proto.mux import (FLAG_ACK, FLAG_SYN, TYPE_DATA, TYPE_PING,
                                    TYPE_WINDOW_UPDATE, describe_header, encode_header,
                                    frame_headers)

    wire = (encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + encode_header(TYPE_DATA, 0, 1, 5)
            + b"hello" + encode_header(TYPE_PING, FLAG_SYN | FLAG_ACK, 0, 7))
    assert list(frame_headers(wire)) == [(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), (TYPE_DATA, 0, 1, 5),
                                         (TYPE_PING, FLAG_SYN | FLAG_ACK, 0, 7)]
    assert describe_header(TYPE_PING, FLAG_SYN | FLAG_ACK, 0, 7) == \
        {"type": "ping", "flags": "SYN|ACK", "stream": 0, "length": 7}
    assert describe_header(9, 0x30, 2, 0) == {"type": "9", "flags": "0x30", "stream": 2, "length": 0}


@pytest.mark.parametrize("seconds,text", [(0.0, "0s"), (0.0001, "0s"), (0.23, "0.23s"), (1.0, "1s"),
                                          (12.0, "12s"), (41.2345, "41.234s"), (0.1204, "0.12s"),
                                          (1234567.891, "1234567.891s"), (30.0, "30s")])
def test_durations_are_logged_as_they_are(seconds, text):
    """A float field is seconds: `next-retry-delay=0.23s`, never rounded up to whole seconds."""
    assert text_line(next_retry_delay=seconds).endswith(f" next-retry-delay={text}")


def test_json_carries_numbers_as_numbers():
    out = io.StringIO()
    Logger("info", fmt="json", stream=out).info(
        "visitor-closed", bytes_up=517, bytes_down=3_000_000, duration=1.23456789, reason="done")
    record = json.loads(one_line(out))
    assert record["bytes-up"] == 517 and isinstance(record["bytes-up"], int)
    assert record["bytes-down"] == 3_000_000
    assert record["duration"] == 1.234568 and isinstance(record["duration"], float)


def test_text_keeps_ints_and_booleans_without_a_unit():
    assert text_line(bytes_up=517, complete=False).endswith(" bytes-up=517 complete=False")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_peer_driven_events_are_budgeted_and_the_next_line_counts_the_dropped():
    out, clock = io.StringIO(), Clock()
    logger = Logger("debug", stream=out, clock=clock)
    for port in range(1500):
        logger.debug("visitor-rejected", visitor=f"203.0.113.9:{port}", reason="unknown-hostname")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1000  # the burst
    clock.now = 1.0  # a second later: 20 more lines
    for port in range(100):
        logger.debug("visitor-rejected", visitor=f"203.0.113.9:{port}", reason="not-tls")
    events = [parse_text(line) for line in out.getvalue().splitlines()[1000:]]
    assert len(events) == 20
    assert events[0][1]["suppressed"] == "500"
    assert "suppressed" not in events[1][1]


def test_the_budget_refills_to_its_burst_and_never_beyond():
    out, clock = io.StringIO(), Clock()
    logger = Logger("debug", stream=out, clock=clock)
    logger.debug("stream-rejected", reason="no-service")
    clock.now = 3600.0
    for _ in range(1200):
        logger.debug("stream-rejected", reason="no-service")
    assert len(out.getvalue().splitlines()) == 1 + 1000


def test_budgets_cost_nothing_below_the_level_and_spare_other_events():
    out, clock = io.StringIO(), Clock()
    logger = Logger("info", stream=out, clock=clock)
    for _ in range(2000):
        logger.debug("visitor-rejected", reason="not-tls")  # below the threshold: no token taken
        logger.info("visitor-closed", reason="done")
    assert logger.budgets["visitor-rejected"].tokens == 1000
    assert len(out.getvalue().splitlines()) == 2000


class _CountingStream:
    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


def test_deferred_writes_leave_once_per_loop_turn_in_order():
    stream, callbacks = _CountingStream(), []
    log = Logger("info", "text", stream=stream)
    log.defer_writes(callbacks.append)
    for n in range(3):
        log.info("visitor-closed", n=n)
    assert stream.writes == [] and callbacks == [log.flush]  # one callback for the turn
    callbacks.pop()()
    assert len(stream.writes) == 1
    assert [line.rsplit("n=", 1)[1] for line in stream.writes[0].splitlines()] == ["0", "1", "2"]
    log.info("shutdown-complete")
    log.flush()  # what Lifecycle.run's finally (and atexit) do
    assert stream.writes[1].endswith("shutdown-complete\n")


def test_log_file_is_reopened_at_its_path_after_a_move(tmp_path):
    """logrotate moves the file; reopen() (SIGUSR1) starts a fresh one at the configured path,
    and a reopen that fails keeps the open file and says so there."""
    path = tmp_path / "logs/server.log"
    logger = Logger("info")
    logger.open_file(path)
    logger.info("before-rotation")
    rotated = path.rename(tmp_path / "logs/server.log.1")
    logger.info("still-the-old-file")
    logger.reopen()
    logger.info("after-rotation")
    assert "before-rotation" in rotated.read_text() and "still-the-old-file" in rotated.read_text()
    assert "after-rotation" not in rotated.read_text()
    assert "after-rotation" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    moved = path.parent.rename(tmp_path / "old-logs") / "server.log"
    path.parent.write_text("")  # a file where the folder was: the reopen fails
    logger.reopen()
    logger.info("kept")
    lines = moved.read_text().splitlines()
    assert "ERROR log-reopen-failed" in lines[-2] and f"path={path}" in lines[-2]
    assert "kept" in lines[-1]


def test_reopen_without_a_log_file_does_nothing():
    out = io.StringIO()
    logger = Logger("info", stream=out)
    logger.reopen()
    logger.info("still-here")
    assert "still-here" in out.getvalue()


def test_timestamp_is_utc_with_milliseconds_and_follows_the_clock(monkeypatch):
    """The date and time of day are formatted once a second; the milliseconds never stale."""
    import runewarp.logs as logs
    from datetime import UTC, datetime

    for now in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_699_999_999.25):
        monkeypatch.setattr(logs.time, "time", lambda now=now: now)
        expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        assert logs._utc_now() == expected.replace("+00:00", "Z")


def test_filtered_lines_write_nothing_and_keys_are_spelled_once():
    out = io.StringIO()
    logger = Logger("info", stream=out)
    logger.debug("stream-routed", public_hostname="a.example")
    logger.trace("mux-frame-sent", stream=2)
    assert out.getvalue() == ""
    logger.info("stream-closed", public_hostname="a.example", bytes_up=5, visitor=None)
    logger.info("stream-closed", public_hostname="b.example", bytes_up=True)
    first, second = out.getvalue().splitlines()
    assert parse_text(first) == ("stream-closed", {"public-hostname": "a.example", "bytes-up": "5"})
    assert parse_text(second)[1] == {"public-hostname": "b.example", "bytes-up": "True"}
