"""Client role: dial the Server, keep the Tunnel connection up, serve its streams.

Each Server address has its own worker with its own backoff sequence.  The
streams the Server opens are served by io/streams.py.
"""

import os
import random
import ssl
import time
import uuid

import gevent
from gevent.event import Event
from gevent.pool import Pool

from .. import __version__
from ..config import keep_running, restart_only
from ..acme import AcmeCertificates
from ..errors import MaterialError, ProtocolError, StreamAborted, Unauthorized
from ..logs import RateLimitedWarning
from ..metrics import ClientMetrics, service_label
from ..material import (CLIENT_CERT, CLIENT_KEY, PUBLIC_CERT, PUBLIC_KEY, identity_needs_renewal,
                        public_cert_folder, renew_identity, show_identity)
from ..proto import control
from ..proto.backoff import WINDOWS, Backoff, parse_windows
from ..proto.mux import GOAWAY_NORMAL, WindowBudget
from ..proto.services import ServiceTable
from ..tls import client_tunnel_context
from .challenge import ChallengeResponder
from .dial import dial
from .monitor import Monitor, certificate_entries, rfc3339
from ..proto.address import format_address
from .net import describe
from .splice import Splices, drain
from .streams import ClientStreams
from .sweeper import SpliceTimeouts
from .terminate import PublicCertificates
from .tunnelstream import drain_control
from .upkeep import Periodic, check_seconds, utcnow
from .watch import FileWatch

# What a reload keeps until a restart: the key table says which (docs/configuration.md).
RESTART_ONLY = restart_only("client")


class ServerLink:
    """What /status tells about one Server address: its worker's state and last error."""

    def __init__(self):
        self.state = "connecting"  # | "established" | "waiting"
        self.connected_since = None
        self.last_error = None
        self.retry_at = None  # monotonic
        self.session = None


class Client(ClientStreams):
    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.instance = uuid.uuid4().hex[:12]
        self.services = ServiceTable(config.services)
        self.metrics = ClientMetrics([format_address(a) for a in config.server_addresses],
                                     config.services)
        self.monitor = Monitor(config.metrics, "client", self, self.metrics, log)
        self.links = {}
        self.acme = self.challenges = None
        if config.acme is not None:
            self.acme = AcmeCertificates(config.acme, config.terminate_hostnames, log, "client",
                                         on_ready=lambda host: self.public_certs.context_for(host))
            self.challenges = ChallengeResponder(self.acme.challenge_dir)
        self.public_certs = PublicCertificates(config.public_cert_dir, log, self.acme,
                                               metrics=self.metrics)
        # Unbounded: `limits.active-streams`, read from the running config, is the one bound
        # (ClientStreams._on_stream), so a reload that changes it never leaves a pool of
        # another size behind, and a spawn never blocks the Tunnel reader.
        self.handlers = Pool()
        self.window_budget = WindowBudget(config.limits.stream_buffer_budget)
        self.splices = Splices(SpliceTimeouts.from_limits(config.limits))
        self.saturation = RateLimitedWarning(log, "client-saturated")
        self.workers = []
        self.sessions = set()
        self.stopping = Event()
        self.on_file_change = lambda path: None  # the lifecycle's, for watch-config
        self.file_watch = FileWatch(lambda path: self.on_file_change(path))

    def start(self):
        self.monitor.bind()  # a taken metrics address fails the start before anything runs
        self.identity = show_identity(self.config.identity_dir)  # fail fast without material
        # Before any Visitor can arrive: renew due Public hostname certificates the Client
        # issued itself, and name the terminate hostnames that have none.  Then every hour.
        self.public_certs.upkeep(self.config.terminate_hostnames, announce=True)
        self.certificate_upkeep = Periodic(
            lambda: self.public_certs.upkeep(self.config.terminate_hostnames), check_seconds(),
            self.log, "public-certificate-renewal-failed", stopped=self.stopping.is_set).start()
        if self.acme is not None:
            self.acme.start()
        for address in self.config.server_addresses:
            self.links[format_address(address)] = ServerLink()
            self.workers.append(gevent.spawn(self._worker, address))
        self.monitor.start()
        self._follow_files()
        self.log.info("client-ready", client_identity=self.identity, instance=self.instance,
                      server_addresses=",".join(format_address(a) for a in
                                                self.config.server_addresses),
                      services=len(self.config.services), version=__version__)

    def stop_accepting(self):
        self.stopping.set()
        self.file_watch.close()
        for session in list(self.sessions):
            session.go_away()

    def drain(self, timeout):
        """Wait for stream handlers and established streams, at most `timeout` seconds."""
        return drain(self.handlers, self.splices, timeout)

    def unfinished_streams(self):
        """Streams a close would cut now: spliced ones and those still in a handler."""
        return len(self.handlers) + len(self.splices)

    def close_all(self):
        """The data path first, then certbot: a forced stop never waits for ACME."""
        self.handlers.kill(block=False)
        self.splices.abort_all("client shutting down")
        self.splices.close()
        for session in list(self.sessions):
            session.close("client shutting down")
        gevent.killall(self.workers, block=False)  # no timed wait: the process exits right after
        self.file_watch.close()
        if self.acme is not None:
            self.acme.stop()
        self.monitor.stop()

    def reload(self, config):
        config, changed = keep_running(config, self.config, RESTART_ONLY)
        identity = show_identity(config.identity_dir)  # identity-dir may have moved: fail closed
        for key in changed:
            self.log.warn("reload-needs-restart", key=key.replace("_", "-"))
        self.identity = identity
        self.services = ServiceTable(config.services)
        self.metrics.set_services(config.services)
        self.metrics.forget_certificates("public", set(config.terminate_hostnames))
        self.public_certs = PublicCertificates(config.public_cert_dir, self.log, self.acme,
                                               clock=self.public_certs.clock,
                                               metrics=self.metrics)
        self.public_certs.upkeep(config.terminate_hostnames, announce=True)
        self.splices.sweeper.timeouts = SpliceTimeouts.from_limits(config.limits)
        self.config = config
        self.log.configure(config.log_level, config.log_format)
        self._follow_files()
        self.log.info("client-reloaded", services=len(config.services))

    def _follow_files(self):
        """watch-config: the config file, the Server CA bundle, the identity and the manual
        Public hostname certificates (their folders too: an update switches `current`)."""
        cfg = self.config
        files = [cfg.identity_dir / CLIENT_CERT, cfg.identity_dir / CLIENT_KEY]
        folders = [cfg.identity_dir]
        if cfg.server_trust == "ca-file":
            files.append(cfg.server_ca_file)
        if cfg.acme is None and cfg.public_cert_dir is not None:
            files += [cfg.public_cert_dir / public_cert_folder(host) / name
                      for host in cfg.terminate_hostnames
                      for name in (PUBLIC_CERT, PUBLIC_KEY)]
            folders.append(cfg.public_cert_dir)
        self.file_watch.follow(cfg, files, folders)

    # -- /readyz and /status --
    def ready(self):
        """At least one established Tunnel connection, and not shutting down."""
        return not self.stopping.is_set() and any(
            link.state == "established" for link in self.links.values())

    def status(self):
        now = time.monotonic()
        servers = [{"address": address, "state": link.state,
                    "connected_since": rfc3339(link.connected_since),
                    "last_error": link.last_error,
                    "next_retry_seconds": (round(max(0.0, link.retry_at - now), 3)
                                           if link.state == "waiting" else None),
                    "active_streams": (max(0, link.session.active_streams - 1)  # not control
                                       if link.state == "established" else 0)}
                   for address, link in self.links.items()]
        services = [{"public_hostnames": sorted(s.public_hostnames),
                     "backend": service_label(s), "tls_mode": s.tls_mode,
                     "active_streams": self.metrics.services[s.backend_address].active}
                    for s in self.config.services]
        return {"servers": servers, "services": services,
                "certificates": certificate_entries(self.metrics)}

    # -- Tunnel connection worker --
    def _worker(self, address):
        backoff = Backoff(reconnect_windows())
        server = format_address(address)
        failures = 0  # attempts that failed since the last established connection
        down_since = time.monotonic()  # no Tunnel connection to this Server since then
        link = self.links[server]
        state = self.metrics.state[server]
        while not self.stopping.is_set():
            link.state = "connecting"
            try:
                session = self._connect(address, failures, down_since)
            except Unauthorized:
                failures += 1
                link.last_error = "unauthorized client identity"
                self.log.error("tunnel-connection-unauthorized", server_address=server,
                               client_identity=self.identity, attempt=failures,
                               reason=f"unauthorized client identity {self.identity}: the "
                                      "Server's Tunnels do not list it")
            except MaterialError as exc:
                failures += 1
                link.last_error = str(exc)
                self.log.error("tunnel-connection-failed", server_address=server, attempt=failures,
                               reason=str(exc))
            except (OSError, ssl.SSLError, gevent.Timeout, ProtocolError, StreamAborted,
                    control.ControlError) as exc:
                failures += 1
                link.last_error = describe(exc)
                # The first failure of an outage is the warning; its repeats are counted.
                self.log.log("warn" if failures == 1 else "info", "tunnel-connection-failed",
                             server_address=server, attempt=failures, reason=describe(exc))
            except Exception as exc:  # noqa: BLE001 - a peer's bytes never end this worker
                failures += 1
                link.last_error = f"unexpected {describe(exc)}"
                self.log.error("tunnel-connection-failed", server_address=server, attempt=failures,
                               reason=f"unexpected {describe(exc)}")
            else:
                failures = 0
                backoff.established(time.monotonic())
                self.sessions.add(session)
                link.state, link.session, link.connected_since = "established", session, utcnow()
                state.set(1)
                gevent.wait([session.closed, session.peer_going_away, self.stopping], count=1)
                if self.stopping.is_set():
                    break
                state.set(0)
                link.state, link.session, link.connected_since = "connecting", None, None
                link.last_error = session.close_reason or "the Server is going away"
                down_since = time.monotonic()
                # A Server stopping or restarting says go away (normal) before it closes.
                graceful = session.go_away_reason == GOAWAY_NORMAL
                if session.closed.is_set() and not graceful:
                    self.sessions.discard(session)
                    self.log.warn("tunnel-connection-lost", server_address=server,
                                  reason=session.close_reason)
                else:
                    # The Server is draining: its streams finish on the old connection while
                    # this worker dials a replacement (an ordinary disconnect, not an error).
                    self.log.info("tunnel-connection-draining", server_address=server)
                    gevent.spawn(self._retire, session)
            if self.stopping.is_set():
                break
            delay = backoff.next_delay(random.uniform, time.monotonic())
            self.metrics.reconnects[server].inc()
            link.state, link.retry_at = "waiting", time.monotonic() + delay
            self.log.info("tunnel-reconnect-scheduled", server_address=server,
                          next_retry_delay=round(float(delay), 2))
            if delay:
                self.stopping.wait(delay)

    def _retire(self, session):
        try:
            session.wait()
        finally:
            self.sessions.discard(session)
            session.close()

    def _tls_context(self):
        cfg = self.config
        if identity_needs_renewal(cfg.identity_dir):
            renew_identity(cfg.identity_dir)
            self.log.info("client-identity-renewed", client_identity=self.identity)
        return client_tunnel_context(cfg.identity_dir / "client.crt", cfg.identity_dir /
                                     "client.key", cfg.server_trust, cfg.server_ca_file)

    def _connect(self, address, failures=0, down_since=None):
        """One attempt: TLS, mux, control hello and welcome; the established session.

        `failures` and `down_since` (monotonic) describe the outage this attempt ends.
        """
        hello = control.hello(__version__, self.instance, self.services.hostnames,
                              self.services.catch_all is not None)
        timeouts = self.config.timeouts  # as this attempt starts: a reload applies to the next
        tunnel = dial(address, self._tls_context(), self.config.tls_name(address), hello,
                      timeouts.tunnel_handshake, on_stream=self._on_stream, log=self.log,
                      window_budget=self.window_budget, name=format_address(address),
                      keepalive_interval=timeouts.keepalive_interval,
                      idle_timeout=timeouts.dead_peer)
        recovered = {}
        if failures:  # the recovery, once: how long and how many attempts it took
            recovered = dict(failed_attempts=failures,
                             outage=time.monotonic() - down_since)
        self.log.info("tunnel-connection-established", server_address=format_address(address),
                      tunnel=tunnel.welcome.tunnel, server_version=tunnel.welcome.version,
                      client_identity=self.identity, **recovered)
        gevent.spawn(drain_control, tunnel.stream, tunnel.decoder, self.log)
        return tunnel.session


def reconnect_windows():
    """The backoff windows: RUNEWARP_RECONNECT_WINDOWS="0.2,0.5" (tests) or the standard ones."""
    return parse_windows(os.environ.get("RUNEWARP_RECONNECT_WINDOWS", "")) or WINDOWS
