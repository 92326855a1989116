"""Placement's hostname rule is hostname.covers, as set probes; least-active, round-robin
among ties, over the members that serve the hostname."""

from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.hostname import covers
from runewarp.proto.placement import Placement, Served

LABELS = st.sampled_from(["a", "b", "app", "x"])
NAMES = st.lists(LABELS, min_size=2, max_size=4).map(".".join)
PATTERNS = st.one_of(NAMES, NAMES.map(lambda name: "*." + name))


@given(st.lists(PATTERNS, max_size=6), NAMES, st.data())
def test_served_is_covers_over_the_members_names(names, other, data):
    # Often a name under one of the member's own patterns, so both answers get exercised.
    near = [p.replace("*", data.draw(LABELS)) for p in names]
    hostname = data.draw(st.sampled_from(near + [other]))
    assert (hostname in Served(names, False)) == any(covers(p, hostname) for p in names)


@given(st.lists(PATTERNS, max_size=6), NAMES)
def test_a_catch_all_member_serves_every_hostname(names, hostname):
    assert hostname in Served(names, True)


def test_least_active_then_round_robin_among_the_serving_members():
    members = {"one": Served(["a.example.com"], False), "two": Served(["*.example.com"], False),
               "three": Served(["b.example.com"], False)}
    load = {"one": 0, "two": 0, "three": 0}
    placement = Placement()

    def place(hostname):
        serving = [name for name, served in members.items() if hostname in served]
        return placement.choose(serving, load.get)

    assert {place("a.example.com") for _ in range(4)} == {"one", "two"}
    assert {place("c.example.com") for _ in range(4)} == {"two"}
    load["two"] = 3
    assert {place("a.example.com") for _ in range(4)} == {"one"}
    assert place("example.com") is None  # no wildcard covers a name of two labels
