"""Which Service of a Client takes a stream: the pure selection rule."""


class ServiceTable:
    """Client-side Service selection: Catch-all, or exact normalized hostname."""

    def __init__(self, services):
        self.catch_all = services[0] if len(services) == 1 and not services[0].public_hostnames \
            else None
        self.by_hostname = {h: s for s in services for h in s.public_hostnames}

    def select(self, hostname):
        return self.catch_all or self.by_hostname.get(hostname)

    @property
    def hostnames(self):
        return sorted(self.by_hostname)

