"""Wildcard Public hostnames in the pure core: the pattern rule (proto/hostname.py), the
Server's routing snapshot and the Client's Service table, checked against a scan."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.proto import control, hostname
from runewarp.proto.hostname import HostnameError, covers, is_wildcard, normalize, wildcard_over
from runewarp.proto.routes import RoutingConflict, RoutingSnapshot, TunnelRoute
from runewarp.proto.services import ServiceTable

SERVER = "tunnel.example.net"


@pytest.mark.parametrize("pattern, hostname, covered", [
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "b.a.example.com", False),
    ("*.example.com", "a.example.org", False),
    ("*.a.example.com", "b.a.example.com", True),
    ("a.example.com", "a.example.com", True),
    ("a.example.com", "b.example.com", False),
])
def test_a_wildcard_covers_exactly_one_label(pattern, hostname, covered):
    assert covers(pattern, hostname) is covered


def test_only_a_configured_name_may_be_a_pattern():
    assert normalize("*.Example.COM.", wildcard=True) == "*.example.com"
    assert is_wildcard("*.example.com") and not is_wildcard("a.example.com")
    with pytest.raises(HostnameError, match="wildcards are not allowed here"):
        normalize("*.example.com")  # an SNI or the Server hostname


def test_the_wildcard_over_a_name_strips_its_first_label():
    assert wildcard_over("a.example.com") == "*.example.com"
    assert wildcard_over("b.a.example.com") == "*.a.example.com"
    assert wildcard_over("example.com") is None  # *.com is not a pattern
    assert wildcard_over("localhost") is None


def test_a_pattern_is_no_longer_than_a_hostname():
    base = ".".join(["a" * 63] * 3 + ["b" * 60])  # 252 characters: a hostname, "*." too long
    with pytest.raises(HostnameError, match="longer than 253"):
        normalize("*." + base, wildcard=True)
    assert normalize("*." + base[2:], wildcard=True) == "*." + base[2:]


# --- lookup against a scan: exact first, then the one wildcard, else nothing ------------

LABELS = st.sampled_from(["a", "b", "c", "www"])
BASES = st.sampled_from(["example.com", "example.org", "x.example.com"])
NAMES = st.builds(lambda labels, base: ".".join([*labels, base]), st.lists(LABELS, max_size=2), BASES)
PATTERNS = st.one_of(NAMES, BASES.map(lambda b: "*." + b), NAMES.map(lambda n: "*." + n))


def scan(owners, name):
    """The reference: every configured pattern that covers `name`; the exact one wins."""
    if name in owners:
        return name
    matches = [p for p in owners if is_wildcard(p) and covers(p, name)]
    assert len(matches) <= 1  # RFC 6125: at most one wildcard can cover a name
    return matches[0] if matches else None


@settings(max_examples=300)
@given(st.dictionaries(PATTERNS, st.sampled_from(["t1", "t2", "t3"]), max_size=8), NAMES)
def test_routing_matches_a_scan(owners, name):
    tunnels = [TunnelRoute(t, {p for p, o in owners.items() if o == t}, {t[-1] * 64})
               for t in sorted(set(owners.values()))]
    snapshot = RoutingSnapshot.build(SERVER, tunnels)
    expected = scan(owners, name)
    found = snapshot.route(name)
    if expected is None:
        assert found is None and snapshot.tunnel_for_hostname(name) is None
    else:
        assert found[0] == expected  # the configured pattern: the metrics label
        assert found[1].name == owners[expected] == snapshot.tunnel_for_hostname(name).name


@dataclass(frozen=True)
class Service:
    public_hostnames: tuple
    tls_mode: str = "passthrough"


@settings(max_examples=300)
@given(st.lists(st.lists(PATTERNS, min_size=1, max_size=3), min_size=2, max_size=4), NAMES)
def test_service_selection_matches_a_scan(hostname_lists, name):
    seen, services = set(), []
    for hosts in hostname_lists:  # the config refuses a pattern in two Services
        hosts = tuple(h for h in dict.fromkeys(hosts) if h not in seen)
        seen.update(hosts)
        if hosts:
            services.append(Service(hosts))
    table = ServiceTable(services)
    expected = scan({h: s for s in services for h in s.public_hostnames}, name)
    chosen = table.select(name)
    if expected is None:
        assert chosen is None
    else:
        assert expected in chosen.public_hostnames


def test_exact_wins_over_wildcard_on_both_sides():
    snapshot = RoutingSnapshot.build(SERVER, [TunnelRoute("wild", {"*.example.com"}, {"a" * 64}),
                                              TunnelRoute("exact", {"a.example.com"}, {"b" * 64})])
    assert snapshot.route("a.example.com") == ("a.example.com", snapshot.tunnel_named("exact"))
    assert snapshot.route("b.example.com") == ("*.example.com", snapshot.tunnel_named("wild"))
    assert snapshot.route("example.com") is None
    assert snapshot.route("b.a.example.com") is None
    wild, exact = Service(("*.example.com",)), Service(("a.example.com",))
    table = ServiceTable([wild, exact])
    assert table.select("a.example.com") is exact
    assert table.select("b.example.com") is wild
    assert table.select("b.a.example.com") is None
    assert table.select(None) is None


def test_the_same_wildcard_in_two_tunnels_is_a_conflict():
    with pytest.raises(RoutingConflict, match=r"'\*.example.com' is in tunnels 'a' and 'b'"):
        RoutingSnapshot.build(SERVER, [TunnelRoute("a", {"*.example.com"}, {"a" * 64}),
                                       TunnelRoute("b", {"*.example.com"}, {"b" * 64})])


def test_a_wildcard_over_the_server_hostname_is_a_conflict():
    with pytest.raises(RoutingConflict, match="covers the Server hostname"):
        RoutingSnapshot.build(SERVER, [TunnelRoute("a", {"*.example.net"}, {"a" * 64})])
    snapshot = RoutingSnapshot.build(SERVER, [TunnelRoute("a", {"*.tunnel.example.net"}, {"a" * 64})])
    assert snapshot.tunnel_for_hostname(SERVER) is None


class CountingDict(dict):
    probes = 0

    def get(self, key, default=None):
        CountingDict.probes += 1
        return super().get(key, default)


def test_a_lookup_is_at_most_two_probes_whatever_the_table_size():
    names = {f"h{i}.example.com" for i in range(5000)} | {f"*.d{i}.example.com" for i in range(5000)}
    snapshot = RoutingSnapshot.build(SERVER, [TunnelRoute("big", names, {"a" * 64})])
    object.__setattr__(snapshot, "_by_hostname", CountingDict(snapshot._by_hostname))
    for name, probes in [("h7.example.com", 1), ("x.d7.example.com", 2), ("nope.example.org", 2),
                         ("example.com", 1)]:
        CountingDict.probes = 0
        snapshot.route(name)
        assert CountingDict.probes == probes, name
    assert hostname.MAX_LENGTH == 253


@pytest.mark.parametrize("tunnel, client, catch_all, unserved, unowned", [
    (["*.example.com"], ["*.example.com"], False, [], []),
    (["*.example.com"], ["*.EXAMPLE.com"], False, ["*.example.com"], ["*.EXAMPLE.com"]),  # exact strings
    (["*.example.com"], ["a.example.com"], False, ["*.example.com"], []),  # b.example.com has no Service
    (["a.example.com"], ["*.example.com"], False, [], ["*.example.com"]),  # b.example.com never arrives
    (["*.example.com", "a.example.com"], ["*.example.com"], False, [], []),
    (["*.example.com"], ["*.example.com", "a.example.com"], False, [], []),
    (["*.example.com"], ["b.a.example.com"], False, ["*.example.com"], ["b.a.example.com"]),
    (["*.example.com"], [], True, [], []),
])
def test_hostname_mirroring_understands_wildcards(tunnel, client, catch_all, unserved, unowned):
    assert control.hostname_drift(tunnel, client, catch_all) == (unserved, unowned)
