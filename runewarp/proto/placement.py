"""Tunnel pool placement: among the members that serve the Visitor's Public hostname,
fewest active streams, round-robin among ties."""

from .hostname import wildcard_over


class Served:
    """The Public hostnames one pool member serves, from its hello, fixed when it joins.

    `hostname in served` is `hostname.covers` over the member's names as two set
    probes (the name, then the one wildcard over it), never a scan: placement
    asks it for every member on every Visitor.  A Catch-all member serves all.
    """

    __slots__ = ("names", "catch_all")

    def __init__(self, hostnames, catch_all):
        self.names = frozenset(hostnames)
        self.catch_all = catch_all

    def __contains__(self, hostname):
        names = self.names
        return self.catch_all or hostname in names or wildcard_over(hostname) in names


class Placement:
    def __init__(self):
        self._turn = 0

    def choose(self, members, load):
        """Pick a member; `load(member)` is its active stream count. None if empty."""
        count = len(members)
        if not count:
            return None
        start = self._turn % count
        self._turn += 1
        best = None
        best_load = None
        for offset in range(count):
            member = members[(start + offset) % count]
            member_load = load(member)
            if best is None or member_load < best_load:
                best, best_load = member, member_load
        return best
