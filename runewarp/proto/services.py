"""Which Service of a Client takes a stream: the pure selection rule."""

from .hostname import wildcard_over


class ServiceTable:
    """Client-side Service selection: Catch-all, or the normalized hostname, exact first,
    then the one wildcard over it (the same rule and cost as the Server's routing)."""

    def __init__(self, services):
        self.catch_all = services[0] if len(services) == 1 and not services[0].public_hostnames \
            else None
        self.by_hostname = {h: s for s in services for h in s.public_hostnames}

    def select(self, hostname):
        if self.catch_all is not None or hostname is None:
            return self.catch_all
        service = self.by_hostname.get(hostname)
        if service is None:
            pattern = wildcard_over(hostname)
            service = self.by_hostname.get(pattern) if pattern is not None else None
        return service

    @property
    def hostnames(self):
        return sorted(self.by_hostname)
