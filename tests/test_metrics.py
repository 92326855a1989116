"""runewarp.metrics: fixed vocabularies, series created up front, removed by a reload, StatsD names."""

import datetime as dt

from prometheus_client import generate_latest

from runewarp import __version__, metrics
from runewarp.config.model import ServiceConfig
from runewarp.proto.routes import TunnelRoute


class Pool:
    def __init__(self, members=0, active=0):
        self.members = [object()] * members
        self.active_streams = active


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def tunnels(*specs):
    return [TunnelRoute(name, hostnames, ()) for name, hostnames in specs]


def test_vocabularies_are_fixed_and_unique():
    for vocabulary in (metrics.VISITOR_OUTCOMES, metrics.CLIENT_STREAM_OUTCOMES,
                       metrics.TUNNEL_EVENTS, metrics.TUNNEL_REASONS):
        assert len(set(vocabulary)) == len(vocabulary)
    assert set(metrics.INTAKE_OUTCOMES.values()) <= set(metrics.VISITOR_OUTCOMES)
    assert set(metrics.TUNNEL_EVENT_REASONS) == set(metrics.TUNNEL_EVENTS)
    assert "unknown-hostname" in metrics.VISITOR_OUTCOMES


def test_server_series_exist_at_zero_before_any_event():
    pools = {"apps": Pool(members=2, active=3)}
    m = metrics.ServerMetrics(tunnels(("apps", ["a.example", "b.example"])), lambda: pools)
    r = m.registry
    for outcome in metrics.VISITOR_OUTCOMES:
        assert value(r, "runewarp_visitor_connections_total", outcome=outcome) == 0
    assert value(r, "runewarp_routed_streams_total", tunnel="apps", hostname="b.example") == 0
    for direction in metrics.DIRECTIONS:
        assert value(r, "runewarp_stream_bytes_total", tunnel="apps", direction=direction) == 0
    for event, reasons in metrics.TUNNEL_EVENT_REASONS.items():
        for reason in reasons:
            assert value(r, "runewarp_tunnel_connection_events_total", event=event,
                         reason=reason) == 0
    # Gauges read the pools at scrape time.
    assert value(r, "runewarp_tunnel_connections", tunnel="apps") == 2
    assert value(r, "runewarp_active_streams", tunnel="apps") == 3
    assert value(r, "runewarp_build_info", version=__version__) == 1
    assert value(r, "process_cpu_seconds_total") is not None  # the library's process collector
    m.tunnels["apps"].routed["a.example"].inc()
    m.tunnels["apps"].to_client.inc(10)
    assert value(r, "runewarp_routed_streams_total", tunnel="apps", hostname="a.example") == 1
    assert value(r, "runewarp_stream_bytes_total", tunnel="apps", direction="to-client") == 10


def test_a_reload_removes_the_series_of_removed_tunnels_and_hostnames():
    pools = {}
    m = metrics.ServerMetrics(tunnels(("apps", ["a.example", "b.example"]), ("old", ["o.example"])),
                              lambda: pools)
    m.set_tunnels(tunnels(("apps", ["a.example", "c.example"]), ("new", ["n.example"])))
    text = generate_latest(m.registry).decode()
    assert 'tunnel="old"' not in text and "b.example" not in text
    assert 'hostname="c.example"' in text and 'tunnel="new"' in text
    assert set(m.tunnels) == {"apps", "new"}
    assert value(m.registry, "runewarp_tunnel_connections", tunnel="new") == 0  # no pool yet


def test_client_series_and_reload():
    a = ServiceConfig(("a.example",), ("127.0.0.1", 8443))
    b = ServiceConfig(("b.example",), ("::1", 8080), "terminate")
    m = metrics.ClientMetrics(["tunnel.example.com:443"], [a, b])
    r = m.registry
    assert value(r, "runewarp_tunnel_connection_state", server_address="tunnel.example.com:443") == 0
    assert value(r, "runewarp_reconnects_total", server_address="tunnel.example.com:443") == 0
    for outcome in metrics.SERVICE_OUTCOMES:
        assert value(r, "runewarp_client_streams_total", service="[::1]:8080", outcome=outcome) == 0
    for outcome in metrics.NO_SERVICE_OUTCOMES:
        assert value(r, "runewarp_client_streams_total", service="", outcome=outcome) == 0
    m.services[a.backend_address].active = 4
    assert value(r, "runewarp_active_streams", service="127.0.0.1:8443") == 4
    m.set_services([a])
    text = generate_latest(r).decode()
    assert "[::1]:8080" not in text and "127.0.0.1:8443" in text


def test_certificates_and_reloads():
    m = metrics.ClientMetrics([], [])
    when = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    m.certificate("public", "a.example", when)
    assert value(m.registry, "runewarp_certificate_not_after_seconds", kind="public",
                 hostname="a.example") == when.timestamp()
    m.forget_certificates("public", keep=set())
    assert "a.example" not in generate_latest(m.registry).decode()
    m.reloads["failure"].inc()
    assert value(m.registry, "runewarp_config_reloads_total", result="failure") == 1


def test_close_reasons_map_to_the_vocabulary():
    assert metrics.close_reason("peer closed the connection") == "peer-closed"
    assert metrics.close_reason("no frame received for 60 s") == "idle-timeout"
    assert metrics.close_reason("identity no longer authorized for this tunnel") == \
        "unauthorized-after-reload"
    assert metrics.close_reason(None) == "other"


def test_statsd_names_and_counter_deltas():
    pools = {"apps": Pool(members=1)}
    m = metrics.ServerMetrics(tunnels(("apps", ["app.example.com"])), lambda: pools)
    deltas = metrics.StatsdDeltas()
    first = {name: (kind, v) for kind, name, v in deltas.lines(m.registry)}
    assert first["tunnel_connections.apps"] == ("g", 1)
    assert "routed_streams_total.apps.app_example_com" not in first  # no change: nothing sent
    m.tunnels["apps"].routed["app.example.com"].inc(3)
    m.visitor["unknown-hostname"].inc()
    second = {name: (kind, v) for kind, name, v in deltas.lines(m.registry)}
    assert second["routed_streams_total.apps.app_example_com"] == ("c", 3)
    assert second["visitor_connections_total.unknown-hostname"] == ("c", 1)
    m.tunnels["apps"].routed["app.example.com"].inc()
    third = {name: (kind, v) for kind, name, v in deltas.lines(m.registry)}
    assert third["routed_streams_total.apps.app_example_com"] == ("c", 1)
    assert not any(name.startswith(("process_", "build_info")) for name in third)
