"""Placeholder of the API branch's store module: only the names io/etcdstore.py imports."""

from ..errors import RunewarpError


class StoreUnavailable(RunewarpError):
    """The store cannot be reached or read: the API answers 503, the routing table stays."""


class StoreConflict(RunewarpError):
    """The stored record is not the one `expected` named: the API answers 412."""


ANY = object()
