"""Timeouts for splices, judged by one sweeper greenlet per registry instead of a timer each.

Bytes moving must cost next to nothing, so the pumps never read a clock: they only
reset `splice.idle` to 0.  Every `tick` the Sweeper adds one to each live splice's
counter and aborts, through `Splice.fail(reason)`, the splices whose counter (or,
for the first byte, whose age in ticks) passed a timeout.  The pass is O(live
splices) with a few integer operations each (16,384 idle splices: about 1 ms), and
the greenlet runs only while a splice lives.  A timeout fires no earlier than its
value and less than two ticks after it (one tick when it is a multiple of the tick).
"""

import dataclasses
import math

import gevent
from gevent import get_hub

_NEVER = 1 << 62  # the limit of a timeout that is off; Splice.born once b has spoken


@dataclasses.dataclass(frozen=True)
class SpliceTimeouts:
    """When a splice that stopped moving bytes is aborted (seconds; None disables each).

    idle: no byte moved in either direction.  half_closed: one direction ended with a
    FIN and the other moved nothing since.  first_byte: nothing came from end `b` (on
    the Server, the stream toward the Client, so the backend) since the splice started.
    """

    idle: float | None = None
    half_closed: float | None = None
    first_byte: float | None = None

    @classmethod
    def from_limits(cls, limits, *, first_byte=False):
        """The configured stream timeouts (0 turns one off); first_byte only where the
        Client side is `b` (the Server)."""
        def on(value):
            return value or None
        return cls(idle=on(limits.stream_idle_timeout),
                   half_closed=on(limits.stream_half_closed_timeout),
                   first_byte=on(limits.stream_first_byte_timeout) if first_byte else None)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not value >= 0:
                raise ValueError(f"{field.name} timeout must be a number >= 0, not {value!r}")


class Sweeper:
    """Ends the splices of one registry (`live`) that passed a timeout."""

    def __init__(self, live, timeouts=None, tick=1.0):
        self.live = live
        self.timeouts = timeouts
        self.tick = tick
        self.ticks = 0
        self._greenlet = None

    def watch(self, splice, age=0.0):
        """A splice joined `live`, `age` seconds after its stream was opened (a Visitor that
        waited for a first byte before its splice): its age counts from then; run if there is
        anything to judge."""
        splice.born = self.ticks - int(age / self.tick)
        if self.timeouts is not None and self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self):
        try:
            while self.live and self.timeouts is not None:
                gevent.sleep(self.tick)
                self.sweep()
        finally:
            self._greenlet = None

    def sweep(self):
        """One tick: every live splice is one tick idler; abort those past a timeout.

        The aborts come after the pass, as each one removes its splice from `live`.
        """
        self.ticks = now = self.ticks + 1
        timeouts = self.timeouts
        if timeouts is None:
            return
        # A stamp taken between two ticks is at least (count - 1) ticks old: hence + 1.
        idle, half, first = (_NEVER if t is None else math.ceil(t / self.tick) + 1
                             for t in (timeouts.idle, timeouts.half_closed, timeouts.first_byte))
        nearest = min(idle, half)
        expired = []
        for splice in self.live:
            count = splice.idle + 1
            splice.idle = count
            if count < nearest and now - splice.born < first:
                continue
            if count >= idle:
                expired.append((splice, "idle-timeout"))
            elif count >= half and splice.half_closed:
                expired.append((splice, "half-closed-timeout"))
            elif now - splice.born >= first:
                if splice.b_has_spoken():
                    splice.born = _NEVER  # no first-byte check from now on
                else:
                    expired.append((splice, "first-byte-timeout"))
        for splice, reason in expired:
            if splice.finished or splice.failed:
                continue
            try:
                splice.fail(reason)
            except Exception as exc:  # noqa: BLE001 - report it, and keep judging the others
                get_hub().handle_error(splice, type(exc), exc, exc.__traceback__)
