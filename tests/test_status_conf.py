"""conf/grafana-dashboard.json and conf/prometheus-alerts.yml: they load, they name only
Runewarp's metrics (issue 12's list), and promtool accepts and unit-tests the rules."""

import json
import re
import shutil
import subprocess

import pytest

from .conftest import ROOT

CONF = ROOT / "conf"
METRICS = {
    "runewarp_visitor_connections_total", "runewarp_routed_streams_total",
    "runewarp_active_streams", "runewarp_stream_bytes_total", "runewarp_tunnel_connections",
    "runewarp_tunnel_connection_events_total", "runewarp_visitor_intake_seconds",
    "runewarp_tunnel_connection_state", "runewarp_reconnects_total",
    "runewarp_client_streams_total", "runewarp_backend_connect_seconds",
    "runewarp_certificate_not_after_seconds", "runewarp_config_reloads_total",
    "runewarp_build_info",
}
HISTOGRAMS = {"runewarp_visitor_intake_seconds", "runewarp_backend_connect_seconds"}
KNOWN = METRICS | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
# PromQL words that are not metric names (functions are recognised by their "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset"}


def metric_names(expr):
    """The metric names an expression selects: label matchers, ranges, strings, grouping
    clauses and function calls taken out first."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in KEYWORDS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def dashboard_exprs():
    dashboard = json.loads((CONF / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return dashboard, panels, [t["expr"] for p in panels for t in p.get("targets", [])]


def test_the_dashboard_loads_and_uses_a_prometheus_datasource_variable():
    dashboard, panels, exprs = dashboard_exprs()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    titles = " / ".join(p["title"] for p in panels)
    for wanted in ("Routed streams per Tunnel", "Rejected Visitors by outcome",
                   "Pool members per Tunnel", "Client reconnects",
                   "Bytes per Tunnel and direction", "Certificate days left"):
        assert wanted in titles
    assert exprs


def test_every_dashboard_expression_names_only_runewarp_metrics():
    _, _, exprs = dashboard_exprs()
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= KNOWN, (expr, names - KNOWN)
        used |= names
    for wanted in ("runewarp_routed_streams_total", "runewarp_visitor_connections_total",
                   "runewarp_tunnel_connections", "runewarp_reconnects_total",
                   "runewarp_stream_bytes_total", "runewarp_certificate_not_after_seconds"):
        assert wanted in used


def test_the_metric_name_reader_sees_through_promql():
    assert metric_names('sum by (tunnel) (rate(runewarp_routed_streams_total{a="b by (x)"}[5m]))') \
        == {"runewarp_routed_streams_total"}
    assert metric_names("(runewarp_certificate_not_after_seconds - time()) / 86400") == \
        {"runewarp_certificate_not_after_seconds"}
    assert metric_names("rate(haproxy_x[1m]) and on (i) up") == {"haproxy_x", "up"}


def alert_rules():
    """{alert: expr}, read line by line (no YAML parser in the test deps; promtool below
    parses the file for real)."""
    text = (CONF / "prometheus-alerts.yml").read_text()
    return dict(re.findall(r"^ *- alert: (\S+)\n *expr: (.+)$", text, re.MULTILINE))


def test_the_alert_rules_name_only_runewarp_metrics():
    rules = alert_rules()
    assert set(rules) == {"RunewarpTunnelWithoutPoolMember", "RunewarpCertificateExpiringSoon",
                          "RunewarpConfigReloadFailed", "RunewarpClientDisconnected"}
    for expr in rules.values():
        assert metric_names(expr) and metric_names(expr) <= KNOWN, expr


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                                    "(Debian package prometheus; .ci/run installs it)")


def promtool(*args, cwd=CONF):
    proc = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    assert "SUCCESS: 4 rules found" in promtool("check", "rules", "prometheus-alerts.yml")


@needs_promtool
def test_each_alert_fires_and_stays_quiet_as_its_promtool_unit_test_says():
    assert "SUCCESS" in promtool("test", "rules", "prometheus-alerts.test.yml")


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path):
    """Each expression as a recording rule: promtool's own PromQL parser judges it."""
    _, _, exprs = dashboard_exprs()
    rules = [f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e.replace('$__rate_interval', '5m').replace('$instance', '.*'))}"
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "\n".join(rules) + "\n")
    promtool("check", "rules", path, cwd=tmp_path)
