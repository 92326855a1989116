"""Admission slots for Visitor intake: a global cap and a per-source-IP cap."""


class Admission:
    def __init__(self, total, per_source):
        self.total = total
        self.per_source = per_source
        self.in_use = 0
        self.by_source = {}

    def acquire(self, source):
        """Take a slot or return the reason there is none ("intake-full"/"source-full")."""
        if self.in_use >= self.total:
            return "intake-full"
        used = self.by_source.get(source, 0)
        if used >= self.per_source:
            return "source-full"
        self.in_use += 1
        self.by_source[source] = used + 1
        return None

    def release(self, source):
        self.in_use -= 1
        used = self.by_source[source] - 1
        if used:
            self.by_source[source] = used
        else:
            del self.by_source[source]
