"""Tunnel pool placement: among the members that serve the Visitor's Public hostname and
are healthy for it, fewest active streams, round-robin among ties, and a clearly nearer
member (lower keepalive RTT) before a far one."""

from .hostname import wildcard_over

# A member's RTT is clearly worse than the best one's when it is more than both of these
# above it: 20 ms (noise between members of one site) and half again (a far region).
RTT_MARGIN = 0.020
RTT_RATIO = 1.5


class Served:
    """The Public hostnames one pool member serves, from its hello, and which of them its
    Client reported unhealthy since (`service-health`).  A later hello replaces the
    whole object: every Service counts as healthy again until the Client says otherwise.

    `hostname in served` is `hostname.covers` over the member's names as two set
    probes (the name, then the one wildcard over it), never a scan: placement
    asks it for every member on every Visitor.  A Catch-all member serves all.
    """

    __slots__ = ("names", "catch_all", "unhealthy", "catch_all_unhealthy")

    def __init__(self, hostnames, catch_all):
        self.names = frozenset(hostnames)
        self.catch_all = catch_all
        self.unhealthy = frozenset()  # of `names`, as the Client listed them
        self.catch_all_unhealthy = False

    def __contains__(self, hostname):
        names = self.names
        return self.catch_all or hostname in names or wildcard_over(hostname) in names

    def healthy_for(self, hostname):
        """Whether the Service the Client picks for `hostname` (exact name first, then the
        wildcard over it: proto/services.py) is healthy; `hostname` must be served."""
        if self.catch_all:
            return not self.catch_all_unhealthy
        unhealthy = self.unhealthy
        if not unhealthy:
            return True
        if hostname in self.names:
            return hostname not in unhealthy
        return wildcard_over(hostname) not in unhealthy

    def apply(self, change):
        """A control.ServiceHealthChange; names this member does not serve are ignored."""
        self.unhealthy = (self.unhealthy | (self.names & set(change.unhealthy))) \
            - set(change.healthy)
        if change.catch_all_unhealthy is not None:
            self.catch_all_unhealthy = change.catch_all_unhealthy


def clearly_worse(rtt, best):
    """`rtt` is clearly above `best` (both seconds; None, not measured yet, never is)."""
    return (rtt is not None and best is not None and rtt - best > RTT_MARGIN
            and rtt > best * RTT_RATIO)


class Placement:
    def __init__(self):
        self._turn = 0

    def choose(self, members, load, rtt=lambda member: None):
        """Pick a member; `load(member)` is its active stream count, `rtt(member)` its
        recent keepalive round trip (None: not measured).  None if empty.

        Among the least-loaded members, the first from a rotating start whose RTT is not
        clearly worse than the lowest of them: ties rotate round-robin, and a member in
        a far region takes Visitors only when the near ones are busier.
        """
        count = len(members)
        if not count:
            return None
        start = self._turn % count
        self._turn += 1
        least = None
        best_load = None
        for offset in range(count):
            member = members[(start + offset) % count]
            member_load = load(member)
            if least is None or member_load < best_load:
                least, best_load = [member], member_load
            elif member_load == best_load:
                least.append(member)
        if len(least) == 1:
            return least[0]
        rtts = [rtt(m) for m in least]
        measured = [r for r in rtts if r is not None]
        nearest = min(measured) if measured else None
        return next(m for m, r in zip(least, rtts, strict=True) if not clearly_worse(r, nearest))
