"""Routing by (public listener port, hostname): a Tunnel limited to some ports, the same
hostname in Tunnels with disjoint ports, checked against a scan."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.proto.hostname import covers, is_wildcard
from runewarp.proto.routes import RoutingConflict, RoutingSnapshot, TunnelRoute

SERVER = "tunnel.example.net"
PORTS = (443, 8443, 9443)


def build(*tunnels):
    return RoutingSnapshot.build(SERVER, [TunnelRoute(name, hosts, {f"{i:064x}"}, ports)
                                          for i, (name, hosts, ports) in enumerate(tunnels)])


def test_the_port_picks_among_tunnels_of_one_hostname():
    snapshot = build(("a", {"app.example.com"}, {443}), ("b", {"app.example.com", "*.example.com"}, {8443}),
                     ("c", {"all.example.com"}, None))
    assert snapshot.route("app.example.com", 443)[1].name == "a"
    assert snapshot.route("app.example.com", 8443)[1].name == "b"
    assert snapshot.route("app.example.com", 9443) is None
    assert snapshot.route("x.example.com", 8443) == ("*.example.com", snapshot.tunnel_named("b"))
    assert snapshot.route("x.example.com", 443) is None
    for port in PORTS:
        assert snapshot.route("all.example.com", port)[1].name == "c"
    assert snapshot.public_hostnames == {"app.example.com", "*.example.com", "all.example.com"}


@pytest.mark.parametrize("first, second, message", [
    (None, None, "is in tunnels 'a' and 'b'"),
    ({443}, None, "is in tunnels 'a' and 'b'"),
    (None, {443}, "is in tunnels 'a' and 'b'"),
    ({443, 8443}, {8443}, "is in tunnels 'a' and 'b' on port 8443"),
])
def test_a_hostname_in_two_tunnels_needs_disjoint_ports(first, second, message):
    with pytest.raises(RoutingConflict, match=message):
        build(("a", {"app.example.com"}, first), ("b", {"app.example.com"}, second))


NAMES = st.sampled_from(["a.example.com", "b.example.com", "x.a.example.com"])
PATTERNS = st.sampled_from(["a.example.com", "b.example.com", "*.example.com", "*.a.example.com"])


@st.composite
def tunnels(draw):
    """Tunnels whose (port, pattern) pairs are unique and whose unlimited patterns are alone."""
    taken, result = {}, []
    for i in range(draw(st.integers(1, 4))):
        ports = draw(st.one_of(st.none(), st.frozensets(st.sampled_from(PORTS), min_size=1)))
        hosts = set()
        for host in draw(st.lists(PATTERNS, min_size=1, max_size=3)):
            used = taken.get(host)
            if used is None or (ports is not None and used is not None and "all" not in used
                                and not used & ports):
                hosts.add(host)
        if not hosts:
            continue
        for host in hosts:
            taken[host] = (taken.get(host, frozenset()) | ports) if ports is not None else {"all"}
        result.append((f"t{i}", hosts, ports))
    return result


def scan(tunnels, name, port):
    """The reference: an exact owner on this port first, then the wildcard's."""
    for exact in (True, False):
        for tname, hosts, ports in tunnels:
            for host in hosts:
                if is_wildcard(host) != (not exact) or not covers(host, name):
                    continue
                if ports is None or port in ports:
                    return host, tname
    return None


@settings(max_examples=300)
@given(tunnels(), NAMES, st.sampled_from(PORTS))
def test_routing_by_port_matches_a_scan(tunnel_list, name, port):
    snapshot = build(*tunnel_list)
    found = snapshot.route(name, port)
    expected = scan(tunnel_list, name, port)
    assert (None if found is None else (found[0], found[1].name)) == expected
