"""The routing snapshot: exact, unambiguous, immutable."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.routes import RoutingConflict, RoutingSnapshot, TunnelRoute

ID_A = "a" * 64
ID_B = "b" * 64
ID_C = "c" * 64


def route(name, hostnames, identities):
    return TunnelRoute(name, frozenset(hostnames), frozenset(identities))


@pytest.fixture
def snapshot():
    return RoutingSnapshot.build(
        "tunnel.example.com",
        [
            route("web", ["app.example.com", "www.example.com"], [ID_A]),
            route("api", ["api.example.com"], [ID_B, ID_C]),
        ],
    )


def test_hostname_lookup(snapshot):
    assert snapshot.tunnel_for_hostname("app.example.com").name == "web"
    assert snapshot.tunnel_for_hostname("www.example.com").name == "web"
    assert snapshot.tunnel_for_hostname("api.example.com").name == "api"


def test_unknown_hostname_is_not_routed(snapshot):
    assert snapshot.tunnel_for_hostname("other.example.com") is None
    assert snapshot.tunnel_for_hostname("example.com") is None


def test_server_hostname_is_not_routed(snapshot):
    assert snapshot.tunnel_for_hostname("tunnel.example.com") is None


def test_lookup_is_exact(snapshot):
    # Normalization is the caller's job (hostname.normalize); the snapshot never guesses.
    assert snapshot.tunnel_for_hostname("APP.example.com") is None
    assert snapshot.tunnel_for_hostname("app.example.com.") is None


def test_identity_lookup(snapshot):
    assert snapshot.tunnel_for_identity(ID_A).name == "web"
    assert snapshot.tunnel_for_identity(ID_B).name == "api"
    assert snapshot.tunnel_for_identity(ID_C).name == "api"
    assert snapshot.tunnel_for_identity("d" * 64) is None


def test_attributes(snapshot):
    assert snapshot.server_hostname == "tunnel.example.com"
    assert isinstance(snapshot.tunnels, tuple)
    assert [t.name for t in snapshot.tunnels] == ["web", "api"]
    assert snapshot.tunnel_named("api") is snapshot.tunnels[1]
    assert snapshot.tunnel_named("nope") is None
    assert snapshot.public_hostnames == {"app.example.com", "www.example.com", "api.example.com"}


def test_empty_snapshot_routes_nothing():
    snapshot = RoutingSnapshot.build("tunnel.example.com", [])
    assert snapshot.tunnels == ()
    assert snapshot.tunnel_for_hostname("app.example.com") is None
    assert snapshot.tunnel_for_identity(ID_A) is None


def test_build_accepts_a_generator():
    snapshot = RoutingSnapshot.build("t.example.com", (route(n, [f"{n}.example.com"], []) for n in ("x", "y")))
    assert snapshot.tunnel_for_hostname("y.example.com").name == "y"


def test_hostname_in_two_tunnels_conflicts():
    with pytest.raises(RoutingConflict, match=r"app\.example\.com.*'one'.*'two'"):
        RoutingSnapshot.build(
            "tunnel.example.com",
            [route("one", ["app.example.com"], [ID_A]), route("two", ["app.example.com"], [ID_B])],
        )


def test_identity_in_two_tunnels_conflicts():
    with pytest.raises(RoutingConflict, match=f"{ID_A}.*'one'.*'two'"):
        RoutingSnapshot.build(
            "tunnel.example.com",
            [route("one", ["a.example.com"], [ID_A]), route("two", ["b.example.com"], [ID_A])],
        )


def test_server_hostname_as_public_hostname_conflicts():
    with pytest.raises(RoutingConflict, match="Server hostname"):
        RoutingSnapshot.build("tunnel.example.com", [route("one", ["tunnel.example.com"], [ID_A])])


def test_duplicate_tunnel_name_conflicts():
    # Pools are keyed by Tunnel name, so two Tunnels may not share one.
    with pytest.raises(RoutingConflict, match="'same'"):
        RoutingSnapshot.build(
            "tunnel.example.com",
            [route("same", ["a.example.com"], [ID_A]), route("same", ["b.example.com"], [ID_B])],
        )


def test_conflict_is_a_value_error():
    assert issubclass(RoutingConflict, ValueError)


def test_tunnel_route_stores_frozensets():
    r = TunnelRoute("t", ["a.example.com", "a.example.com"], (ID_A,))
    assert r.public_hostnames == frozenset({"a.example.com"})
    assert isinstance(r.client_identities, frozenset)
    assert hash(r) == hash(TunnelRoute("t", {"a.example.com"}, {ID_A}))


def test_snapshot_is_immutable(snapshot):
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.server_hostname = "evil.example.com"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.tunnels[0].name = "evil"
    with pytest.raises(TypeError):
        snapshot._by_hostname["evil.example.com"] = snapshot.tunnels[0]


def test_snapshot_does_not_alias_the_input_list():
    tunnels = [route("one", ["a.example.com"], [ID_A])]
    snapshot = RoutingSnapshot.build("t.example.com", tunnels)
    tunnels.append(route("two", ["b.example.com"], [ID_B]))
    assert snapshot.tunnel_for_hostname("b.example.com") is None
    assert len(snapshot.tunnels) == 1


def test_snapshots_compare_by_content():
    a = RoutingSnapshot.build("t.example.com", [route("one", ["a.example.com"], [ID_A])])
    b = RoutingSnapshot.build("t.example.com", [route("one", ["a.example.com"], [ID_A])])
    assert a == b
    assert hash(a) == hash(b)


_label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_hostnames = st.builds(lambda a, b: f"{a}.{b}.test", _label, _label)
_identities = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(
    hostnames=st.lists(_hostnames, min_size=1, max_size=30, unique=True),
    identities=st.lists(_identities, min_size=1, max_size=10, unique=True),
    tunnel_count=st.integers(min_value=1, max_value=5),
)
def test_every_key_routes_back_to_its_tunnel(hostnames, identities, tunnel_count):
    tunnels = [route(f"t{i}", hostnames[i::tunnel_count], identities[i::tunnel_count]) for i in range(tunnel_count)]
    snapshot = RoutingSnapshot.build("server.example.com", tunnels)
    for tunnel in tunnels:
        for h in tunnel.public_hostnames:
            assert snapshot.tunnel_for_hostname(h) is tunnel
        for identity in tunnel.client_identities:
            assert snapshot.tunnel_for_identity(identity) is tunnel


@given(
    hostnames=st.lists(_hostnames, min_size=2, max_size=10, unique=True),
    shared=st.integers(min_value=0, max_value=9),
)
def test_any_shared_hostname_is_refused(hostnames, shared):
    dup = hostnames[shared % len(hostnames)]
    tunnels = [route("one", hostnames, [ID_A]), route("two", [dup], [ID_B])]
    with pytest.raises(RoutingConflict):
        RoutingSnapshot.build("server.example.com", tunnels)
