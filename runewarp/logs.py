"""One log line per event on stderr: timestamp, level, stable event name, key=value fields.

Event names are stable so operators can grep and alert on them; fields carry the
product words (public-hostname, tunnel, client-identity, reason ...).  The
buffered ClientHello is never a field.
"""

import json
import sys
from datetime import datetime, UTC

LEVELS = {"off": 100, "error": 40, "warn": 30, "info": 20, "debug": 10, "trace": 5}


def _utc_now():
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value):
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class Logger:
    """Formats events as text or JSON lines; cheap `enabled()` check for hot paths."""

    def __init__(self, level="info", fmt="text", stream=None):
        self.threshold = LEVELS[level]
        self.fmt = fmt
        self.stream = stream or sys.stderr

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
        fields = {k.replace("_", "-"): v for k, v in fields.items() if v is not None}
        if self.fmt == "json":
            line = json.dumps({"time": _utc_now(), "level": level, "event": event, **fields},
                              default=str)
        else:
            parts = [_utc_now(), level.upper().ljust(5), event]
            parts.extend(f"{k}={_text_value(v)}" for k, v in fields.items())
            line = " ".join(parts)
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def error(self, event, **fields):
        self.log("error", event, **fields)

    def warn(self, event, **fields):
        self.log("warn", event, **fields)

    def info(self, event, **fields):
        self.log("info", event, **fields)

    def debug(self, event, **fields):
        self.log("debug", event, **fields)

    def trace(self, event, **fields):
        self.log("trace", event, **fields)


class RateLimitedWarning:
    """One warning line per scope per `interval` seconds, then one recovery line.

    Repeated saturation and auth-failure warnings would otherwise flood the log
    exactly when an operator needs to read it.
    """

    def __init__(self, logger, event, interval=10.0):
        self.logger = logger
        self.event = event
        self.interval = interval
        self._last = {}
        self._suppressed = {}

    def warn(self, scope, now, **fields):
        last = self._last.get(scope)
        if last is not None and now - last < self.interval:
            self._suppressed[scope] = self._suppressed.get(scope, 0) + 1
            return
        suppressed = self._suppressed.pop(scope, 0)
        self._last[scope] = now
        self.logger.warn(self.event, scope=scope, suppressed=suppressed or None, **fields)

    def recovered(self, scope, **fields):
        if self._last.pop(scope, None) is not None:
            suppressed = self._suppressed.pop(scope, 0)
            self.logger.info(self.event + "-recovered", scope=scope,
                             suppressed=suppressed or None, **fields)


log = Logger()
