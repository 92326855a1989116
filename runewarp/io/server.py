"""Server role: listeners, lifecycle, reload and admission; the Visitor path
(accept → intake → route → place → envelope → splice) is io/visitors.py, Tunnel
connections io/tunnels.py, the Server certificate io/servercert.py.

Visitor connections and Tunnel connections share the public listener; a
ClientHello for the Server hostname is split by ALPN.  Routing reads one
immutable snapshot, swapped whole on reload.
"""

import socket
import time

from gevent.pool import Group

from .. import __version__, certcheck, systemd
from ..systemd import ActivationError
from ..metrics import ServerMetrics
from ..config import keep_running, restart_only
from ..certcheck import CertificateRefused
from ..errors import ConfigError, MaterialError
from ..acme import AcmeCertificates, warn_port
from ..logs import RateLimitedWarning
from ..errors import AdmissionRefused
from ..proto.admission import Admission
from ..proto.mux import WindowBudget
from .api import ApiListener
from .apitable import ApiTunnels
from .challenge import ChallengeResponder
from .inherited import InheritedSockets
from .listener import (BindError, Listener, bind_addresses, bind_moved,
                       by_key, config_key, kind, pool_sizes, swap)
from .monitor import Monitor, certificate_entries, rfc3339
from ..proto.address import format_address
from .servercert import ServerCertificateChecks
from .splice import Splices, drain
from .sweeper import SpliceTimeouts
from .tunnels import TunnelConnections, TunnelPool
from .upkeep import Periodic, check_seconds, utcnow
from .visitors import VisitorPath
from .quic import QuicIntake
from .watch import FileWatch
from ..material import server_cert_paths
from ..workers import this_worker

# What a reload keeps until a restart: the key table says which (docs/configuration.md).
RESTART_ONLY = restart_only("server")
WORKER_RESTART_ONLY = ("public_bind_addresses", "tunnel_bind_address")
# The rate-limited warning scope for a refused admission, by table and reason.
_REFUSED_SCOPES = {("intake", "table-full"): "intake-full",
                   ("intake", "source-full"): "source-full",
                   ("tunnel-handshakes", "table-full"): "tunnel-handshakes",
                   ("tunnel-handshakes", "source-full"): "tunnel-handshakes-per-source"}


class Server(ApiTunnels, ServerCertificateChecks, TunnelConnections, VisitorPath):
    def __init__(self, config, log, clock=utcnow, certificate_check_seconds=None):
        """`clock()` gives the aware UTC time certificates are judged by; the manual
        Server certificate is checked every `certificate_check_seconds` (default:
        RUNEWARP_CERT_CHECK_SECONDS, else 1 h)."""
        self.log = log
        self.clock = clock
        self.config = config
        self.snapshot = config.routing_snapshot()
        self.pools = {t.name: TunnelPool(t.name) for t in self.snapshot.tunnels}
        self.metrics = ServerMetrics(self.snapshot.tunnels, lambda: self.pools)
        self.monitor = Monitor(config.metrics, "server", self, self.metrics, log)
        self.acme = self.challenges = None
        if config.acme is not None:
            self.acme = AcmeCertificates(config.acme, [config.hostname], log, "server",
                                         on_ready=self._certificate_renewed)
            self.challenges = ChallengeResponder(self.acme.challenge_dir)
        self.certificate = self._certificate_for(config)
        self.certificate_missing = False
        self.certificate_upkeep = Periodic(
            self._certificate_upkeep, certificate_check_seconds or check_seconds(), log,
            "server-certificate-renewal-failed", stopped=lambda: self.stopping)
        self._certificate_checked = False
        self._expiry_warnings = certcheck.ExpiryWarnings()
        self.window_budget = WindowBudget(config.limits.stream_buffer_budget)
        self.active_streams = 0
        self.visitors = Group()
        self.splices = Splices()
        self._apply_limits(config.limits)
        self.tunnels = Group()
        self.listeners = []
        self.quic = QuicIntake(self)
        self.on_file_change = lambda path: None  # the lifecycle's, for watch-config
        self.file_watch = FileWatch(lambda path: self.on_file_change(path))
        self.stopping = False
        self.saturation = RateLimitedWarning(log, "server-saturated")
        self.auth_failures = RateLimitedWarning(log, "tunnel-connection-refused")
        self._init_api_tunnels(config)
        self.api = ApiListener(self, config.api, log) if config.api and config.api.bind_address else None

    # -- lifecycle --
    def start(self):
        self._start_api_tunnels()  # stored API Tunnels route from the first Visitor on
        cfg = self.config
        inherited = InheritedSockets(systemd.listen_fds())  # a socket unit's or a hand-over's
        self.monitor.bind(inherited)  # a taken metrics address fails the start before serving
        if self.api is not None:
            self.api.bind(inherited)
        if self.acme is None:
            if not self._certificate_checked:
                self.check_certificate()  # renew or refuse before serving anything
            self.certificate.current()  # fail fast on missing material
        else:
            ports = [port for _, port in cfg.public_bind_addresses]
            warn_port(self.log, 443 if 443 in ports else ports[0])  # the CA dials 443
            self.acme.start()  # Tunnel connections are refused until a certificate exists
        addresses = bind_addresses(cfg)
        self.listeners = [self._listener(cfg, name, address, inherited)
                          for name, address in addresses.items() if address is not None]
        public = [li for li in self.listeners if kind(li.name) == "public"]
        if cfg.public_quic:
            self.quic.bind(public, inherited, several=len(cfg.public_bind_addresses) > 1)
        for address in inherited.refuse_unclaimed(by_key(cfg, addresses)):
            self.log.info("listener-closed", address=address,
                          reason="the config no longer names the address it handed over")
        self._worker_passes()  # a sibling may pass Visitors from the first accept on
        for listener in self.listeners:
            listener.start()
        self.quic.start()
        self.monitor.start()
        if self.api is not None:
            self.api.start()
        self._follow_api_tunnels()
        self._follow_files()
        if self.acme is None and this_worker().upkeeper:
            self.certificate_upkeep.start()  # certbot renews ACME certificates; one worker renews
        tunnel = [li for li in self.listeners if li.name == "tunnel"]
        self.log.info("server-ready", server_hostname=self.snapshot.server_hostname,
                      public_bind_address=format_address(public[0].address),
                      public_bind_addresses=",".join(format_address(li.address) for li in public)
                      if len(public) > 1 else None,
                      tunnel_bind_address=format_address(tunnel[0].address) if tunnel else "shared",
                      inherited=",".join(li.name for li in self.listeners if li.inherited) or None,
                      public_quic=",".join(format_address(e.address) for e in self.quic.endpoints)
                      or None,
                      tunnels=len(self.snapshot.tunnels), version=__version__)

    def handover_sockets(self):
        """Every listening socket for a hand-over's new process (runewarp/handover.py), as
        (socket, name, unit_owned): the public and Tunnel listeners, the public QUIC sockets
        (their flows do not survive: the new process reads the next datagrams) and the
        metrics listener, which it could not bind."""
        sockets = [(li.sock, li.name, li.unit_owned) for li in self.listeners] + self.quic.sockets()
        if self.monitor.sock is not None:
            sockets.append((self.monitor.sock, "metrics", self.monitor.unit_owned))
        if self.api is not None and self.api.sock is not None:
            sockets.append((self.api.sock, "api", self.api.unit_owned))
        return sockets

    def stop_accepting(self, handed_over=False):
        """`handed_over`: the new process serves the metrics listener too, so this one
        stops answering on it (its /readyz would say 503 to the load balancer)."""
        self.stopping = True
        self.file_watch.close()
        for listener in self.listeners:
            listener.stop()
        if self.api is not None:
            self.api.stop()  # no change starts while the Server drains
        self.quic.stop_reading()
        if handed_over:
            self.monitor.stop()
        for pool in self.pools.values():
            for member in pool.members:
                member.session.go_away()

    def drain(self, timeout):
        """Wait for established Visitor streams, at most `timeout` seconds."""
        return drain(self.visitors, self.splices, timeout)

    def unfinished_streams(self):
        """Visitor connections a close would cut now: spliced ones and those still in intake
        or routing."""
        return len(self.visitors) + len(self.splices)

    def close_all(self):
        """The data path first, then certbot: a forced stop never waits for ACME."""
        self.visitors.kill(block=False)
        self.splices.abort_all("server shutting down")
        self.splices.close()
        self.quic.close()
        self._close_worker_passes()
        for pool in self.pools.values():
            for member in list(pool.members):
                member.session.close("server shutting down")
        self.tunnels.kill(block=False)  # no timed wait: the process exits right after
        self.file_watch.close()
        if self.acme is not None:
            self.acme.stop()
        self.monitor.stop()
        if self.api is not None:
            self.api.stop()
        self._close_api_tunnels()

    def _keep_running(self, config):
        """`config` with the running values of what only a restart changes (warned)."""
        fields = RESTART_ONLY
        if this_worker().count > 1:  # the supervisor's sockets: a worker cannot move them alone
            fields = (*fields, *WORKER_RESTART_ONLY)
        config, changed = keep_running(config, self.config, fields)
        for key in changed:
            self.log.warn("reload-needs-restart", key=key.replace("_", "-"))
        return config

    def _adopt(self, config):
        """Before the start serves: route by `config` (the file's plus the stored API Tunnels)."""
        self.config = config
        self.snapshot = config.routing_snapshot()
        self.pools = {t.name: self.pools.get(t.name) or TunnelPool(t.name) for t in self.snapshot.tunnels}
        self.metrics.set_tunnels(self.snapshot.tunnels)

    def _swap(self, config):
        """Swap in a new snapshot, certificate, limits and listeners; Tunnel connections no
        longer authorized close.  `reload` (io/apitable.py) calls it for a new file, an API
        change for new API Tunnels, both under the config lock.

        Everything is built and checked before anything is swapped (a moved listener is
        bound before the old one closes), so a failed reload leaves the running
        configuration whole.
        """
        snapshot = config.routing_snapshot()
        certificate = self._certificate_for(config)
        if self.acme is None:
            try:
                self._certificate_pass(config, starting=True)
            except CertificateRefused as exc:
                raise ConfigError(exc.args[0], file=config.source, key=exc.key) from None
            certificate.current()
        pools = {tunnel.name: self.pools.get(tunnel.name) or TunnelPool(tunnel.name)
                 for tunnel in snapshot.tunnels}
        moved = self._bind_moved(config)
        if config.limits != self.config.limits:
            self._apply_limits(config.limits)
        self.quic.reload(config)
        self.config = config
        self.snapshot = snapshot
        self.certificate = certificate
        old_pools, self.pools = self.pools, pools
        self.metrics.set_tunnels(snapshot.tunnels)
        self._reauthorize(old_pools, snapshot)
        self.listeners = swap(self.listeners, moved, self.log)
        if self.quic.moved_away([li.address for li in self.listeners if kind(li.name) == "public"]):
            self.log.warn("reload-needs-restart", key="public-quic",
                          reason="the UDP sockets stay on the public addresses of the start")
        sizes = pool_sizes(config)
        for listener in self.listeners:
            listener.resize(sizes[kind(listener.name)])
        self.log.configure(config.log_level, config.log_format)
        self._follow_files()
        self.log.info("server-reloaded", tunnels=len(snapshot.tunnels))

    def _apply_limits(self, limits):
        """Admission tables and splice timeouts for `limits`.  A connection already admitted
        releases its slot into the table it came from; live splices get the new timeouts."""
        prefixes = dict(ipv4_prefix=limits.intake_ipv4_prefix,
                        ipv6_prefix=limits.intake_ipv6_prefix)
        self.intake_slots = Admission(limits.intake_connections, limits.intake_per_source,
                                      **prefixes)
        self.handshake_slots = Admission(limits.tunnel_handshakes,
                                         limits.tunnel_handshakes_per_source, **prefixes)
        self.splices.sweeper.timeouts = SpliceTimeouts.from_limits(limits, first_byte=True)

    def _listener(self, config, name, address, inherited=None):
        handle = self._handle_public if kind(name) == "public" else self._handle_tunnel_listener
        several = kind(name) == "public" and len(config.public_bind_addresses) > 1
        return Listener(name, address, handle, pool_sizes(config)[kind(name)], inherited,
                        config_key(config, name), v6only=several)  # [::] beside 0.0.0.0

    def _bind_moved(self, config):
        """Listeners for the bind addresses `config` moves, bound before any old one closes."""
        try:
            return bind_moved(self.listeners, bind_addresses(self.config, self.listeners),
                              bind_addresses(config, self.listeners),
                              lambda name, address: self._listener(config, name, address))
        except (BindError, ActivationError) as exc:
            raise ConfigError(str(exc), file=config.source) from None

    def _follow_files(self):
        """watch-config: the config file and, with cert-dir, the Server certificate."""
        cfg = self.config
        if self.acme is None:
            self.file_watch.follow(cfg, server_cert_paths(cfg.cert_dir), [cfg.cert_dir])
        else:  # certbot's renewals are loaded when it reports them
            self.file_watch.follow(cfg)

    # -- /readyz and /status --
    def ready(self):
        """Listeners serving, a usable Server certificate, and not shutting down."""
        if self.stopping or not self.listeners:
            return False
        try:
            self.certificate.current()
        except (MaterialError, OSError):
            return False
        return True

    def status(self):
        tunnels = []
        for route in self.snapshot.tunnels:
            pool = self.pools.get(route.name)
            members = [{"client_identity": m.identity, "instance": m.instance, "peer": m.peer,
                        "connected_since": rfc3339(m.connected_since),
                        "active_streams": max(0, m.session.active_streams - 1),  # not control
                        "ping_rtt_seconds": m.session.ping_rtt,
                        "hostnames": sorted(m.served.names), "catch_all": m.served.catch_all,
                        "unhealthy_hostnames": sorted(m.served.unhealthy),
                        "catch_all_unhealthy": m.served.catch_all_unhealthy,
                        "ping_overdue": m.session.ping_overdue}
                       for m in (pool.members if pool else ())]
            tunnels.append({"name": route.name, "public_hostnames": sorted(route.public_hostnames),
                            "active_streams": pool.active_streams if pool else 0,
                            "members": members})
        document = {"tunnels": tunnels, "certificates": certificate_entries(self.metrics)}
        if self.quic.endpoints:
            document["quic"] = self.quic.status()
        return document

    # -- admission, shared by Visitors (io/visitors.py) and Tunnel handshakes (io/tunnels.py) --
    def _admit(self, table, kind, sock, address):
        """A slot in `table` for this peer, shedding a slow holder under pressure; None if refused.

        A shed holder's socket is shut down, which wakes its reader with EOF: its own
        greenlet then ends the way any closed connection does.
        """
        try:
            slot, shed = table.admit(address[0], time.monotonic(), sock)
        except AdmissionRefused as exc:
            self.saturation.warn(_REFUSED_SCOPES[kind, exc.reason], time.monotonic(),
                                 peer=format_address(address))
            return None
        for victim in shed:
            self.log.debug("connection-shed", kind=kind, peer_bytes=victim.received)
            try:
                victim.owner.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return slot
