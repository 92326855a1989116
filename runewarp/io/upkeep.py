"""The periodic certificate check: a greenlet that runs one pass every interval.

The pass itself (what is due, what to log) belongs to its owner; this only
schedules it and keeps a failed pass from ending the schedule.

Knob for tests and operations (environment): ``RUNEWARP_CERT_CHECK_SECONDS``,
the interval, default 3600.
"""

import datetime as _dt
import os

import gevent

CHECK_SECONDS = 3600.0


def utcnow():
    return _dt.datetime.now(_dt.UTC)


def check_seconds(default=CHECK_SECONDS):
    """RUNEWARP_CERT_CHECK_SECONDS when it is a positive number, else `default`."""
    try:
        value = float(os.environ.get("RUNEWARP_CERT_CHECK_SECONDS", ""))
    except ValueError:
        return default
    return value if value > 0 else default


class Periodic:
    """Call `step()` every `interval` seconds until `stopped()` is true or `stop()` is called.

    An exception from `step` is logged as `event` (error, with `reason`) and the
    schedule goes on: the next pass may succeed.
    """

    def __init__(self, step, interval, log, event, stopped=lambda: False):
        self.step = step
        self.interval = interval
        self.log = log
        self.event = event
        self.stopped = stopped
        self.greenlet = None

    def start(self):
        if self.greenlet is None or self.greenlet.dead:
            self.greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        if self.greenlet is not None:
            self.greenlet.kill(block=False)
            self.greenlet = None

    def _run(self):
        while True:
            gevent.sleep(self.interval)
            if self.stopped():
                return
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the schedule must survive any pass
                self.log.error(self.event, reason=f"{exc.__class__.__name__}: {exc}")
