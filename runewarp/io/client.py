"""Client role: dial the Server, keep the Tunnel connection up, serve its streams.

Each Server address has its own worker with its own backoff sequence.  Each
stream the Server opens goes: PROXY header → ClientHello → Service → Local
backend → splice.
"""

import dataclasses
import functools
import ipaddress
import os
import random
import socket
import ssl
import time
import uuid

import gevent
from gevent.event import Event
from gevent.pool import Pool

from .. import __version__
from ..acme import AcmeCertificates
from ..errors import MaterialError, ProtocolError
from ..logs import RateLimitedWarning
from ..material import identity_needs_renewal, renew_identity, show_identity
from ..proto import control, proxyv2
from ..proto.backoff import WINDOWS, Backoff, parse_windows
from ..proto.mux import GOAWAY_NORMAL, Role, WindowBudget
from ..tls import ALPN_ACME, ALPN_TUNNEL, client_tunnel_context, is_unauthorized_alert
from .intake import INTAKE_DEADLINE, IntakeRejected, intake_deadline, read_client_hello
from .listener import format_address, set_keepalive, set_nodelay
from .splice import TRANSPORT_ERRORS, SocketEnd, Splices, StreamEnd
from .sweeper import SpliceTimeouts
from .terminate import PublicCertificates, StreamTransport, TLSEnd, accept_visitor_tls
from .tlsconn import ClientTLSConnection, TLSClosed
from .tunnel import StreamReset, TunnelSession, drain_control, read_control_messages
from .upkeep import Periodic, check_seconds

TUNNEL_HANDSHAKE_DEADLINE = 10.0
BACKEND_CONNECT_DEADLINE = 5.0
# Bound to workers, the handler pool or the ACME scheduler at start: a reload keeps them.
RESTART_ONLY = ("server_addresses", "limits", "acme")


class Unauthorized(Exception):
    """The Server refused our Client identity."""


class ServiceTable:
    """Client-side Service selection: Catch-all, or exact normalized hostname."""

    def __init__(self, services):
        self.catch_all = services[0] if len(services) == 1 and not services[0].public_hostnames \
            else None
        self.by_hostname = {h: s for s in services for h in s.public_hostnames}

    def select(self, hostname):
        return self.catch_all or self.by_hostname.get(hostname)

    @property
    def hostnames(self):
        return sorted(self.by_hostname)


def terminate_hostnames(config):
    return [h for s in config.services if s.tls_mode == "terminate" for h in s.public_hostnames]


class Client:
    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.instance = uuid.uuid4().hex[:12]
        self.services = ServiceTable(config.services)
        self.acme = None
        if config.acme is not None:
            self.acme = AcmeCertificates(config.acme, terminate_hostnames(config), log, "client",
                                         on_ready=lambda host: self.public_certs.context_for(host))
        self.public_certs = PublicCertificates(config.public_cert_dir, log, self.acme)
        self.handlers = Pool(config.limits.active_streams)
        self.window_budget = WindowBudget(config.limits.stream_buffer_budget)
        self.splices = Splices(SpliceTimeouts.from_limits(config.limits))
        self.saturation = RateLimitedWarning(log, "client-saturated")
        self.workers = []
        self.sessions = set()
        self.stopping = Event()

    def start(self):
        self.identity = show_identity(self.config.identity_dir)  # fail fast without material
        # Before any Visitor can arrive: renew due Public hostname certificates the Client
        # issued itself, and name the terminate hostnames that have none.  Then every hour.
        self.public_certs.upkeep(terminate_hostnames(self.config), announce=True)
        self.certificate_upkeep = Periodic(
            lambda: self.public_certs.upkeep(terminate_hostnames(self.config)), check_seconds(),
            self.log, "public-certificate-renewal-failed", stopped=self.stopping.is_set).start()
        if self.acme is not None:
            self.acme.start()
        for address in self.config.server_addresses:
            self.workers.append(gevent.spawn(self._worker, address))
        self.log.info("client-ready", client_identity=self.identity, instance=self.instance,
                      server_addresses=",".join(format_address(a) for a in
                                                self.config.server_addresses),
                      services=len(self.config.services), version=__version__)

    def stop_accepting(self):
        self.stopping.set()
        for session in list(self.sessions):
            session.go_away()

    def drain(self, timeout):
        deadline = time.monotonic() + timeout
        handlers_done = self.handlers.join(timeout=timeout)
        return self.splices.join(max(0.0, deadline - time.monotonic())) and handlers_done

    def unfinished_streams(self):
        """Streams a close would cut now: spliced ones and those still in a handler."""
        return len(self.handlers) + len(self.splices)

    def close_all(self):
        if self.acme is not None:
            self.acme.stop()
        self.handlers.kill(block=False)
        self.splices.abort_all("client shutting down")
        self.splices.close()
        for session in list(self.sessions):
            session.close("client shutting down")
        gevent.killall(self.workers, block=False)  # no timed wait: the process exits right after

    def reload(self, config):
        kept = {}
        for key in RESTART_ONLY:
            if getattr(config, key) != getattr(self.config, key):
                self.log.warn("reload-needs-restart", key=key.replace("_", "-"))
                kept[key] = getattr(self.config, key)
        config = dataclasses.replace(config, **kept)  # these keep their running values
        self.services = ServiceTable(config.services)
        self.public_certs = PublicCertificates(config.public_cert_dir, self.log, self.acme,
                                               clock=self.public_certs.clock)
        self.public_certs.upkeep(terminate_hostnames(config), announce=True)
        self.config = config
        self.log.configure(config.log_level, config.log_format)
        self.log.info("client-reloaded", services=len(config.services))

    # -- Tunnel connection worker --
    def _worker(self, address):
        backoff = Backoff(reconnect_windows())
        server = format_address(address)
        failures = 0  # attempts that failed since the last established connection
        down_since = time.monotonic()  # no Tunnel connection to this Server since then
        while not self.stopping.is_set():
            try:
                session = self._connect(address, failures, down_since)
            except Unauthorized:
                failures += 1
                self.log.error("tunnel-connection-unauthorized", server_address=server,
                               client_identity=self.identity, attempt=failures,
                               reason=f"unauthorized client identity {self.identity}: the "
                                      "Server's Tunnels do not list it")
            except MaterialError as exc:
                failures += 1
                self.log.error("tunnel-connection-failed", server_address=server, attempt=failures,
                               reason=str(exc))
            except (OSError, ssl.SSLError, gevent.Timeout, ProtocolError, StreamReset,
                    control.ControlError) as exc:
                failures += 1
                # The first failure of an outage is the warning; its repeats are counted.
                self.log.log("warn" if failures == 1 else "info", "tunnel-connection-failed",
                             server_address=server, attempt=failures, reason=_describe(exc))
            except Exception as exc:  # noqa: BLE001 - a peer's bytes never end this worker
                failures += 1
                self.log.error("tunnel-connection-failed", server_address=server, attempt=failures,
                               reason=f"unexpected {_describe(exc)}")
            else:
                failures = 0
                backoff.established(time.monotonic())
                self.sessions.add(session)
                gevent.wait([session.closed, session.peer_going_away, self.stopping], count=1)
                if self.stopping.is_set():
                    break
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
            self.log.info("tunnel-reconnect-scheduled", server_address=server,
                          next_retry_delay=format_seconds(delay))
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
        host, port = address
        context = self._tls_context()
        with gevent.Timeout(TUNNEL_HANDSHAKE_DEADLINE):
            sock = socket.create_connection((_resolve_override(host), port))  # resolves each time
            try:
                set_nodelay(sock)
                set_keepalive(sock)
                tls = ClientTLSConnection(sock, context, host)
                tls.handshake()
            except BaseException:
                sock.close()
                raise
        if tls.selected_alpn_protocol() != ALPN_TUNNEL.decode():
            tls.close()
            raise ProtocolError("the Server did not select ALPN runewarp/1")
        session = TunnelSession(tls, Role.CLIENT, on_stream=self._on_stream, log=self.log,
                                window_budget=self.window_budget, name=format_address(address))
        session.start()
        try:
            stream = session.open_stream()
            stream.sendall(control.encode(control.hello(
                __version__, self.instance, self.services.hostnames,
                self.services.catch_all is not None)))
            decoder = control.LineDecoder()
            with gevent.Timeout(TUNNEL_HANDSHAKE_DEADLINE):
                welcome = control.parse_welcome(read_control_messages(stream, decoder)[0])
        except (StreamReset, gevent.Timeout, control.ControlError) as exc:
            session.close()
            error = session.read_error or session.close_error
            if is_unauthorized_alert(error):
                raise Unauthorized() from error
            raise (error or exc) from None
        except BaseException:
            session.close()  # anything else (a bug, a kill): never leave a live session behind
            raise
        recovered = {}
        if failures:  # the recovery, once: how long and how many attempts it took
            recovered = dict(failed_attempts=failures,
                             outage=format_seconds(time.monotonic() - down_since))
        self.log.info("tunnel-connection-established", server_address=format_address(address),
                      tunnel=welcome.tunnel, server_version=welcome.version,
                      client_identity=self.identity, **recovered)
        gevent.spawn(drain_control, stream, decoder, self.log)
        return session

    # -- streams the Server opens: PROXY header → ClientHello → Service → backend --
    def _on_stream(self, session, stream):
        if stream.id % 2 == 1:
            stream.reset()
            return
        # The Tunnel reader runs this: it must never block, so a full pool also refuses.
        if len(self.handlers) + len(self.splices) >= self.config.limits.active_streams \
                or self.handlers.full():
            self.saturation.warn("active-streams", time.monotonic(),
                                 limit=self.config.limits.active_streams)
            stream.reset()
            return
        self.handlers.spawn(self._serve_stream, stream)

    def _serve_stream(self, stream):
        try:
            with intake_deadline():  # PROXY header and ClientHello share one deadline
                header, rest = _read_proxy_header(stream)
                taken = read_client_hello(lambda: stream.recv_consumed(), rest)
                del rest  # the bytes live on in `taken` only until they are forwarded
            service = self.services.select(taken.hostname)
            if service is None:
                self.log.debug("stream-rejected", public_hostname=taken.hostname,
                               reason="no-service")
                stream.reset()
                return
            if service.tls_mode == "terminate":
                self._terminate(stream, service, taken, header)
            else:
                self._passthrough(stream, service, taken, header)
        except IntakeRejected as exc:
            self.log.debug("stream-rejected", reason=exc.reason)
            stream.reset()
        except proxyv2.ProxyHeaderError as exc:
            self.log.debug("stream-rejected", reason=f"bad-proxy-header: {exc}")
            stream.reset()
        except StreamReset:
            stream.reset()

    def _connect_backend(self, service, hostname):
        try:
            with gevent.Timeout(BACKEND_CONNECT_DEADLINE):
                sock = _dial(service.backend_address)
        except (OSError, gevent.Timeout) as exc:
            self.log.warn("backend-connect-failed", public_hostname=hostname,
                          backend_address=format_address(service.backend_address),
                          reason=_describe(exc))
            return None
        set_nodelay(sock)
        set_keepalive(sock)  # a backend host that vanished is noticed, and its stream freed
        return sock

    def _passthrough(self, stream, service, taken, header):
        sock = self._connect_backend(service, taken.hostname)
        if sock is None:
            stream.reset()
            return
        try:
            sock.sendall(taken.buffered)
            taken.release()
        except OSError as exc:
            self.log.warn("backend-write-failed", public_hostname=taken.hostname,
                          backend_address=format_address(service.backend_address),
                          reason=_describe(exc))
            sock.close()
            stream.reset()
            return
        self._splice(StreamEnd(stream), sock, service, taken, header, "passthrough")

    def _terminate(self, stream, service, taken, header):
        if self.acme is not None and ALPN_ACME.decode() in taken.hello.alpn_protocols:
            # A TLS-ALPN-01 validation for this hostname, relayed by the Server.
            self.acme.responder.answer(StreamTransport(stream), taken.hostname, taken.buffered,
                                       self.log)
            return
        context = self.public_certs.context_for(taken.hostname)
        try:
            with gevent.Timeout(INTAKE_DEADLINE):
                tls = accept_visitor_tls(stream, context, taken.buffered)
            taken.release()
        except (gevent.Timeout, TLSClosed, *TRANSPORT_ERRORS) as exc:
            self.log.debug("stream-rejected", public_hostname=taken.hostname,
                           reason=f"visitor-handshake-failed: {_describe(exc)}")
            stream.reset()
            return
        sock = self._connect_backend(service, taken.hostname)
        if sock is None:
            stream.reset()
            return
        self._splice(TLSEnd(tls, stream), sock, service, taken, header, "terminate")

    def _splice(self, visitor_end, sock, service, taken, header, mode):
        visitor = format_address(header.source) if header.source else None
        backend = format_address(service.backend_address)
        self.log.debug("stream-routed", public_hostname=taken.hostname, visitor=visitor,
                       backend_address=backend, tls_mode=mode)
        hostname = taken.hostname

        def closed(result):
            self.log.debug("stream-closed", public_hostname=hostname, visitor=visitor,
                           bytes_up=result.a_to_b, bytes_down=result.b_to_a, reason=result.error)

        self.splices.start(visitor_end, SocketEnd(sock), closed)


@functools.lru_cache(maxsize=256)
def _literal_family(host):
    """The address family of an IP literal, None for a name (backend addresses are few)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _dial(address):
    """TCP connect; an IP literal skips the resolver (a thread-pool round trip per stream)."""
    host, port = address
    family = _literal_family(host)
    if family is None:
        return socket.create_connection(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _resolve_override(host):
    """RUNEWARP_RESOLVE="host=address,..." pins a name like curl --resolve (tests, split DNS).

    TLS still uses the Server hostname for SNI and certificate checks.
    """
    for entry in os.environ.get("RUNEWARP_RESOLVE", "").split(","):
        name, _, address = entry.partition("=")
        if name.strip().lower() == host and address.strip():
            return address.strip()
    return host



def _read_proxy_header(stream):
    buf = b""
    while True:
        decoded = proxyv2.decode(buf) if buf else None
        if decoded is not None:
            header, length = decoded
            return header, buf[length:]
        data = stream.recv_consumed()
        if not data:
            raise IntakeRejected("closed-before-proxy-header")
        buf += data



def reconnect_windows():
    """The backoff windows: RUNEWARP_RECONNECT_WINDOWS="0.2,0.5" (tests) or the standard ones."""
    return parse_windows(os.environ.get("RUNEWARP_RECONNECT_WINDOWS", "")) or WINDOWS


def format_seconds(seconds):
    """A delay as logged: 0.23s, 1.5s, 12s (two decimals at most, never rounded up to 1s)."""
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"


def _describe(exc):
    if isinstance(exc, gevent.Timeout):
        return "deadline exceeded"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"
