"""TunnelPool.place and unplaced (io/tunnels.py) over members' health: reported unhealthy
hostnames, an overdue keepalive ping, members already tried (`exclude`)."""

from runewarp.io.tunnels import TunnelMember, TunnelPool
from runewarp.proto.control import ServiceHealthChange
from runewarp.proto.placement import Served

A = "a.example.com"


class Session:
    def __init__(self, rtt=None):
        self.accepting = True
        self.ping_overdue = False
        self.active_streams = 1
        self.ping_rtt = rtt


def pool_of(*names, rtt=None):
    pool = TunnelPool("apps")
    for name in names:
        pool.join(TunnelMember(Session(rtt), "id" * 32, name, "peer", Served([A], False)))
    return pool, {m.instance: m for m in pool.members}


def placed(pool, n=6, **kwargs):
    return {getattr(pool.place(A, **kwargs), "instance", None) for _ in range(n)}


def test_unhealthy_and_overdue_members_are_skipped_and_the_outcome_says_why():
    pool, members = pool_of("one", "two")
    assert placed(pool) == {"one", "two"}
    members["two"].served.apply(ServiceHealthChange((A,), ()))
    assert placed(pool) == {"one"}
    members["one"].session.ping_overdue = True
    assert placed(pool) == {None}
    assert pool.unplaced(A) == "no-healthy-member"
    assert pool.overdue_only(A)  # member-wait looks again: "one" may answer
    members["one"].session.accepting = False
    assert not pool.overdue_only(A)
    members["two"].session.accepting = False
    assert pool.unplaced(A) == "no-tunnel-connection"
    assert pool.unplaced("b.example.com") == "no-tunnel-connection"


def test_exclude_skips_the_members_already_tried():
    pool, members = pool_of("one", "two", "three")
    assert placed(pool, exclude=[members["one"]]) == {"two", "three"}
    assert placed(pool, exclude=list(members.values())) == {None}
    assert pool.unplaced(A, exclude=list(members.values())) == "no-serving-member"
    assert pool.unplaced("b.example.com") == "no-serving-member"


def test_the_nearer_member_takes_the_visitors_among_equals():
    pool, members = pool_of("near", "far")
    members["near"].session.ping_rtt = 0.001
    members["far"].session.ping_rtt = 0.120
    assert placed(pool) == {"near"}
    members["near"].session.active_streams = 2  # busier: least active wins first
    assert placed(pool) == {"far"}
