"""What the HA scenario's Visitors saw (tools/ha_loadgen.py output), set against its promises.

Before the kill -9 nothing may fail; at the kill, requests in flight on the killed node
may; requests started after the balancer's check window may not.  Every reply body
names the Visitor address the backend got and the Client replica that served it.
"""


def merge(results):
    merged = {"served": 0, "failed": 0, "failures": [], "addresses": {}, "backends": {},
              "served_starts": [], "started": min(r["started"] for r in results),
              "ended": max(r["ended"] for r in results)}
    for result in results:
        for key in ("served", "failed"):
            merged[key] += result[key]
        merged["failures"] += result["failures"]
        merged["served_starts"] += result["served_starts"]
        for key in ("addresses", "backends"):
            for name, count in result[key].items():
                merged[key][name] = merged[key].get(name, 0) + count
    merged["rate"] = round(merged["served"] / (merged["ended"] - merged["started"]), 1)
    return merged


def summarize(load, killed_at, window, expected_address, steps=(), marked_down=None):
    """Failures before the kill (must be none), in flight at the kill, and after it.
    `window`: seconds after the kill within which new requests may still fail;
    `marked_down`: seconds until the balancer took the node out (None: never)."""
    before = [f for f in load["failures"] if f["end"] < killed_at]
    in_flight = [f for f in load["failures"] if f["start"] < killed_at <= f["end"]]
    after = [f for f in load["failures"] if f["start"] >= killed_at]
    late = [f for f in after if f["start"] >= killed_at + window]
    by_step = {}
    for failure in before:  # the step running when it started (its settle time included)
        label = next((st["step"] for st in reversed(steps) if st["start"] <= failure["start"]),
                     "before the first step")
        by_step[label] = by_step.get(label, 0) + 1
    return {
        "served": load["served"], "failed": load["failed"], "rate": load["rate"],
        "seconds": round(load["ended"] - load["started"], 1),
        "failed_before_kill": len(before), "failures_before_kill": before[:20],
        "failed_by_step": by_step,
        "failed_in_flight_at_kill": len(in_flight),
        "failed_started_after_kill": len(after), "failed_after_check_window": len(late),
        "last_failure_started_after_kill_s": round(max((f["start"] - killed_at for f in after),
                                                       default=0.0), 3),
        "served_after_check_window": sum(1 for t in load["served_starts"] if t >= killed_at + window),
        "check_window_seconds": window, "marked_down_after_kill_s": marked_down,
        "kill_failure_reasons": sorted({f["reason"] for f in in_flight + after}),
        "visitor_addresses": load["addresses"], "backends": load["backends"],
        "expected_visitor_address": expected_address, "steps": list(steps),
    }


def check(summary, backends):
    """The scenario's promises as a list of broken ones (empty: all kept)."""
    broken = []
    if summary["failed_before_kill"]:
        broken.append(f"{summary['failed_before_kill']} Visitor requests failed during the rollout: "
                      f"{summary['failures_before_kill'][:5]}")
    if summary["failed_after_check_window"]:
        broken.append(f"{summary['failed_after_check_window']} requests failed after the check window")
    if summary["marked_down_after_kill_s"] is None:
        broken.append("HAProxy never marked the killed node down")
    if not summary["served_after_check_window"]:
        broken.append("nothing was served after the kill -9")
    if set(summary["visitor_addresses"]) != {summary["expected_visitor_address"]}:
        broken.append(f"the backends saw {summary['visitor_addresses']}, "
                      f"not {summary['expected_visitor_address']}")
    if set(summary["backends"]) != set(backends):
        broken.append(f"served by {summary['backends']}, not by both Clients")
    return broken


def report(summary):
    lines = [f"served {summary['served']} Visitor requests in {summary['seconds']}s "
             f"({summary['rate']}/s), failed during the rollout: {summary['failed_before_kill']}"
             + "".join(f"; {count} in {step}" for step, count in summary["failed_by_step"].items()),
             f"kill -9 node1: {summary['failed_in_flight_at_kill']} in-flight requests failed, "
             f"{summary['failed_started_after_kill']} started after the kill failed "
             f"(the last {summary['last_failure_started_after_kill_s']}s after it; "
             f"{summary['failed_after_check_window']} after the {summary['check_window_seconds']}s "
             f"check window); HAProxy marked node1 down after "
             f"{'never' if summary['marked_down_after_kill_s'] is None else summary['marked_down_after_kill_s']}s; "
             f"{summary['served_after_check_window']} served after the window",
             f"Visitor address at the backends: {summary['visitor_addresses']}; "
             f"backends: {summary['backends']}"]
    return "\n".join(lines)
