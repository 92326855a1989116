"""One log line per event on stderr: timestamp, level, stable event name, key=value fields.

Event names are stable so operators can grep and alert on them; fields carry the
product words (public-hostname, tunnel, client-identity, reason ...).  The
buffered ClientHello is never a field.

Field values often carry peer data (SNI, error text, hello fields), so in text
logs every character Python does not consider printable -- C0/C1 controls, DEL,
NEL, U+2028/2029, bidi and zero-width format characters, lone surrogates -- is
escaped: a value holding one is written as a JSON string literal with \\uXXXX
escapes.  A log line therefore never contains a raw control character, cannot
forge a second line and cannot drive the terminal tailing it.  Printable
non-ASCII ("bücher") is kept as is, because it is readable and harmless.

Numbers stay numbers: an int (bytes, counts) is written as is, and a float is
always a duration in seconds -- `duration=1.234s` in text (at most three
decimals), a JSON number (rounded to microseconds) in JSON.
"""

import atexit
import json
import math
import os
import re
import sys
import time
from collections import OrderedDict
from datetime import datetime, UTC

LEVELS = {"off": 100, "error": 40, "warn": 30, "info": 20, "debug": 10, "trace": 5}


_second = [None, ""]  # the last whole second formatted, and its text up to the seconds


def _utc_now():
    """ISO 8601 UTC with milliseconds; the date and time of day are formatted once a second
    (an access-log line per connection made this a tenth of the line's cost)."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c):
    short = _SHORT_ESCAPES.get(c)
    if short is not None:
        return short
    if c.isprintable():
        return c
    code = ord(c)
    if code > 0xFFFF:  # JSON spells astral code points as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _quote(text):
    """`text` as a JSON string literal that keeps printable non-ASCII readable."""
    return '"' + "".join(map(_escape_char, text)) + '"'


# A bare value ends at the next space, so these would make it ambiguous.
_NEEDS_QUOTES = re.compile(r'[ "=]')


def _seconds(value):
    """A float field as text: 0.23s, 1.234s, 30s (three decimals at most, never rounded up)."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _text_value(value):
    if type(value) is int:  # counts and bytes: nothing to quote
        return str(value)
    if isinstance(value, float):
        return _seconds(value)
    text = str(value)
    if text == "" or not text.isprintable() or _NEEDS_QUOTES.search(text):
        return _quote(text)
    return text


# Event names and keys are ours today; anything else is quoted, cheaply checked.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")


def _text_name(name):
    name = str(name)
    return name if _SAFE_NAME.fullmatch(name) else _quote(name)


_keys = {}  # a field's keyword -> "key=" as written: the few keys the code uses, each once


def _text_key(keyword):
    text = _keys.get(keyword)
    if text is None:
        if len(_keys) >= 1024:  # a bound, should a caller ever pass keys from data
            _keys.clear()
        text = _keys[keyword] = _text_name(keyword.replace("_", "-")) + "="
    return text


def _json_line(record):
    """JSON that any parser accepts: NaN/Infinity and odd keys fall back to strings."""
    record = {k: round(v, 6) if isinstance(v, float) and math.isfinite(v) else v
              for k, v in record.items()}
    try:
        return json.dumps(record, default=str, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps({str(k): v if isinstance(v, str | int) or
                           (isinstance(v, float) and math.isfinite(v)) else str(v)
                           for k, v in record.items()})


# Events any peer can cause once per connection: a flood must not fill the disk.
PEER_DRIVEN_EVENTS = ("visitor-rejected", "stream-rejected", "connection-shed")


class LineBudget:
    """A token bucket of log lines: `burst` at once, then `rate` a second.

    `take(now)` is None for a line to drop, else how many were dropped since the
    last line that passed (that line carries them as `suppressed`).
    """

    __slots__ = ("burst", "rate", "tokens", "last", "dropped")

    def __init__(self, burst=1000, rate=20.0):
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.last = None
        self.dropped = 0

    def take(self, now):
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            self.dropped += 1
            return None
        self.tokens -= 1
        dropped, self.dropped = self.dropped, 0
        return dropped


class Logger:
    """Formats events as text or JSON lines; cheap `enabled()` check for hot paths.

    Events in `budgets` (by default PEER_DRIVEN_EVENTS) share a LineBudget each, checked
    only once a line passed the level threshold.
    """

    def __init__(self, level="info", fmt="text", stream=None, clock=time.monotonic):
        self.threshold = LEVELS[level]
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self.clock = clock
        self.budgets = {event: LineBudget() for event in PEER_DRIVEN_EVENTS}
        self._schedule = None  # set by defer_writes(): lines then leave once per loop turn
        self._pending = []
        self.path = None  # set by open_file(): the log file reopen() opens again
        self._std = False
        self._file = None  # the file object open_file() opened, closed by the next reopen
        self.context = {}  # fields every line carries first (a supervisor's worker: `worker=i`)

    def defer_writes(self, schedule):
        """Under an event loop, join the lines of one loop turn into one write.

        `schedule(callback)` runs `callback` once the current turn's work is done
        (gevent: `hub.loop.run_callback`).  A busy process then makes one system
        call, and wakes the reader of stderr (journald) once, for many lines
        instead of once per line.  `flush()` writes what is pending; it also runs
        at exit, so no line is lost when the process ends.
        """
        self._schedule = schedule
        atexit.register(self.flush)

    def open_file(self, path, std=False):
        """Append lines to the file at `path` (folder created) instead of stderr.

        `std` (a detached process) points fds 1 and 2 at the file too, so a traceback
        or a print lands beside the lines.  Raises OSError when it cannot be opened.
        """
        self.path, self._std = path, std
        self._open()

    def reopen(self):
        """Open the log file again at its path (SIGUSR1, after logrotate moved it away);
        a failure keeps the open file and says so in it."""
        if self.path is None:
            return
        try:
            self._open()
        except OSError as exc:
            self.error("log-reopen-failed", path=str(self.path),
                       reason=(exc.strerror or str(exc)).lower(), kept="the open log file")

    def _open(self):
        self.flush()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if self._std:
            for target in (1, 2):
                os.dup2(fd, target)
            os.close(fd)
            opened, self.stream = None, sys.__stderr__
        else:
            opened = self.stream = open(fd, "a", encoding="utf-8", errors="backslashreplace")
        if self._file is not None:
            self._file.close()  # the file moved away by logrotate: its lines are complete
        self._file = opened

    def flush(self):
        if self._pending:
            lines, self._pending = self._pending, []
            self._write("\n".join(lines) + "\n")

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def configure(self, level=None, fmt=None):
        if level is not None:
            self.threshold = LEVELS[level]
        if fmt is not None:
            self.fmt = fmt

    def enabled(self, level):
        return LEVELS[level] >= self.threshold

    def log(self, level, event, **fields):
        if LEVELS[level] < self.threshold:
            return
        budget = self.budgets.get(event)
        if budget is not None:
            dropped = budget.take(self.clock())
            if dropped is None:
                return
            fields["suppressed"] = dropped or None
        if self.context:
            fields = {**self.context, **fields}
        if self.fmt == "json":
            fields = {k.replace("_", "-"): v for k, v in fields.items() if v is not None}
            line = _json_line({"time": _utc_now(), "level": level, "event": event, **fields})
        else:
            parts = [_utc_now(), level.upper().ljust(5), _text_name(event)]
            parts.extend(_text_key(k) + _text_value(v) for k, v in fields.items() if v is not None)
            line = " ".join(parts)
        if self._schedule is None:
            self._write(line + "\n")
            return
        self._pending.append(line)
        if len(self._pending) == 1:
            self._schedule(self.flush)

    def error(self, event, **fields):
        self.log("error", event, **fields)

    def warn(self, event, **fields):
        self.log("warn", event, **fields)

    def info(self, event, **fields):
        self.log("info", event, **fields)

    def debug(self, event, **fields):
        if self.threshold <= LEVELS["debug"]:  # filtered out: no second call, no kwargs copy
            self.log("debug", event, **fields)

    def trace(self, event, **fields):
        if self.threshold <= LEVELS["trace"]:
            self.log("trace", event, **fields)


class RateLimitedWarning:
    """One warning line per scope per `interval` seconds, then one recovery line.

    Repeated saturation and auth-failure warnings would otherwise flood the log
    exactly when an operator needs to read it.

    Scopes may come from peers (the Server scopes auth failures by peer IP), so the
    table holds at most `max_scopes` of them.  A new scope that finds it full first
    prunes entries whose interval has passed (oldest first; their unreported
    suppressed count and pending recovery line are dropped); if every entry is
    still live, the scope is folded into one shared `overflow_scope`, itself limited
    to one line per interval.  Live entries are never evicted: evicting them would
    let an attacker cycling through addresses buy one line per address.  So a flood
    from any number of scopes costs at most max_scopes + 1 lines per interval.
    """

    def __init__(self, logger, event, interval=10.0, max_scopes=1024, overflow_scope="other"):
        self.logger = logger
        self.event = event
        self.interval = interval
        self.max_scopes = max_scopes
        self.overflow_scope = overflow_scope
        self._entries = OrderedDict()  # scope -> [last line time, suppressed]; oldest first
        self._overflow = [None, 0]

    def __len__(self):
        return len(self._entries)

    def _prune(self, now):
        entries = self._entries
        while entries:
            scope, (last, _) = next(iter(entries.items()))
            if now - last < self.interval:
                return
            del entries[scope]

    def warn(self, scope, now, **fields):
        entry = self._entries.get(scope)
        if entry is None:
            if len(self._entries) >= self.max_scopes:
                self._prune(now)
            if len(self._entries) >= self.max_scopes:
                entry, scope = self._overflow, self.overflow_scope
            else:
                entry = self._entries[scope] = [None, 0]
        last, suppressed = entry
        if last is not None and now - last < self.interval:
            entry[1] += 1
            return
        entry[:] = [now, 0]
        if entry is not self._overflow:
            self._entries.move_to_end(scope)  # keeps the table ordered by last line time
        self.logger.warn(self.event, scope=scope, suppressed=suppressed or None, **fields)

    def recovered(self, scope, **fields):
        entry = self._entries.pop(scope, None)
        if entry is not None:
            self.logger.info(self.event + "-recovered", scope=scope,
                             suppressed=entry[1] or None, **fields)


log = Logger()
