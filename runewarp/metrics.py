"""The metrics of each role, on a registry of its own (prometheus-client).

Label values come only from configuration (Tunnel names, Public hostnames,
Server addresses, Service backends) or from the fixed vocabularies below, never
from a Visitor's bytes: an unknown SNI is the outcome `unknown-hostname`, so the
number of series is bounded by the configuration.  Every child of a fixed
vocabulary and of a configured Tunnel or Service is created up front (series
exist at 0, and the data path does one dict lookup, no string formatting); a
reload removes the children of what it removed.  Gauges that mirror a count the
role keeps anyway (pool members, active streams) read it at scrape time, so the
data path pays nothing for them.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from . import __version__
from .proto.address import format_address

# Every path through the Server's Visitor handler ends in exactly one of these.
VISITOR_OUTCOMES = (
    "routed", "unknown-hostname", "not-tls", "malformed-hello", "no-sni", "invalid-sni",
    "intake-deadline", "intake-too-large", "closed-early", "admission-full", "shed",
    "no-tunnel-connection", "no-serving-member", "no-healthy-member", "server-hostname-other-alpn",
    "active-streams-full", "stream-open-failed", "acme-challenge", "tunnel-connection",
    "socket-error", "proxy-header-invalid", "proxy-health-check", "aborted")
# An intake rejection's reason (errors.IntakeRejected) as a Visitor outcome.
INTAKE_OUTCOMES = {
    "not-tls": "not-tls", "not-client-hello": "not-tls", "malformed": "malformed-hello",
    "unexpected-record": "malformed-hello", "multiple-sni": "malformed-hello",
    "too-large": "intake-too-large", "too-many-records": "intake-too-large",
    "intake-deadline": "intake-deadline", "closed-before-client-hello": "closed-early",
    "no-sni": "no-sni", "invalid-sni": "invalid-sni", "shed": "shed",
    "proxy-header-invalid": "proxy-header-invalid"}
# The Client's stream outcomes; those before NO_SERVICE_OUTCOMES' end have no Service yet.
NO_SERVICE_OUTCOMES = ("no-service", "handler-pool-full", "header-invalid", "hello-invalid",
                       "intake-deadline", "aborted")
SERVICE_OUTCOMES = ("served", "backend-connect-failed", "backend-write-failed",
                    "terminate-handshake-failed", "visitor-certificate-refused", "acme-challenge",
                    "quic-relayed", "no-quic-backend", "aborted")
CLIENT_STREAM_OUTCOMES = tuple(dict.fromkeys(NO_SERVICE_OUTCOMES + SERVICE_OUTCOMES))
NO_SERVICE = ""  # the `service` label of a stream refused before a Service was chosen
TUNNEL_EVENTS = ("established", "closed", "refused")
TUNNEL_EVENT_REASONS = {
    "established": ("none",),
    "closed": ("peer-closed", "idle-timeout", "protocol-error", "transport-error",
               "unauthorized-after-reload", "server-stopping", "other"),
    "refused": ("certificate-missing", "admission-full", "handshake-deadline", "tls-error",
                "unauthorized-client-identity", "closed-during-handshake", "shed", "no-tunnel",
                "pool-full", "no-control-hello", "bad-control-hello", "stopping",
                "proxy-header-invalid", "self-signed-not-accepted", "managed-certificate-expired",
                "managed-certificate-not-yet-valid", "not-issued-by-control-plane-ca",
                "managed-certificate-invalid", "managed-identity-mismatch"),
}
TUNNEL_REASONS = tuple(r for reasons in TUNNEL_EVENT_REASONS.values() for r in reasons)
# A Tunnel connection's close reason (TunnelSession.close_reason) by its leading words.
_CLOSE_REASONS = (("peer closed", "peer-closed"), ("no frame received", "idle-timeout"),
                  ("protocol error", "protocol-error"), ("read failed", "transport-error"),
                  ("write failed", "transport-error"),
                  ("identity no longer authorized", "unauthorized-after-reload"),
                  ("server shutting down", "server-stopping"))
RETRY_RESULTS = ("retried", "given-up")  # runewarp_visitor_retries_total (docs/protocol.md)
# runewarp_worker_passes_total: Visitor sockets passed between Server workers (io/workerpass.py)
PASS_EVENTS = ("sent", "send-failed", "received", "dropped")
RELOAD_RESULTS = ("success", "failure")
# runewarp_quic_dropped_total's reasons: the flow table's (proto/quic.py QuicDropped,
# proto/quicflows.py) and the routing refusals of io/quic.py.
QUIC_DROP_REASONS = (
    "short-header", "unsupported-version", "not-initial", "undecryptable", "malformed", "too-large",
    "too-many-packets", "not-client-hello", "pending-full", "pending-expired", "unknown-hostname",
    "no-sni", "invalid-sni", "no-member", "active-streams-full", "stream-open-failed",
    "queue-overflow", "other-connection")
# runewarp_quic_flows_total's outcomes: each flow counts once, when it is routed or refused.
QUIC_FLOW_OUTCOMES = ("routed", "unknown-hostname", "no-sni", "invalid-sni", "no-member",
                      "active-streams-full", "stream-open-failed", "rejected", "pending-expired")
QUIC_DIRECTIONS = ("to-client", "to-visitor")
CERTIFICATE_KINDS = ("server", "public")
DIRECTIONS = ("to-client", "to-visitor")
CLIENT_QUIC_DIRECTIONS = ("to-backend", "to-server")  # the Client's QUIC datagram counters
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def close_reason(text):
    """A Tunnel connection's free-text close reason as one of TUNNEL_EVENT_REASONS["closed"]."""
    for prefix, reason in _CLOSE_REASONS:
        if text and text.startswith(prefix):
            return reason
    return "other"


class _Metrics:
    """What both roles have: registry, process collector, build info, reloads, certificates."""

    def __init__(self, role):
        self.role = role
        self.started = time.monotonic()
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        Gauge("runewarp_build_info", "Runewarp version (always 1).", ["version"],
              registry=registry).labels(__version__).set(1)
        reloads = Counter("runewarp_config_reloads", "Config reloads by result.", ["result"],
                          registry=registry)
        self.reloads = {r: reloads.labels(r) for r in RELOAD_RESULTS}
        self._not_after = Gauge("runewarp_certificate_not_after_seconds",
                                "A certificate in use: its notAfter as a Unix timestamp.",
                                ["kind", "hostname"], registry=registry)
        self.certificates = {}  # (kind, hostname) -> notAfter (aware datetime)

    def certificate(self, kind, hostname, not_after):
        """A certificate for `hostname` (configured) was loaded; `not_after` is aware UTC."""
        self.certificates[kind, hostname] = not_after
        self._not_after.labels(kind, hostname).set(not_after.timestamp())

    def forget_certificates(self, kind, keep):
        """Drop the certificate series of `kind` whose hostname is not in `keep`."""
        for key in [k for k in self.certificates if k[0] == kind and k[1] not in keep]:
            del self.certificates[key]
            self._not_after.remove(*key)

    def uptime(self):
        return time.monotonic() - self.started


class _TunnelSeries:
    """The children of one configured Tunnel, looked up once per routed stream."""

    __slots__ = ("routed", "to_client", "to_visitor")


class ServerMetrics(_Metrics):
    def __init__(self, tunnels, pools):
        """`tunnels`: the snapshot's TunnelRoutes; `pools()` gives the live {name: TunnelPool}."""
        super().__init__("server")
        r = self.registry
        visitors = Counter("runewarp_visitor_connections", "Visitor connections by outcome.",
                           ["outcome"], registry=r)
        self.visitor = {o: visitors.labels(o) for o in VISITOR_OUTCOMES}
        self._routed = Counter("runewarp_routed_streams", "Visitor streams routed to a Tunnel.",
                               ["tunnel", "hostname"], registry=r)
        self._bytes = Counter("runewarp_stream_bytes", "Bytes spliced, counted at stream close.",
                              ["tunnel", "direction"], registry=r)
        self._active = Gauge("runewarp_active_streams", "Routed streams now open.", ["tunnel"],
                             registry=r)
        self._members = Gauge("runewarp_tunnel_connections", "Live members of a Tunnel pool.",
                              ["tunnel"], registry=r)
        events = Counter("runewarp_tunnel_connection_events", "Tunnel connections by event.",
                         ["event", "reason"], registry=r)
        self.tunnel_event = {(e, reason): events.labels(e, reason)
                             for e, reasons in TUNNEL_EVENT_REASONS.items() for reason in reasons}
        self.visitor_ech = Counter("runewarp_visitor_ech", "Visitor ClientHellos with an "
                                   "encrypted_client_hello extension (real or GREASE).", registry=r)
        retries = Counter("runewarp_visitor_retries", "Streams reset retryably before their "
                          "first byte back: placed on another member, or given up.", ["result"],
                          registry=r)
        self.visitor_retries = {x: retries.labels(x) for x in RETRY_RESULTS}
        passes = Counter("runewarp_worker_passes", "Visitor sockets passed between Server "
                         "workers (workers = N), by event.", ["event"], registry=r)
        self.worker_passes = {e: passes.labels(e) for e in PASS_EVENTS}
        self.intake_seconds = Histogram("runewarp_visitor_intake_seconds",
                                        "Accept to a complete ClientHello.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self._quic_series(r)
        self._pools = pools
        self.tunnels = {}
        self.set_tunnels(tunnels)
        self.quic_flows_active = lambda: 0  # the Server's QUIC intake sets its own reader

    def _quic_series(self, r):
        """The QUIC intake's counters (io/quic.py), every child up front."""
        datagrams = Counter("runewarp_quic_datagrams", "QUIC datagrams relayed.", ["direction"],
                            registry=r)
        self.quic_datagrams = {d: datagrams.labels(d) for d in QUIC_DIRECTIONS}
        dropped = Counter("runewarp_quic_dropped", "QUIC datagrams dropped, by reason.", ["reason"],
                          registry=r)
        self.quic_dropped = {x: dropped.labels(x) for x in QUIC_DROP_REASONS}
        flows = Counter("runewarp_quic_flows", "QUIC flows by routing outcome.", ["outcome"],
                        registry=r)
        self.quic_flows = {x: flows.labels(x) for x in QUIC_FLOW_OUTCOMES}
        Gauge("runewarp_quic_flows_active", "QUIC flows now open (routed).", registry=r
              ).set_function(lambda: self.quic_flows_active())

    def set_tunnels(self, tunnels):
        """Create the series of new Tunnels and hostnames; remove those of removed ones."""
        new = {t.name: tuple(t.public_hostnames) for t in tunnels}
        for name, series in list(self.tunnels.items()):
            for hostname in list(series.routed):
                if hostname not in new.get(name, ()):
                    self._routed.remove(name, hostname)
                    del series.routed[hostname]
            if name not in new:
                for direction in DIRECTIONS:
                    self._bytes.remove(name, direction)
                self._active.remove(name)
                self._members.remove(name)
                del self.tunnels[name]
        for name, hostnames in new.items():
            series = self.tunnels.get(name)
            if series is None:
                series = self.tunnels[name] = _TunnelSeries()
                series.routed = {}
                series.to_client = self._bytes.labels(name, "to-client")
                series.to_visitor = self._bytes.labels(name, "to-visitor")
                self._active.labels(name).set_function(self._pool_reader(name, "active"))
                self._members.labels(name).set_function(self._pool_reader(name, "members"))
            for hostname in hostnames:
                if hostname not in series.routed:
                    series.routed[hostname] = self._routed.labels(name, hostname)

    def _pool_reader(self, name, what):
        def read():
            pool = self._pools().get(name)
            if pool is None:
                return 0
            return pool.active_streams if what == "active" else len(pool.members)
        return read


class _ServiceSeries:
    """The children of one configured Service, and its count of open streams."""

    __slots__ = ("label", "outcome", "connect_seconds", "active")


class ClientMetrics(_Metrics):
    def __init__(self, server_addresses, services):
        """`server_addresses`: "host:port" strings; `services`: ServiceConfigs."""
        super().__init__("client")
        r = self.registry
        # Labelled by server-address as configured, never by resolved address: DNS decides
        # how many addresses a name has, the config bounds how many entries there are.
        state = Gauge("runewarp_tunnel_connection_state",
                      "Established Tunnel connections to this server-address (every address "
                      "it resolves to, every connection of connections-per-server).",
                      ["server_address"], registry=r)
        reconnects = Counter("runewarp_reconnects", "Reconnects scheduled after a failure or "
                             "a lost connection.", ["server_address"], registry=r)
        self.state = {a: state.labels(a) for a in server_addresses}
        self.reconnects = {a: reconnects.labels(a) for a in server_addresses}
        self._streams = Counter("runewarp_client_streams", "Streams by Service and outcome.",
                                ["service", "outcome"], registry=r)
        self.unserved = {o: self._streams.labels(NO_SERVICE, o) for o in NO_SERVICE_OUTCOMES}
        self._active = Gauge("runewarp_active_streams", "Streams spliced to a Service now.",
                             ["service"], registry=r)
        self._connect = Histogram("runewarp_backend_connect_seconds",
                                  "Time to connect to a Local backend.", ["service"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._healthy = Gauge("runewarp_service_healthy", "1 while this Client counts the "
                              "Service healthy, 0 while the Server is told to skip it.",
                              ["service"], registry=r)
        self.service_healthy = lambda backend: True  # the Client's health (io/health.py)
        datagrams = Counter("runewarp_client_quic_datagrams", "QUIC datagrams relayed, to the "
                            "Local backend or back to the Server.", ["direction"], registry=r)
        self.quic_datagrams = {d: datagrams.labels(d) for d in CLIENT_QUIC_DIRECTIONS}
        dropped = Counter("runewarp_client_quic_dropped_datagrams", "QUIC datagrams dropped: "
                          "the oldest of a full queue to the Server, or one the Local backend's "
                          "socket would not send.", ["direction"], registry=r)
        self.quic_dropped = {d: dropped.labels(d) for d in CLIENT_QUIC_DIRECTIONS}
        self.services = {}  # backend_address -> _ServiceSeries
        self.set_services(services)

    def set_services(self, services):
        """Create the series of new Services; remove those of removed ones."""
        new = {s.backend_address: service_label(s) for s in services}
        for backend in list(self.services):
            if backend not in new:
                label = format_address(backend)
                for outcome in SERVICE_OUTCOMES:
                    self._streams.remove(label, outcome)
                self._active.remove(label)
                self._connect.remove(label)
                self._healthy.remove(label)
                del self.services[backend]
        for backend, label in new.items():
            if backend in self.services:
                continue
            series = self.services[backend] = _ServiceSeries()
            series.label = label
            series.outcome = {o: self._streams.labels(label, o) for o in SERVICE_OUTCOMES}
            series.connect_seconds = self._connect.labels(label)
            series.active = 0
            self._active.labels(label).set_function(lambda s=series: s.active)
            self._healthy.labels(label).set_function(
                lambda b=backend: 1 if self.service_healthy(b) else 0)


def service_label(service):
    """A Service's `service` label: its Local backend "host:port"."""
    return format_address(service.backend_address)


def statsd_samples(registry):
    """(kind, name, value) of every runewarp counter and gauge sample in `registry`, named
    `<metric name without runewarp_>[.<label values joined by .>]`; kind is "c" (a running
    total: the pusher sends its delta) or "g".  Dots and colons inside a label value become
    underscores, so one value stays one StatsD path segment.  A histogram contributes its
    `_count` and `_sum` as counters; build info and the process collector are left out."""
    for family in registry.collect():
        if not family.name.startswith("runewarp_") or family.name == "runewarp_build_info":
            continue
        for sample in family.samples:
            if sample.name.endswith("_created") or sample.name.endswith("_bucket"):
                continue
            kind = "g" if family.type == "gauge" else "c"
            parts = [sample.name[len("runewarp_"):]]
            parts += [_segment(v) for v in sample.labels.values()]
            number = sample.value
            yield kind, ".".join(parts), int(number) if number.is_integer() else number


def _segment(value):
    return value.replace(".", "_").replace(":", "_").replace("|", "_").replace("@", "_") or "none"


class StatsdDeltas:
    """Counters as deltas since the last push: a counter sent as `|c` adds up in StatsD."""

    def __init__(self):
        self.last = {}

    def lines(self, registry):
        """[(kind, name, value)] to send now: every gauge, and counters that moved."""
        out = []
        seen = {}
        for kind, name, value in statsd_samples(registry):
            if kind == "g":
                out.append((kind, name, value))
                continue
            seen[name] = value
            delta = value - self.last.get(name, 0)
            if delta < 0:  # a series removed by a reload and created again
                delta = value
            if delta:
                out.append((kind, name, delta))
        self.last = seen
        return out
