"""Service health (proto/health.py), the service-health control message (proto/control.py)
and healthy-, RTT-aware placement (proto/placement.py): tables and properties."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.proto import control
from runewarp.proto.control import ControlError
from runewarp.proto.health import (HEALTHY, PROBE_INTERVAL, UNHEALTHY, ServiceHealth, probe_name,
                                   reported_change)
from runewarp.proto.placement import Placement, Served, clearly_worse

EVENTS = st.lists(st.sampled_from(["fail", "ok", "check-fail", "check-ok"]), max_size=40)


def feed(state, event, now):
    if event == "fail":
        return state.connect_failed(now)
    if event == "ok":
        return state.connect_succeeded(now)
    return state.check_result(event == "check-ok", now)


@given(st.integers(1, 5), st.sampled_from([None, 5.0]), EVENTS)
def test_transitions_follow_the_rule_and_alternate(unhealthy_after, interval, events):
    """Unhealthy after `unhealthy_after` consecutive connect failures or one failed check;
    healthy after any success; a transition is reported exactly when the state flips."""
    state = ServiceHealth(unhealthy_after, interval)
    healthy, run = True, 0
    for t, event in enumerate(events):
        run = 0 if event in ("ok", "check-ok") else run + 1
        before = healthy
        if event in ("ok", "check-ok"):
            healthy = True
        elif event == "check-fail" or run >= unhealthy_after:
            healthy = False
        transition = feed(state, event, float(t))
        assert state.healthy == healthy
        assert transition == (None if healthy == before else HEALTHY if healthy else UNHEALTHY)


def test_passive_failures_count_consecutively():
    state = ServiceHealth(3)
    assert [state.connect_failed(t) for t in (1, 2)] == [None, None]
    assert state.connect_succeeded(3) is None  # resets the count
    assert [state.connect_failed(t) for t in (4, 5, 6)] == [None, None, UNHEALTHY]
    assert state.connect_failed(7) is None  # already unhealthy
    assert state.connect_succeeded(8) == HEALTHY and state.failures == 0


def test_an_unhealthy_service_without_a_check_is_probed_every_probe_interval():
    state = ServiceHealth(1, None, now=0.0)
    assert state.due() is None  # healthy, passive only: nothing to probe
    assert state.connect_failed(10.0) == UNHEALTHY
    assert state.due() == 10.0 + PROBE_INTERVAL
    assert state.check_result(False, 12.0) is None
    assert state.due() == 12.0 + PROBE_INTERVAL
    assert state.check_result(True, 14.0) == HEALTHY
    assert state.due() is None


def test_an_active_check_runs_every_interval_whatever_the_state():
    state = ServiceHealth(3, 5.0, now=0.0)
    assert state.due() == 5.0
    assert state.check_result(False, 5.0) == UNHEALTHY  # one failed check is enough
    assert state.due() == 10.0
    assert state.check_result(True, 10.0) == HEALTHY
    assert state.due() == 15.0


def test_unhealthy_after_must_be_positive():
    with pytest.raises(ValueError):
        ServiceHealth(0)


@pytest.mark.parametrize("hostnames, name", [
    (("a.example.com", "b.example.com"), "a.example.com"),
    (("*.example.com",), "wildcard-probe.example.com"),
    ((), None),
])
def test_probe_name(hostnames, name):
    assert probe_name(hostnames) == name


NAMES = st.frozensets(st.sampled_from(["a.example", "b.example", "*.example"]))


@given(NAMES, st.booleans(), NAMES, st.booleans())
def test_reported_change_takes_the_server_from_before_to_now(names0, ca0, names1, ca1):
    change = reported_change((names0, ca0), (names1, ca1))
    if (names0, ca0) == (names1, ca1):
        assert change is None
        return
    served = Served(names0 | names1, False)
    served.unhealthy, served.catch_all_unhealthy = names0, ca0
    parsed = control.parse_service_health(control.service_health(*change))
    served.apply(parsed)
    assert (served.unhealthy, served.catch_all_unhealthy) == (names1, ca1)


# -- the service-health message --

def test_service_health_round_trip():
    line = control.encode(control.service_health(["b.example", "a.example"], ["c.example"],
                                                 "unhealthy"))
    (message,) = control.LineDecoder().feed(line)
    assert message["unhealthy"] == ["a.example", "b.example"]  # sent sorted
    assert control.parse_service_health(message) == control.ServiceHealthChange(
        ("a.example", "b.example"), ("c.example",), True)
    assert "catch_all" not in control.service_health(["a.example"])
    assert control.parse_service_health(
        control.service_health(catch_all="healthy")).catch_all_unhealthy is False


@pytest.mark.parametrize("change, field", [
    ({"type": "hello"}, "type"),
    ({"unhealthy": "a.example"}, "unhealthy"),
    ({"healthy": [7]}, "healthy"),
    ({"healthy": ["a" * 254]}, "healthy"),
    ({"unhealthy": ["a"] * 10_001}, "unhealthy"),
    ({"catch_all": True}, "catch_all"),
    ({"catch_all": "sick"}, "catch_all"),
])
def test_parse_service_health_rejects_wrong_fields(change, field):
    with pytest.raises(ControlError) as info:
        control.parse_service_health({**control.service_health(["a.example"]), **change})
    assert field in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "unhealthy", "healthy", "catch_all", "x"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                    lambda kids: st.lists(kids, max_size=3), max_leaves=6)))
def test_parse_service_health_only_raises_control_error(message):
    try:
        control.parse_service_health(message)
    except ControlError:
        pass


# -- placement --

def test_healthy_for_follows_the_clients_service_selection():
    served = Served(["a.example.com", "*.example.com"], False)
    served.apply(control.ServiceHealthChange(("*.example.com", "other.example.org"), ()))
    assert served.unhealthy == {"*.example.com"}  # a name it does not serve is ignored
    assert served.healthy_for("a.example.com")  # the exact Service wins, and it is healthy
    assert not served.healthy_for("b.example.com")  # the wildcard's Service is not
    served.apply(control.ServiceHealthChange((), ("*.example.com",)))
    assert served.healthy_for("b.example.com")
    catch_all = Served([], True)
    catch_all.apply(control.ServiceHealthChange((), (), True))
    assert not catch_all.healthy_for("anything.example")
    catch_all.apply(control.ServiceHealthChange((), (), False))
    assert catch_all.healthy_for("anything.example")


@pytest.mark.parametrize("rtt, best, worse", [
    (0.030, 0.001, True),    # +29 ms and 30x
    (0.015, 0.001, False),   # 15x, but only +14 ms: the same site
    (0.250, 0.200, False),   # +50 ms, but only 1.25x: both far
    (0.350, 0.200, True),    # +150 ms and 1.75x
    (None, 0.001, False),    # not measured yet
    (0.500, None, False),
])
def test_clearly_worse_needs_both_margins(rtt, best, worse):
    assert clearly_worse(rtt, best) is worse


def test_placement_prefers_the_near_member_among_the_least_active():
    rtt = {"near": 0.002, "near2": 0.004, "far": 0.150, "new": None}
    load = dict.fromkeys(rtt, 0)
    placement = Placement()

    def chosen(members, n=8):
        return {placement.choose(members, load.get, rtt.get) for _ in range(n)}

    assert chosen(["near", "far"]) == {"near"}
    assert chosen(["near", "near2", "far"]) == {"near", "near2"}  # ties still rotate
    assert chosen(["far", "new"]) == {"far", "new"}  # an unmeasured member is not worse
    load["near"] = 1
    assert chosen(["near", "far"]) == {"far"}  # least active first: RTT only breaks ties
    assert placement.choose([], load.get, rtt.get) is None
