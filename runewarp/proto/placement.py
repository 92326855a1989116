"""Tunnel pool placement: fewest active streams, round-robin among ties."""


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
