"""Two Server nodes behind Debian's HAProxy, two Client replicas of one Tunnel, a rollout
under Visitor load, all in network namespaces: tools/ha_demo.py with less load than
`make ha-demo` (which runs it for 60 s at several hundred requests per second).

Zero failed Visitor requests through hand-overs, Client restarts and reloads; after
`kill -9` of a node only its in-flight requests may fail; the backends see the load
generator's address through HAProxy's and the Client's PROXY headers.
"""

import re
from pathlib import Path

import pytest

from tools import ha_demo, ha_results, netns

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.e2e


@pytest.mark.timeout(240)
def test_a_rollout_under_load_fails_no_visitor_request(tmp_path):
    why = ha_demo.missing()
    if why:
        pytest.skip(why)
    plan = ha_demo.Plan(rate=75, loadgens=1, threads=16, duration=24, settle=0.5, after_kill=3)
    summary = ha_demo.run_scenario(tmp_path, plan)
    report = ha_results.report(summary)
    print(report)
    assert ha_results.check(summary, ha_demo.CLIENTS) == [], report
    assert summary["served"] > plan.rate * plan.duration * 0.8, report


@pytest.mark.timeout(60)
def test_namespaces_are_removed_by_name_also_after_a_failure():
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    with pytest.raises(RuntimeError), netns.Network("rwt") as net:
        namespace, address = net.add_host("a", 5)
        net.set_hosts("a", [(address, "both.example.com"), ("10.99.0.6", "both.example.com")])
        out = netns.subprocess.run([*net.exec_prefix("a"), "getent", "ahosts", "both.example.com"],
                                   capture_output=True, text=True, check=True).stdout
        assert {line.split()[0] for line in out.splitlines()} == {address, "10.99.0.6"}
        names = [net.switch, namespace]
        raise RuntimeError("a failing scenario")
    listed = netns.ip("netns", "list").stdout
    assert not [name for name in names if re.search(rf"^{re.escape(name)}\b", listed, re.M)]
    assert not (netns.ETC_NETNS / namespace).exists()


def test_the_deployment_guide_shows_the_haproxy_config_the_scenario_runs():
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert f"```\n{ha_demo.haproxy_config()}```" in text
