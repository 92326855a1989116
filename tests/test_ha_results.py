"""tools/ha_results.py: which Visitor failures the HA scenario allows, on made-up load output."""

from tools import ha_results

KILL = 1000.0
STEPS = [{"step": "reload", "start": 990.0, "seconds": 0.1}]


def load(failures, served_starts=(KILL + 3,), addresses=None, backends=None):
    return {"served": len(served_starts), "failed": len(failures), "rate": 100.0,
            "started": 980.0, "ended": KILL + 5, "failures": failures,
            "served_starts": list(served_starts), "addresses": addresses or {"10.99.0.3": 1},
            "backends": backends or {"client-a": 1, "client-b": 1}}


def failure(start, end, reason="eof-before-reply"):
    return {"start": start, "end": end, "reason": reason}


def broken(failures, marked_down=0.7, **kwargs):
    summary = ha_results.summarize(load(failures, **kwargs), KILL, 1.5, "10.99.0.3", STEPS,
                                   marked_down)
    return summary, ha_results.check(summary, ("client-a", "client-b"))


def test_requests_in_flight_at_the_kill_and_just_after_it_may_fail():
    summary, problems = broken([failure(KILL - 0.01, KILL + 0.02), failure(KILL + 0.01, KILL + 0.02)])
    assert problems == []
    assert (summary["failed_in_flight_at_kill"], summary["failed_started_after_kill"]) == (1, 1)
    assert "1 in-flight requests failed" in ha_results.report(summary)


def test_a_failure_before_the_kill_is_broken_and_named_by_its_step():
    summary, problems = broken([failure(990.5, 990.6), failure(985.0, 985.1)])
    assert summary["failed_by_step"] == {"reload": 1, "before the first step": 1}
    assert problems and problems[0].startswith("2 Visitor requests failed during the rollout")


def test_a_failure_after_the_check_window_is_broken():
    assert broken([failure(KILL + 1.6, KILL + 1.7)])[1] == ["1 requests failed after the check window"]


def test_the_balancer_must_take_the_node_out_and_traffic_must_go_on():
    assert broken([], marked_down=None)[1] == ["HAProxy never marked the killed node down"]
    assert broken([], served_starts=(KILL + 1.0,))[1] == ["nothing was served after the kill -9"]


def test_the_backend_must_see_the_expected_visitor_address_from_both_replicas():
    problems = broken([], addresses={"10.99.0.2": 5}, backends={"client-a": 5})[1]
    assert [p.split(",")[0] for p in problems] == ["the backends saw {'10.99.0.2': 5}",
                                                  "served by {'client-a': 5}"]
