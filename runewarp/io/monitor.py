"""The metrics listener (plain HTTP on `metrics.bind-address` only) and the StatsD pusher.

Routes: GET /metrics (prometheus-client's exposition of the role's registry),
/healthz (200 while the loop runs), /readyz (200 when the role can do its job;
503 otherwise and from the start of a graceful shutdown), /status (JSON, from
the role's `status()`); 404 for any other path, 405 for any other method.

gevent's WSGI server parses HTTP within the bounds of io/httpserve.py (one request
per connection, a deadline, a byte cap, a bounded pool); no request body.

StatsD (`metrics.statsd-address`): every `statsd-interval` seconds the same
counters (as deltas since the last push) and gauges go out over UDP, named
`<statsd-prefix>.<metric name without runewarp_>[.<label values joined by .>]`,
e.g. `runewarp.routed_streams_total.apps.app_example_com:3|c`; a dot or colon
inside a label value becomes `_` (metrics.statsd_samples).  An address that
does not resolve is logged (`statsd-send-failed`) at most once a minute and
retried; a datagram the kernel refuses is dropped by the library.  Neither
ever touches traffic.
"""

import json
import time

import gevent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from statsd import StatsClient

from .. import __version__, certcheck
from ..logs import RateLimitedWarning
from ..metrics import StatsdDeltas
from .httpserve import BoundedHandler, BoundedServer, respond
from .listener import bind_unix, side_listener
from ..workers import this_worker, worker_metrics_socket
from ..proto.address import format_address

STATSD_WARN_INTERVAL = 60.0


def rfc3339(moment):
    """certcheck.rfc3339 for /status, where a moment may be missing (None stays None)."""
    return None if moment is None else certcheck.rfc3339(moment)


def certificate_entries(metrics):
    """/status's certificates: one entry per certificate in use."""
    return [{"kind": kind, "hostname": hostname, "not_after": rfc3339(not_after),
             "not_after_seconds": int(not_after.timestamp())}
            for (kind, hostname), not_after in sorted(metrics.certificates.items())]


def statsd_prefix(config):
    """statsd-prefix, and `.workerINDEX` under a supervisor: each worker pushes its own
    figures (sum the counters; gauges are per worker)."""
    worker = this_worker()
    return config.statsd_prefix if worker.count == 1 else f"{config.statsd_prefix}.worker{worker.index}"


class Monitor:
    """The metrics listener and StatsD pusher of one role; nothing without `[<role>.metrics]`.

    `runtime` (Server or Client) gives `ready()`, `status()` and `config.source`."""

    def __init__(self, config, role, runtime, metrics, log):
        self.config = config
        self.role = role
        self.runtime = runtime
        self.metrics = metrics
        self.log = log
        self.server = None
        self.sock = None
        self.unit_owned = False  # the socket is a socket unit's (passed to us or before us)
        self.pusher = None
        self.address = None

    def bind(self, inherited=None):
        """Bind the listener now, or take its socket from `inherited` (InheritedSockets: a
        hand-over's); BindError (exit 1) naming the key and the address."""
        if self.config is None or self.config.bind_address is None or self.sock is not None:
            return
        path = worker_metrics_socket()
        if path is not None:  # a supervisor's worker: the supervisor serves bind-address
            self.sock, self.address = bind_unix(path), path
            return
        self.sock, self.unit_owned = side_listener(self.config.bind_address, inherited,
                                                   f"{self.role}.metrics.bind-address", "metrics")
        self.address = self.sock.getsockname()

    def start(self):
        if self.config is None:
            return
        self.bind()
        if self.sock is not None:
            self.server = BoundedServer(self.sock, self.app, BoundedHandler)
            self.server.start()
            self.log.info("metrics-listening", role=self.role,
                          metrics_bind_address=self.address if isinstance(self.address, str)
                          else format_address(self.address))
        if self.config.statsd_address is not None:
            self.pusher = gevent.spawn(self._push_statsd)

    def stop(self):
        if self.pusher is not None:
            self.pusher.kill(block=False)
        if self.server is not None:
            self.server.close()
        elif self.sock is not None:
            self.sock.close()

    # -- HTTP --
    def app(self, environ, start_response):
        if environ["REQUEST_METHOD"] != "GET":
            return respond(start_response, "405 Method Not Allowed", b"method not allowed\n",
                            [("Allow", "GET")])
        route = _ROUTES.get(environ["PATH_INFO"])
        if route is None:
            return respond(start_response, "404 Not Found", b"not found\n")
        return getattr(self, route)(start_response)

    def _metrics(self, start_response):
        return respond(start_response, "200 OK", generate_latest(self.metrics.registry),
                        content_type=CONTENT_TYPE_LATEST)

    def _healthz(self, start_response):
        return respond(start_response, "200 OK", b"ok\n")

    def _readyz(self, start_response):
        if self.runtime.ready():
            return respond(start_response, "200 OK", b"ready\n")
        return respond(start_response, "503 Service Unavailable", b"not ready\n")

    def _status(self, start_response):
        document = self.status()
        return respond(start_response, "200 OK", json.dumps(document).encode() + b"\n",
                        content_type="application/json")

    def status(self):
        """The /status document: the common fields, then the role's own."""
        source = self.runtime.config.source
        return {"version": __version__, "role": self.role,
                "uptime_seconds": round(self.metrics.uptime(), 3),
                "config": str(source) if source is not None else None,
                "ready": bool(self.runtime.ready()), **self.runtime.status()}

    # -- StatsD --
    def _push_statsd(self):
        cfg = self.config
        warnings = RateLimitedWarning(self.log, "statsd-send-failed",
                                      interval=STATSD_WARN_INTERVAL)
        deltas = StatsdDeltas()
        client = None
        while True:
            gevent.sleep(cfg.statsd_interval)
            try:
                if client is None:
                    host, port = cfg.statsd_address
                    client = StatsClient(host, port, prefix=statsd_prefix(cfg), ipv6=":" in host)
                pipe = client.pipeline()
                for kind, name, value in deltas.lines(self.metrics.registry):
                    if kind == "c":
                        pipe.incr(name, value)
                    else:
                        pipe.gauge(name, value)
                pipe.send()  # UDP: the library drops a datagram the kernel refuses
            except OSError as exc:
                client = None
                warnings.warn("statsd", time.monotonic(),
                              statsd_address=format_address(cfg.statsd_address), reason=str(exc))
            else:
                warnings.recovered("statsd")


_ROUTES = {"/metrics": "_metrics", "/healthz": "_healthz", "/readyz": "_readyz",
           "/status": "_status"}
