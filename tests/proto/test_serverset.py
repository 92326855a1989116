"""Which workers to add and drain after a resolution (proto/serverset.py)."""

from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.serverset import Link, plan, unique

A = ("tunnel.example.com", 443)
B = ("10.0.0.9", 8443)


def links(entry, *ips, per_server=1):
    return [Link(entry, (ip, entry[1]), i) for ip in ips for i in range(per_server)]


def test_every_address_of_every_entry_gets_its_workers():
    add, drain = plan(set(), {A: ["192.0.2.1", "2001:db8::1"], B: ["10.0.0.9"]}, 2)
    assert add == [*links(A, "192.0.2.1", "2001:db8::1", per_server=2), *links(B, "10.0.0.9", per_server=2)]
    assert drain == []


def test_a_repeated_address_gets_one_set_of_workers():
    add, _ = plan(set(), {A: ["192.0.2.1", "192.0.2.1"]}, 1)
    assert add == links(A, "192.0.2.1")


def test_a_new_address_is_added_and_a_vanished_one_drained():
    current = set(links(A, "192.0.2.1", "192.0.2.2"))
    add, drain = plan(current, {A: ["192.0.2.2", "192.0.2.3"]}, 1)
    assert add == links(A, "192.0.2.3")
    assert drain == links(A, "192.0.2.1")


def test_a_failed_resolution_keeps_the_current_addresses():
    current = set(links(A, "192.0.2.1", "192.0.2.2")) | set(links(B, "10.0.0.9"))
    for failed in (None, ()):
        assert plan(current, {A: failed, B: ["10.0.0.9"]}, 1) == ([], [])


def test_a_failed_resolution_still_follows_connections_per_server():
    current = set(links(A, "192.0.2.1", per_server=3))
    add, drain = plan(current, {A: None}, 1)
    assert add == [] and drain == links(A, "192.0.2.1", per_server=3)[1:]
    add, drain = plan(set(links(A, "192.0.2.1")), {A: None}, 2)
    assert add == [Link(A, ("192.0.2.1", 443), 1)] and drain == []


def test_an_entry_no_longer_configured_is_drained_whole():
    current = set(links(A, "192.0.2.1")) | set(links(B, "10.0.0.9"))
    assert plan(current, {B: ["10.0.0.9"]}, 1) == ([], links(A, "192.0.2.1"))


def test_unique_keeps_the_first_order():
    assert unique(["b", "a", "b", "c", "a"]) == ("b", "a", "c")


IPS = st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]), max_size=5)


@given(before=IPS, after=st.one_of(st.none(), IPS), old=st.integers(1, 4), new=st.integers(1, 4))
def test_applying_the_plan_gives_exactly_the_wanted_workers(before, after, old, new):
    current = set(plan(set(), {A: before}, old)[0])
    add, drain = plan(current, {A: after}, new)
    assert not set(add) & current and set(drain) <= current
    result = (current - set(drain)) | set(add)
    kept = unique(after) if after else unique(sorted(link.address[0] for link in current))
    assert result == set(links(A, *kept, per_server=new))
    assert plan(result, {A: after}, new) == ([], [])  # a second pass changes nothing
