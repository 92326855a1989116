"""A Service's health as one Client instance sees it: the sans-I/O state machine.

Events in: a Local backend connect failed or succeeded (a Visitor stream's, or a probe's),
an active check's result.  Transitions out: "unhealthy" or "healthy", returned by the
event that caused them, else None.  Time only enters through the `now` arguments.

- `unhealthy-after` consecutive connect failures make the Service unhealthy; one failed
  active check does at once (a check is deliberate, with its own timeout).
- Any success (a stream's connect, a probe, a check) resets the count; the first one
  after the Service became unhealthy makes it healthy again.
- Without an active check, an unhealthy Service is probed every PROBE_INTERVAL: the
  Server places no streams on it, so only a probe can see the backend come back.  With
  one, the check runs every `interval` whatever the state and is the probe.
"""

from .hostname import sample_name

UNHEALTHY = "unhealthy"
HEALTHY = "healthy"
PROBE_INTERVAL = 2.0  # seconds between TCP probes of an unhealthy Service without a check


class ServiceHealth:
    __slots__ = ("unhealthy_after", "check_interval", "failures", "healthy", "changed_at",
                 "next_check")

    def __init__(self, unhealthy_after, check_interval=None, now=0.0):
        """`check_interval`: the active check's interval; None for passive only."""
        if unhealthy_after < 1:
            raise ValueError("unhealthy_after must be at least 1")
        self.unhealthy_after = unhealthy_after
        self.check_interval = check_interval
        self.failures = 0  # consecutive, since the last success
        self.healthy = True
        self.changed_at = now
        self.next_check = None if check_interval is None else now + check_interval

    def connect_failed(self, now):
        self.failures += 1
        if self.healthy and self.failures >= self.unhealthy_after:
            return self._become(False, now)
        return None

    def connect_succeeded(self, now):
        self.failures = 0
        return None if self.healthy else self._become(True, now)

    def check_result(self, ok, now):
        """An active check (or a probe) finished at `now`; the next is due one interval on."""
        interval = self.check_interval if self.check_interval is not None else PROBE_INTERVAL
        self.next_check = now + interval
        if ok:
            return self.connect_succeeded(now)
        self.failures = max(self.failures + 1, self.unhealthy_after)
        return self._become(False, now) if self.healthy else None

    def due(self):
        """When the next check or probe is due (monotonic), or None: none is needed."""
        if self.check_interval is None and self.healthy:
            return None
        return self.next_check

    def _become(self, healthy, now):
        self.healthy = healthy
        self.changed_at = now
        if not healthy and self.check_interval is None:
            self.next_check = now + PROBE_INTERVAL
        return HEALTHY if healthy else UNHEALTHY


def probe_name(hostnames):
    """The SNI of a TLS check: the Service's first hostname, one label under it for a
    wildcard (as `runewarp doctor` probes); None for the Catch-all Service."""
    if not hostnames:
        return None
    return sample_name(hostnames[0])


def reported_change(before, now):
    """The `control.service_health` arguments that take the Server from `before` to `now`,
    each (unhealthy hostnames, Catch-all unhealthy); None when they are equal."""
    if before == now:
        return None
    (names_before, catch_all_before), (names_now, catch_all_now) = before, now
    catch_all = None if catch_all_before == catch_all_now else \
        UNHEALTHY if catch_all_now else HEALTHY
    return names_now - names_before, names_before - names_now, catch_all
