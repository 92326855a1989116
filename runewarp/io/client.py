"""Client role: dial the Server, keep the Tunnel connection up, serve its streams.

Every address of every Server address has its own workers (io/serverlinks.py), each
with its own backoff sequence.  The streams the Server opens are served by
io/streams.py.
"""

import os
import time
import uuid

import gevent
from gevent.event import Event
from gevent.pool import Pool

from .. import __version__
from ..config import keep_running, restart_only
from ..errors import StreamAborted
from ..acme import AcmeCertificates
from ..logs import RateLimitedWarning
from ..metrics import ClientMetrics, service_label
from ..errors import MaterialError
from ..material import (CLIENT_CERT, CLIENT_KEY, PUBLIC_CERT, PUBLIC_KEY, identity_needs_renewal,
                        public_cert_folder, renew_identity, show_identity, staged_identity)
from ..proto import control
from ..proto.backoff import WINDOWS, parse_windows
from ..proto.mux import WindowBudget
from ..proto.services import ServiceTable
from ..tls import client_tunnel_context
from .challenge import ChallengeResponder
from .serverlinks import ServerLinks
from .dial import dial
from .health import Health
from .managed import ManagedCertificate
from .monitor import Monitor, certificate_entries, rfc3339
from ..proto.address import format_address
from .splice import Splices, drain
from .streams import ClientStreams
from .sweeper import SpliceTimeouts
from .terminate import PublicCertificates
from .tunnelstream import drain_control
from .upkeep import Periodic, check_seconds
from .watch import FileWatch
from ..workers import this_worker

# What a reload keeps until a restart: the key table says which (docs/configuration.md).
RESTART_ONLY = restart_only("client")
# A stopping Client waits at most this long for the Server to read its go away (one round
# trip; a connection that has stopped answering must not hold the stop).
GO_AWAY_SETTLE = 2.0


class Client(ClientStreams):
    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.instance = uuid.uuid4().hex[:12]
        self.services = ServiceTable(config.services)
        self.metrics = ClientMetrics([format_address(a) for a in config.server_addresses],
                                     config.services)
        self.monitor = Monitor(config.metrics, "client", self, self.metrics, log)
        self.server_links = ServerLinks(self, reconnect_windows())
        self.managed = ManagedCertificate(self)  # used while config.managed is set
        self.health = Health(self)
        self.metrics.service_healthy = self.health.healthy
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
        self.sessions = set()
        self.staged = None  # the staged identity (material.IdentityResult) while one is staged
        self.stopping = Event()
        self.on_file_change = lambda path: None  # the lifecycle's, for watch-config
        self.file_watch = FileWatch(lambda path: self.on_file_change(path))

    def start(self):
        self.monitor.bind()  # a taken metrics address fails the start before anything runs
        self.identity = show_identity(self.config.identity_dir)  # fail fast without material
        self.staged = self._staged_identity(self.config.identity_dir)
        # Before any Visitor can arrive: renew due Public hostname certificates the Client
        # issued itself, and name the terminate hostnames that have none.  Then every hour.
        self.public_certs.upkeep(self.config.terminate_hostnames, announce=True)
        self.certificate_upkeep = Periodic(
            lambda: self.public_certs.upkeep(self.config.terminate_hostnames), check_seconds(),
            self.log, "public-certificate-renewal-failed", stopped=self.stopping.is_set)
        if this_worker().upkeeper:  # under a supervisor, one worker renews
            self.certificate_upkeep.start()
        if self.acme is not None:
            self.acme.start()
        self.health.configure(self.config)
        self.server_links.start()
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
        """Wait for stream handlers and established streams, at most `timeout` seconds.

        First for each go away to settle (the echo of the ping that follows it): the Server
        may have opened streams before it read our go away, and they are served like any
        other (io/streams.py refuses none).  A connection that no longer answers holds the
        stop for at most GO_AWAY_SETTLE.
        """
        deadline = time.monotonic() + timeout
        settling = [s.go_away_settled for s in list(self.sessions) if not s.closed.is_set()]
        if settling:
            gevent.wait(settling, timeout=min(timeout, GO_AWAY_SETTLE))
        return drain(self.handlers, self.splices, max(0.0, deadline - time.monotonic()))

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
        self.server_links.stop()  # no timed wait: the process exits right after
        self.health.stop()
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
        self.staged = self._staged_identity(config.identity_dir)
        announced = (self.services.hostnames, self.services.catch_all is not None)
        self.services = ServiceTable(config.services)
        self.metrics.set_services(config.services)
        self.metrics.forget_certificates("public", set(config.terminate_hostnames))
        self.public_certs = PublicCertificates(config.public_cert_dir, self.log, self.acme,
                                               clock=self.public_certs.clock,
                                               metrics=self.metrics)
        self.public_certs.upkeep(config.terminate_hostnames, announce=True)
        self.splices.sweeper.timeouts = SpliceTimeouts.from_limits(config.limits)
        self.config = config
        self.health.configure(config)
        if (self.services.hostnames, self.services.catch_all is not None) != announced:
            self._announce()
        else:
            self.health.report()  # a Service moved to another backend, or was removed
        self.log.configure(config.log_level, config.log_format)
        self._follow_files()
        self.server_links.reload()  # connections-per-server and resolve-interval
        self.log.info("client-reloaded", services=len(config.services))

    def _follow_files(self):
        """watch-config: the config file, the Server CA bundle, the identity and the manual
        Public hostname certificates (their folders too: an update switches `current`)."""
        cfg = self.config
        files = [cfg.identity_dir / CLIENT_CERT, cfg.identity_dir / CLIENT_KEY,
                 cfg.identity_dir / "next" / CLIENT_CERT, cfg.identity_dir / "next" / CLIENT_KEY]
        folders = [cfg.identity_dir]
        if cfg.server_trust == "ca-file":
            files.append(cfg.server_ca_file)
        if cfg.managed is not None:
            files.append(cfg.managed.cert_file)
        if cfg.acme is None and cfg.public_cert_dir is not None:
            files += [cfg.public_cert_dir / public_cert_folder(host) / name
                      for host in cfg.terminate_hostnames
                      for name in (PUBLIC_CERT, PUBLIC_KEY)]
            folders.append(cfg.public_cert_dir)
        self.file_watch.follow(cfg, files, folders)

    # -- /readyz and /status --
    def ready(self):
        """At least one established Tunnel connection, and not shutting down."""
        return not self.stopping.is_set() and self.server_links.established()

    def status(self):
        now = time.monotonic()
        servers = [{"address": link.server, "resolved_address": link.resolved,
                    "connection": "staged" if link.staged else link.key.index,
                    "state": link.state,
                    "connected_since": rfc3339(link.connected_since),
                    "last_error": link.last_error,
                    "next_retry_seconds": (round(max(0.0, link.retry_at - now), 3)
                                           if link.state == "waiting" else None),
                    "active_streams": (max(0, link.session.active_streams - 1)  # not control
                                       if link.session is not None else 0),
                    "client_identity": (link.identity or self).identity,
                    "server_worker": link.server_worker, "server_workers": link.server_workers}
                   for link in self.server_links.all()]
        servers += [{"address": format_address(entry), "resolved_address": None, "connection": None,
                     "state": "unresolved", "connected_since": None, "last_error": reason,
                     "next_retry_seconds": None, "active_streams": 0}
                    for entry, reason in self.server_links.unresolved.items()
                    if not any(key.entry == entry for key in self.server_links.links)]
        services = [{"public_hostnames": sorted(s.public_hostnames),
                     "backend": service_label(s), "tls_mode": s.tls_mode,
                     "active_streams": self.metrics.services[s.backend_address].active,
                     "health": "healthy" if self.health.healthy(s.backend_address)
                     else "unhealthy",
                     "health_check": s.health_check.kind if s.health_check else None}
                    for s in self.config.services]
        return {"servers": servers, "services": services,
                "certificates": certificate_entries(self.metrics)}

    def _staged_identity(self, identity_dir):
        """The staged identity (`client identity rotate --stage`), logged when it changes;
        None when nothing is staged or it cannot be read (the current one serves on)."""
        try:
            staged = staged_identity(identity_dir)
        except MaterialError as exc:
            self.log.warn("client-identity-staged-unusable", reason=str(exc))
            return None
        if staged is not None and (self.staged is None or self.staged.identity != staged.identity):
            self.log.info("client-identity-staged", client_identity=staged.identity,
                          current_identity=self.identity)
        return staged

    def _tls_context(self, staged=None):
        """The Tunnel TLS context with the current identity (its managed certificate with
        [client.managed]), or with `staged` (its paths)."""
        cfg = self.config
        if staged is not None:
            cert, key = staged.cert_path, staged.key_path
        elif cfg.managed is not None:  # no self-signed renewal: no Server sees that certificate
            return self.managed.context()
        else:
            if identity_needs_renewal(cfg.identity_dir):
                renew_identity(cfg.identity_dir)
                self.log.info("client-identity-renewed", client_identity=self.identity)
            cert, key = cfg.identity_dir / CLIENT_CERT, cfg.identity_dir / CLIENT_KEY
        return client_tunnel_context(cert, key, cfg.server_trust, cfg.server_ca_file)

    def _connect(self, link, failures=0, down_since=None):
        """One attempt of worker `link` (io/serverlinks.py): TLS, mux, control hello and
        welcome; the established session.

        `failures` and `down_since` (monotonic) describe the outage this attempt ends.
        """
        hello = self._hello()
        timeouts = self.config.timeouts  # as this attempt starts: a reload applies to the next
        tunnel = dial(link.key.address, self._tls_context(link.identity),
                      self.config.tls_name(link.key.entry),
                      hello, timeouts.tunnel_handshake, on_stream=self._on_stream, log=self.log,
                      window_budget=self.window_budget, name=link.server,
                      keepalive_interval=timeouts.keepalive_interval,
                      idle_timeout=timeouts.dead_peer)
        recovered = {}
        if failures:  # the recovery, once: how long and how many attempts it took
            recovered = dict(failed_attempts=failures,
                             outage=time.monotonic() - down_since)
        self.log.info("tunnel-connection-established", **link.fields(),
                      tunnel=tunnel.welcome.tunnel, server_version=tunnel.welcome.version,
                      client_identity=(link.identity or self).identity, **recovered)
        self._check_mirroring(link, tunnel.welcome)
        gevent.spawn(drain_control, tunnel.stream, tunnel.decoder, self.log)
        tunnel.session.control = tunnel.stream
        self.health.report(tunnel.session)  # right after the welcome: what is unhealthy now
        return tunnel.session

    def _hello(self):
        """The control hello: this instance and the hostnames its Services serve."""
        return control.hello(__version__, self.instance, self.services.hostnames,
                             self.services.catch_all is not None)

    def _announce(self):
        """Services changed by a reload: a later hello on every control stream, since the
        Server places Visitors only by the hostnames a hello lists (docs/protocol.md).  The
        hello resets the member's health on the Server: the health that follows restores it."""
        line = control.encode(self._hello())
        for session in list(self.sessions):
            if session.control is not None:
                gevent.spawn(self._hello_again, session, line)

    def _hello_again(self, session, line):
        if _send_quietly(session.control, line):
            self.health.report(session, fresh=True)

    def _check_mirroring(self, link, welcome):
        """One warning per connect when the Tunnel's Public hostnames (the welcome's, from a
        Server that sends them) and this Client's Services differ (control.hostname_drift)."""
        if welcome.public_hostnames is None:
            return
        unserved, unowned = control.hostname_drift(welcome.public_hostnames,
                                                   self.services.hostnames,
                                                   self.services.catch_all is not None)
        if unserved or unowned:
            self.log.warn("hostname-mirroring-drift", **link.fields(), tunnel=welcome.tunnel,
                          unserved_hostnames=",".join(unserved) or None,
                          unowned_hostnames=",".join(unowned) or None)


def _send_quietly(stream, data):
    """Whether `data` went out; a closing connection's replacement sends a fresh hello."""
    try:
        stream.sendall(data)
    except StreamAborted:
        return False
    return True


def reconnect_windows():
    """The backoff windows: RUNEWARP_RECONNECT_WINDOWS="0.2,0.5" (tests) or the standard ones."""
    return parse_windows(os.environ.get("RUNEWARP_RECONNECT_WINDOWS", "")) or WINDOWS
