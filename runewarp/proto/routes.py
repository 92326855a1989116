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

A Tunnel may be limited to some public listener ports (`public_ports`); its
names are then indexed by (port, name), and a name may be in two Tunnels whose
port sets are disjoint.  A lookup then probes (port, name) too: four probes at
most, and only two while no Tunnel limits its ports.
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
    public_ports: frozenset[int] | None = None  # None: every public listener's port

    def __post_init__(self):
        # Accept any iterable but store frozensets, so a route stays hashable and immutable.
        object.__setattr__(self, "public_hostnames", frozenset(self.public_hostnames))
        object.__setattr__(self, "client_identities", frozenset(self.client_identities))
        if self.public_ports is not None:
            object.__setattr__(self, "public_ports", frozenset(self.public_ports))


@dataclass(frozen=True)
class RoutingSnapshot:
    """hostname -> Tunnel and identity -> Tunnel, validated to be unambiguous.

    Build it with `RoutingSnapshot.build`; the constructor is not validated.
    """

    server_hostname: str
    tunnels: tuple[TunnelRoute, ...]
    _by_hostname: Mapping[str, TunnelRoute] = field(repr=False, compare=False)
    _by_port: Mapping[tuple[int, str], TunnelRoute] = field(repr=False, compare=False)
    _by_identity: Mapping[str, TunnelRoute] = field(repr=False, compare=False)
    _by_name: Mapping[str, TunnelRoute] = field(repr=False, compare=False)

    @classmethod
    def build(cls, server_hostname: str, tunnels: Iterable[TunnelRoute]) -> "RoutingSnapshot":
        """Index `tunnels`, raising RoutingConflict if any key would be ambiguous."""
        tunnels = tuple(tunnels)
        by_name: dict[str, TunnelRoute] = {}
        by_hostname: dict[str, TunnelRoute] = {}
        by_port: dict[tuple[int, str], TunnelRoute] = {}
        owner: dict[str, TunnelRoute] = {}
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
                _index(tunnel, hostname, by_hostname, by_port, owner)
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
            _by_port=MappingProxyType(by_port),
            _by_identity=MappingProxyType(by_identity),
            _by_name=MappingProxyType(by_name),
        )

    def route(self, hostname: str, port: int | None = None) -> tuple[str, TunnelRoute] | None:
        """(the configured name or wildcard that takes the normalized `hostname` on the public
        listener `port`, its Tunnel), or None: not ours, drop it.  The exact name wins over
        a wildcard."""
        found = self._lookup(hostname, port)
        if found is None:
            pattern = wildcard_over(hostname)
            found = self._lookup(pattern, port) if pattern is not None else None
        return found

    def _lookup(self, name: str, port: int | None) -> tuple[str, TunnelRoute] | None:
        tunnel = self._by_hostname.get(name)
        if tunnel is None and self._by_port:
            tunnel = self._by_port.get((port, name))
        return None if tunnel is None else (name, tunnel)

    def tunnel_for_hostname(self, hostname: str, port: int | None = None) -> TunnelRoute | None:
        """The Tunnel that takes `hostname` (normalized) on `port`, or None: drop it."""
        found = self.route(hostname, port)
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
        return frozenset(self._by_hostname) | {name for _, name in self._by_port}


def _index(tunnel: TunnelRoute, hostname: str, by_hostname: dict, by_port: dict, owner: dict) -> None:
    """Add `hostname` of `tunnel`: one Tunnel per (port, hostname), every port if unlimited.
    `owner` keeps one Tunnel per hostname: a Tunnel on every port is always the only one."""
    other = owner.setdefault(hostname, tunnel)
    if other is not tunnel and (tunnel.public_ports is None or other.public_ports is None):
        raise RoutingConflict(f"public hostname {hostname!r} is in tunnels {other.name!r} and {tunnel.name!r}")
    if tunnel.public_ports is None:
        by_hostname[hostname] = tunnel
        return
    for port in sorted(tunnel.public_ports):
        other = by_port.get((port, hostname))
        if other is not None:
            raise RoutingConflict(f"public hostname {hostname!r} is in tunnels {other.name!r} and "
                                  f"{tunnel.name!r} on port {port}")
        by_port[port, hostname] = tunnel
