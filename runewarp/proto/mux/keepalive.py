"""Liveness of a session: when to ping, when the peer counts as dead, the round trip.

Any received frame proves the peer alive; with nothing received for
`idle_timeout` seconds it is dead.  A keepalive ping leaves every `interval`
seconds, and the time to its echo is the connection's round trip (`rtt`).
Time only enters through the `now` arguments.
"""


class Keepalive:
    __slots__ = ("interval", "idle_timeout", "last_received", "next_ping", "rtt", "_counter",
                 "_sent")

    def __init__(self, interval: float, idle_timeout: float, now: float):
        self.interval = interval
        self.idle_timeout = idle_timeout
        self.last_received = now
        self.next_ping = now + interval
        self.rtt: float | None = None  # seconds from the last keepalive ping to its echo
        self._counter = 0
        self._sent: tuple[int, float] | None = None  # (value, time) awaiting its echo

    def next_timer(self) -> float:
        return min(self.next_ping, self.last_received + self.idle_timeout)

    def dead(self, now: float) -> bool:
        return now - self.last_received >= self.idle_timeout

    def ping_due(self, now: float) -> int | None:
        """The value of the keepalive ping to send now, or None when none is due."""
        if now < self.next_ping:
            return None
        value, self._sent = self._counter, (self._counter, now)
        self._counter = (self._counter + 1) & 0xFFFFFFFF
        self.next_ping = now + self.interval
        return value

    def echoed(self, value: int, now: float) -> None:
        """A ping echo arrived; only our keepalive's measures the round trip."""
        if self._sent is not None and self._sent[0] == value:
            self.rtt, self._sent = now - self._sent[1], None
