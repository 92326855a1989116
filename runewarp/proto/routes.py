"""The immutable routing snapshot the Server routes every connection from.

Routing is Server-authoritative: a Visitor's SNI picks a Tunnel only through
the Server's own configuration, and a Client identity is admitted only into the
one Tunnel that lists it. The snapshot is built and validated once, then never
changes; a reload builds a new snapshot and swaps it whole, so a lookup never
sees half of an old config and half of a new one.

Live Tunnel connections (the pools) are not part of the snapshot: the I/O
layer owns them, keyed by Tunnel name, so a reload does not touch them.

Keys are canonical hostnames or wildcard patterns (see
`runewarp.proto.hostname.normalize`) and lowercase hex identities; callers pass
normalized values.  A hostname lookup is the exact name, then the one wildcard
that can cover it (`wildcard_over`): an exact name always wins over a wildcard,
and the cost is at most two dictionary probes, whatever the table's size.
"""

from dataclasses import dataclass, field
from types import MappingProxyType
from collections.abc import Iterable, Mapping

from ..errors import RoutingConflict
from .hostname import wildcard_over

__all__ = ["RoutingConflict", "TunnelRoute", "RoutingSnapshot"]


@dataclass(frozen=True)
class TunnelRoute:
    """One Tunnel as routing sees it: its Public hostnames and admitted identities."""

    name: str
    public_hostnames: frozenset[str]
    client_identities: frozenset[str]

    def __post_init__(self):
        # Accept any iterable but store frozensets, so a route stays hashable and immutable.
        object.__setattr__(self, "public_hostnames", frozenset(self.public_hostnames))
        object.__setattr__(self, "client_identities", frozenset(self.client_identities))


@dataclass(frozen=True)
class RoutingSnapshot:
    """hostname -> Tunnel and identity -> Tunnel, validated to be unambiguous.

    Build it with `RoutingSnapshot.build`; the constructor is not validated.
    """

    server_hostname: str
    tunnels: tuple[TunnelRoute, ...]
    _by_hostname: Mapping[str, TunnelRoute] = field(repr=False, compare=False)
    _by_identity: Mapping[str, TunnelRoute] = field(repr=False, compare=False)
    _by_name: Mapping[str, TunnelRoute] = field(repr=False, compare=False)

    @classmethod
    def build(cls, server_hostname: str, tunnels: Iterable[TunnelRoute]) -> "RoutingSnapshot":
        """Index `tunnels`, raising RoutingConflict if any key would be ambiguous."""
        tunnels = tuple(tunnels)
        by_name: dict[str, TunnelRoute] = {}
        by_hostname: dict[str, TunnelRoute] = {}
        by_identity: dict[str, TunnelRoute] = {}
        for tunnel in tunnels:
            if tunnel.name in by_name:
                raise RoutingConflict(f"tunnel name {tunnel.name!r} is used by two Tunnels")
            by_name[tunnel.name] = tunnel
            for hostname in sorted(tunnel.public_hostnames):
                if hostname in (server_hostname, wildcard_over(server_hostname)):
                    # A Tunnel connection must never be routed to a Visitor path.
                    raise RoutingConflict(
                        f"public hostname {hostname!r} of tunnel {tunnel.name!r} "
                        f"{'is' if hostname == server_hostname else 'covers'} the Server hostname"
                    )
                other = by_hostname.get(hostname)
                if other is not None:
                    raise RoutingConflict(
                        f"public hostname {hostname!r} is in tunnels {other.name!r} and {tunnel.name!r}"
                    )
                by_hostname[hostname] = tunnel
            for identity in sorted(tunnel.client_identities):
                other = by_identity.get(identity)
                if other is not None:
                    raise RoutingConflict(
                        f"client identity {identity} is in tunnels {other.name!r} and {tunnel.name!r}"
                    )
                by_identity[identity] = tunnel
        return cls(
            server_hostname=server_hostname,
            tunnels=tunnels,
            _by_hostname=MappingProxyType(by_hostname),
            _by_identity=MappingProxyType(by_identity),
            _by_name=MappingProxyType(by_name),
        )

    def route(self, hostname: str) -> tuple[str, TunnelRoute] | None:
        """(the configured name or wildcard that takes the normalized `hostname`, its
        Tunnel), or None: not ours, drop it.  The exact name wins over a wildcard."""
        tunnel = self._by_hostname.get(hostname)
        if tunnel is not None:
            return hostname, tunnel
        pattern = wildcard_over(hostname)
        tunnel = self._by_hostname.get(pattern) if pattern is not None else None
        return None if tunnel is None else (pattern, tunnel)

    def tunnel_for_hostname(self, hostname: str) -> TunnelRoute | None:
        """The Tunnel that takes `hostname` (normalized), or None: not ours, drop it."""
        found = self.route(hostname)
        return None if found is None else found[1]

    def tunnel_for_identity(self, identity: str) -> TunnelRoute | None:
        """The only Tunnel a Client with `identity` may join, or None: reject it."""
        return self._by_identity.get(identity)

    def tunnel_named(self, name: str) -> TunnelRoute | None:
        """The Tunnel called `name`, so the I/O layer can match pools across reloads."""
        return self._by_name.get(name)

    @property
    def public_hostnames(self) -> frozenset[str]:
        """Every routed Public hostname and wildcard (for certificate and doctor checks)."""
        return frozenset(self._by_hostname)
