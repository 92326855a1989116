"""Server role: accept → intake → route → place → envelope → splice.

Visitor connections and Tunnel connections share the public listener; a
ClientHello for the Server hostname is split by ALPN.  Routing reads one
immutable snapshot, swapped whole on reload.
"""

import dataclasses
import shlex
import socket
import time

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group
from OpenSSL import SSL

from .. import __version__, certcheck
from ..certcheck import CertificateRefused
from ..errors import ConfigError, MaterialError, ProtocolError
from ..acme import AcmeCertificates, warn_port
from ..logs import RateLimitedWarning
from ..material import (SERVER_CA_KEY, file_stamp, load_certificate, load_server_cert_paths,
                        renew_server_cert, server_cert_paths, server_cert_renewable)
from ..proto import control, proxyv2
from ..proto.admission import Admission, Refused
from ..proto.mux import Role, WindowBudget
from ..proto.placement import Placement
from ..tls import (ALPN_ACME, ALPN_TUNNEL, identity_from_pyopenssl, refused_identity,
                   server_tunnel_context)
from .intake import IntakeRejected, intake
from .listener import Listener, format_address
from .splice import SocketEnd, Splices, StreamEnd
from .sweeper import SpliceTimeouts
from .tlsconn import ServerTLSConnection, TLSClosed
from .tunnel import StreamReset, TunnelSession, drain_control, read_control_messages
from .upkeep import Periodic, check_seconds, utcnow

TUNNEL_HANDSHAKE_DEADLINE = 5.0
# Bound to listeners, admission tables or the ACME scheduler at start: a reload keeps them.
RESTART_ONLY = ("public_bind_address", "tunnel_bind_address", "hostname", "limits", "acme")
CONTROL_HELLO_DEADLINE = 10.0
ENVELOPE_DEADLINE = 5.0
# The rate-limited warning scope for a refused admission, by table and reason.
_REFUSED_SCOPES = {("intake", "table-full"): "intake-full",
                   ("intake", "source-full"): "source-full",
                   ("tunnel-handshakes", "table-full"): "tunnel-handshakes",
                   ("tunnel-handshakes", "source-full"): "tunnel-handshakes-per-source"}


class TunnelMember:
    """One live Tunnel connection in a Tunnel pool."""

    def __init__(self, session, identity, instance, peer):
        self.session = session
        self.identity = identity
        self.instance = instance
        self.peer = peer
        self.streams_placed = 0


class TunnelPool:
    def __init__(self, name):
        self.name = name
        self.members = []
        self.placement = Placement()
        self.active_streams = 0  # routed streams of this Tunnel, held to its share

    def place(self):
        live = [m for m in self.members if m.session.accepting]
        return self.placement.choose(live, lambda m: m.session.active_streams)


class ServerCertificate:
    """The Server certificate and the context built from it, rebuilt when the files change.

    `locate()` returns (certificate path, key path) cheaply or raises MaterialError:
    the manual cert-dir, or certbot's live folder with ACME.  `check()`, when given,
    returns the same paths after recovering an interrupted write and checking that
    the pair is usable; it runs only when the files changed, not per connection.
    """

    def __init__(self, locate, authorize, check=None):
        self.locate = locate
        self.check = check
        self.authorize = authorize
        self._stamp = None
        self.context = None

    def current(self):
        cert_path, key_path = self.locate()
        try:
            stamp = file_stamp(cert_path, key_path)
        except OSError as exc:
            if self.check is not None:
                self.check()  # the precise error, with the command that makes the files
            raise MaterialError(f"cannot read the Server certificate: {exc}") from exc
        if stamp != self._stamp:
            if self.check is not None:
                cert_path, key_path = self.check()
                stamp = file_stamp(cert_path, key_path)  # a recovery may have rewritten them
            self.context = server_tunnel_context(cert_path, key_path, self.authorize)
            self._stamp = stamp
        return self.context


class Server:
    def __init__(self, config, log, clock=utcnow, certificate_check_seconds=None):
        """`clock()` gives the aware UTC time certificates are judged by; the manual
        Server certificate is checked every `certificate_check_seconds` (default:
        RUNEWARP_CERT_CHECK_SECONDS, else 1 h)."""
        self.log = log
        self.clock = clock
        self.config = config
        self.snapshot = config.routing_snapshot()
        self.pools = {t.name: TunnelPool(t.name) for t in self.snapshot.tunnels}
        self.acme = None
        if config.acme is not None:
            self.acme = AcmeCertificates(config.acme, [config.hostname], log, "server",
                                         on_ready=self._certificate_renewed)
        self.certificate = self._certificate_for(config)
        self.certificate_missing = False
        self.certificate_upkeep = Periodic(
            self._certificate_upkeep, certificate_check_seconds or check_seconds(), log,
            "server-certificate-renewal-failed", stopped=lambda: self.stopping)
        self._certificate_checked = False
        self._expiry_warnings = certcheck.ExpiryWarnings()
        limits = config.limits
        prefixes = dict(ipv4_prefix=limits.intake_ipv4_prefix,
                        ipv6_prefix=limits.intake_ipv6_prefix)
        self.intake_slots = Admission(limits.intake_connections, limits.intake_per_source,
                                      **prefixes)
        self.window_budget = WindowBudget(limits.stream_buffer_budget)
        self.handshake_slots = Admission(limits.tunnel_handshakes,
                                         limits.tunnel_handshakes_per_source, **prefixes)
        self.active_streams = 0
        self.visitors = Group()
        self.splices = Splices(SpliceTimeouts.from_limits(limits, first_byte=True))
        self.tunnels = Group()
        self.listeners = []
        self.stopping = False
        self.saturation = RateLimitedWarning(log, "server-saturated")
        self.auth_failures = RateLimitedWarning(log, "tunnel-connection-refused")

    # -- lifecycle --
    def start(self):
        cfg = self.config
        if self.acme is None:
            if not self._certificate_checked:
                self.check_certificate()  # renew or refuse before serving anything
            self.certificate.current()  # fail fast on missing material
        else:
            warn_port(self.log, cfg.public_bind_address[1])
            self.acme.start()  # Tunnel connections are refused until a certificate exists
        pool_size = cfg.limits.intake_connections + cfg.limits.active_streams \
            + cfg.limits.tunnel_handshakes
        self.listeners.append(Listener("public", cfg.public_bind_address,
                                       self._handle_public, pool_size))
        if cfg.tunnel_bind_address is not None:
            live = cfg.limits.pool_connections * len(self.snapshot.tunnels)
            self.listeners.append(Listener("tunnel", cfg.tunnel_bind_address,
                                           self._handle_tunnel_listener,
                                           live + cfg.limits.tunnel_handshakes))
        for listener in self.listeners:
            listener.start()
        if self.acme is None:
            self.certificate_upkeep.start()  # certbot renews ACME certificates
        self.log.info("server-ready", server_hostname=self.snapshot.server_hostname,
                      public_bind_address=format_address(self.listeners[0].address),
                      tunnel_bind_address=(format_address(self.listeners[1].address)
                                           if len(self.listeners) > 1 else "shared"),
                      tunnels=len(self.snapshot.tunnels), version=__version__)

    def stop_accepting(self):
        self.stopping = True
        for listener in self.listeners:
            listener.stop()
        for pool in self.pools.values():
            for member in pool.members:
                member.session.go_away()

    def drain(self, timeout):
        """Wait for established Visitor streams, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        visitors_done = self.visitors.join(timeout=timeout)
        return self.splices.join(max(0.0, deadline - time.monotonic())) and visitors_done

    def unfinished_streams(self):
        """Visitor connections a close would cut now: spliced ones and those still in intake
        or routing."""
        return len(self.visitors) + len(self.splices)

    def close_all(self):
        if self.acme is not None:
            self.acme.stop()
        self.visitors.kill(block=False)
        self.splices.abort_all("server shutting down")
        self.splices.close()
        for pool in self.pools.values():
            for member in list(pool.members):
                member.session.close("server shutting down")
        self.tunnels.kill(block=False)  # no timed wait: the process exits right after

    def reload(self, config):
        """Swap in a new snapshot and certificate; Tunnel connections no longer authorized close.

        Everything is built and checked before anything is swapped, so a failed
        reload leaves the running configuration whole.
        """
        kept = {}
        for key in RESTART_ONLY:
            if getattr(config, key) != getattr(self.config, key):
                self.log.warn("reload-needs-restart", key=key.replace("_", "-"))
                kept[key] = getattr(self.config, key)
        config = dataclasses.replace(config, **kept)  # these keep their running values
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
        self.config = config
        self.snapshot = snapshot
        self.certificate = certificate
        old_pools, self.pools = self.pools, pools
        for name, pool in old_pools.items():
            for member in list(pool.members):
                route = snapshot.tunnel_for_identity(member.identity)
                if route is None or route.name != name:
                    member.session.go_away()
                    member.session.close("identity no longer authorized for this tunnel")
        self.log.configure(config.log_level, config.log_format)
        self.log.info("server-reloaded", tunnels=len(snapshot.tunnels))

    def _certificate_for(self, config):
        if self.acme is None:
            return ServerCertificate(lambda: server_cert_paths(config.cert_dir), self._authorize,
                                     check=lambda: self._checked_paths(config))

        def locate():
            paths = self.acme.paths(config.hostname)
            if paths is None:
                raise MaterialError(f"no ACME certificate for {config.hostname} yet")
            return paths

        return ServerCertificate(locate, self._authorize)

    # -- the manual Server certificate: renewed by the Server when it holds the CA --
    def check_certificate(self):
        """At start: renew a due certificate the Server issued itself, warn about one it
        cannot renew that expires within 30 days, and refuse (CertificateRefused, naming
        the config key) one that does not name `hostname`, or cannot serve and cannot be
        renewed.  Nothing to do with ACME: certbot renews."""
        if self.acme is None:
            self._certificate_pass(self.config, starting=True)
        self._certificate_checked = True

    def _certificate_upkeep(self):
        """The periodic pass: renew when due, warn at most once a day, never refuse."""
        if self.acme is None and not self.stopping and \
                self._certificate_pass(self.config, starting=False):
            self.certificate.current()  # load it now, so a broken one is reported at once

    def _certificate_pass(self, config, starting):
        """One check of `config`'s certificate at `self.clock()`; True when it was renewed."""
        try:
            cert_path, _ = load_server_cert_paths(config.cert_dir)
            leaf = load_certificate(cert_path)
        except MaterialError:
            if starting:
                raise
            return False  # reported as server-certificate-missing at the next Tunnel connection
        now = self.clock()
        renewable = server_cert_renewable(config.cert_dir)
        verdict = certcheck.decide(leaf, now, renewable=renewable, hostname=config.hostname)
        if verdict == certcheck.WRONG_HOSTNAME:
            if starting:
                raise CertificateRefused(_wrong_hostname(config, cert_path, leaf, renewable),
                                         key="server.hostname")
            return False  # ServerCertificate refuses it at the next Tunnel connection
        if verdict == certcheck.RENEW:
            try:
                result = renew_server_cert(config.cert_dir, hostname=config.hostname, now=now)
            except (MaterialError, OSError) as exc:
                if starting and certcheck.validity(leaf, now) != certcheck.VALID:
                    raise CertificateRefused(f"{cert_path}: {certcheck.describe(leaf, now)}, and "
                                             f"renewing it failed: {exc}",
                                             key="server.cert-dir") from None
                self.log.error("server-certificate-renewal-failed", file=str(cert_path),
                               not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                               reason=str(exc))
                return False
            self.log.info("server-certificate-renewed", server_hostname=config.hostname,
                          not_after=certcheck.rfc3339(result.not_after),
                          serial=format(result.serial, "x"),
                          previous_not_after=certcheck.rfc3339(leaf.not_valid_after_utc))
            return True
        if verdict == certcheck.REFUSE and starting:
            raise CertificateRefused(
                f"{cert_path}: {certcheck.describe(leaf, now)}, and the Server cannot renew it "
                f"({_not_ours(config)}); {_replace_hint(config)}", key="server.cert-dir")
        if verdict in (certcheck.REFUSE, certcheck.WARN):
            self._warn_expiring(config, cert_path, leaf, now)
        return False

    def _warn_expiring(self, config, cert_path, leaf, now):
        if not self._expiry_warnings.due(config.hostname, leaf, now):
            return
        expired = certcheck.validity(leaf, now) != certcheck.VALID
        self.log.warn("server-certificate-expiring", file=str(cert_path),
                      not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                      days_left=certcheck.days_left(leaf, now),
                      reason=("it is not valid now: Clients refuse it" if expired else
                              f"the Server cannot renew it: {_not_ours(config)}"),
                      fix=_replace_hint(config))

    def _checked_paths(self, config):
        """ServerCertificate's check: a usable pair that names the Server hostname."""
        paths = load_server_cert_paths(config.cert_dir)
        leaf = load_certificate(paths[0])
        if not certcheck.names_hostname(leaf, config.hostname):
            raise CertificateRefused(_wrong_hostname(config, paths[0], leaf,
                                                     server_cert_renewable(config.cert_dir)),
                                     key="server.hostname")
        return paths

    def _certificate_renewed(self, _hostname):
        """Load a new ACME certificate now, so a broken one is reported at once."""
        self.certificate.current()
        if self.certificate_missing:
            self.certificate_missing = False
            self.log.info("server-certificate-ready")

    def _authorize(self, identity):
        return self.snapshot.tunnel_for_identity(identity) is not None

    # -- public listener: accept → intake → route → place → splice --
    def _handle_public(self, sock, address):
        self.visitors.add(gevent.getcurrent())  # nodelay and keepalive: from the listener
        spliced = False
        slot = None
        try:
            slot = self._admit(self.intake_slots, "intake", sock, address)
            if slot is None:
                return
            self.saturation.recovered("intake-full")
            self.saturation.recovered("source-full")

            def read():
                data = sock.recv(16 * 1024)
                slot.progress(len(data))
                return data

            try:
                taken = intake(read)
            finally:
                self.intake_slots.release(slot)
            if slot.shed:  # its hello was already buffered when it was shed: still shed
                raise IntakeRejected("shed")
            if taken.hostname == self.snapshot.server_hostname:
                self._server_hostname_connection(sock, address, taken)
                return
            spliced = self._route_visitor(sock, address, taken)
        except IntakeRejected as exc:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason="shed" if slot is not None and slot.shed else exc.reason)
        except OSError as exc:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason=f"socket-error: {exc}")
        finally:
            if not spliced:
                sock.close()

    def _admit(self, table, kind, sock, address):
        """A slot in `table` for this peer, shedding a slow holder under pressure; None if refused.

        A shed holder's socket is shut down, which wakes its reader with EOF: its own
        greenlet then ends the way any closed connection does.
        """
        try:
            slot, shed = table.admit(address[0], time.monotonic(), sock)
        except Refused as exc:
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

    def _server_hostname_connection(self, sock, address, taken):
        offered = taken.hello.alpn_protocols
        if ALPN_TUNNEL.decode() in offered and self.config.tunnel_bind_address is None:
            self.visitors.discard(gevent.getcurrent())
            self.tunnels.add(gevent.getcurrent())
            self._tunnel_connection(sock, address, taken.buffered)
        elif ALPN_ACME.decode() in offered and self.acme is not None:
            self.acme.responder.answer(sock, taken.hostname, taken.buffered, self.log)
        elif ALPN_ACME.decode() in offered:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason="acme-not-configured")
        else:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason="server-hostname-without-tunnel-alpn"
                           if self.config.tunnel_bind_address is None
                           else "tunnel-connections-use-the-tunnel-listener")

    def _route_visitor(self, sock, address, taken):
        """Route and place one Visitor; True once a splice owns its socket."""
        hostname = taken.hostname
        route = self.snapshot.tunnel_for_hostname(hostname)
        if route is None:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           public_hostname=hostname, reason="unknown-hostname")
            return False
        pool = self.pools.get(route.name)
        member = pool.place() if pool else None
        if member is None:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           public_hostname=hostname, tunnel=route.name,
                           reason="no-tunnel-connection")
            return False
        limits = self.config.limits
        if self.active_streams >= limits.active_streams:
            self.saturation.warn("active-streams", time.monotonic())
            return False
        if pool.active_streams >= limits.tunnel_share(len(self.pools)):
            self.saturation.warn(f"active-streams-per-tunnel:{route.name}", time.monotonic(),
                                 tunnel=route.name)
            return False
        self.active_streams += 1
        pool.active_streams += 1
        spliced = False
        try:
            try:
                stream = member.session.open_stream()
            except ProtocolError:
                self.log.debug("visitor-rejected", public_hostname=hostname, tunnel=route.name,
                               reason="tunnel-connection-going-away")
                return False
            member.streams_placed += 1
            envelope = proxyv2.encode(address[:2], sock.getsockname()[:2]) + taken.buffered
            taken.release()
            try:
                with gevent.Timeout(ENVELOPE_DEADLINE):
                    stream.sendall(envelope)
                del envelope
            except (gevent.Timeout, StreamReset):
                stream.reset()
                self.log.debug("visitor-rejected", public_hostname=hostname, tunnel=route.name,
                               reason="stream-open-failed")
                return False
            self.log.debug("visitor-routed", visitor=format_address(address),
                           public_hostname=hostname, tunnel=route.name,
                           client_instance=member.instance, stream=stream.id)
            started = time.monotonic()
            uploaded = taken.size

            def closed(result):
                self.active_streams -= 1
                pool.active_streams -= 1
                self.log.debug("visitor-closed", public_hostname=hostname, tunnel=route.name,
                               bytes_up=result.a_to_b + uploaded, bytes_down=result.b_to_a,
                               duration=f"{time.monotonic() - started:.3f}s",
                               reason=result.error)

            self.splices.start(SocketEnd(sock), StreamEnd(stream), closed)
            spliced = True
            return True
        finally:
            if not spliced:
                self.active_streams -= 1
                pool.active_streams -= 1

    # -- Tunnel connections --
    def _handle_tunnel_listener(self, sock, address):
        self.tunnels.add(gevent.getcurrent())
        try:
            self._tunnel_connection(sock, address, b"")
        finally:
            sock.close()

    def _tunnel_connection(self, sock, address, buffered):
        peer = format_address(address)
        if self.stopping:
            return
        try:
            context = self.certificate.current()
        except MaterialError as exc:
            if not self.certificate_missing:
                self.log.warn("server-certificate-missing", reason=str(exc),
                              effect="Tunnel connections are refused until it exists")
            self.certificate_missing = True
            return
        if self.certificate_missing:
            self.certificate_missing = False
            self.log.info("server-certificate-ready")
        slot = self._admit(self.handshake_slots, "tunnel-handshakes", sock, address)
        if slot is None:
            return
        self.saturation.recovered("tunnel-handshakes")
        tls = ServerTLSConnection(sock, context, buffered)
        slot.progress(len(buffered))
        try:
            with gevent.Timeout(TUNNEL_HANDSHAKE_DEADLINE) as timer:
                tls.handshake(slot.progress)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self.log.info("tunnel-connection-refused", peer=peer, reason="handshake-deadline")
            return
        except SSL.Error as exc:
            identity = refused_identity(context, tls.conn)
            reason = "unauthorized-client-identity" if identity else f"tls-error: {exc}"
            self.auth_failures.warn(address[0], time.monotonic(), peer=peer,
                                    client_identity=identity, reason=reason)
            return
        except (TLSClosed, OSError) as exc:
            self.log.info("tunnel-connection-refused", peer=peer,
                          reason="shed" if slot.shed else f"closed: {exc}")
            return
        finally:
            self.handshake_slots.release(slot)
            refused_identity(context, tls.conn)  # never leave an entry behind
        if slot.shed:  # finished from bytes already buffered when it was shed
            self.log.info("tunnel-connection-refused", peer=peer, reason="shed")
            tls.close()
            return
        identity = identity_from_pyopenssl(tls.peer_certificate())
        self._serve_tunnel(tls, peer, identity)

    def _serve_tunnel(self, tls, peer, identity):
        route = self.snapshot.tunnel_for_identity(identity)
        pool = self.pools.get(route.name) if route else None
        if pool is None:
            tls.close()
            return
        if len(pool.members) >= self.config.limits.pool_connections:
            self.saturation.warn(f"pool:{route.name}", time.monotonic(), tunnel=route.name)
            tls.close()
            return
        control_stream = AsyncResult()

        def on_stream(session, stream):
            if stream.id == 1 and not control_stream.ready():
                control_stream.set(stream)
            else:
                stream.reset()

        session = TunnelSession(tls, Role.SERVER, on_stream=on_stream, log=self.log,
                                window_budget=self.window_budget, name=peer)

        def on_closed(_event):
            if not control_stream.ready():
                control_stream.set_exception(StreamReset(session.close_reason))

        session.closed.rawlink(on_closed)
        session.start()
        member = None
        try:
            try:
                with gevent.Timeout(CONTROL_HELLO_DEADLINE) as timer:
                    stream = control_stream.get()
                    decoder = control.LineDecoder()
                    messages = read_control_messages(stream, decoder)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason="no control hello before the deadline")
                return
            except (StreamReset, control.ControlError) as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"no control hello: {exc}")
                return
            try:
                hello = control.parse_hello(messages[0])
            except control.ControlError as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"bad control hello: {exc}")
                return
            # A reload may have happened while we waited for the hello: judge again now.
            current = self.snapshot.tunnel_for_identity(identity)
            if current is None or current.name != route.name or self.pools.get(route.name) \
                    is not pool or len(pool.members) >= self.config.limits.pool_connections:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason="no longer authorized for this Tunnel, or its pool is full")
                return
            try:
                stream.sendall(control.encode(control.welcome(route.name, __version__)))
            except StreamReset as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"closed after its hello: {exc}")
                return
            self._warn_drift(route, hello, identity)
            member = TunnelMember(session, identity, hello.instance, peer)
            pool.members.append(member)
            self.log.info("tunnel-connection-established", tunnel=route.name, peer=peer,
                          client_identity=identity, client_instance=member.instance,
                          client_version=hello.version, pool_size=len(pool.members))
            if self.stopping:  # joined during a drain: replace it at once, elsewhere
                session.go_away()
            gevent.spawn(drain_control, stream, decoder, self.log)
            session.wait()
        finally:
            session.closed.unlink(on_closed)
            if member is not None and member in pool.members:
                pool.members.remove(member)
            session.close()
            if member is not None:
                self.log.info("tunnel-connection-closed", tunnel=route.name, peer=peer,
                              client_identity=identity, client_instance=member.instance,
                              reason=session.close_reason, streams_placed=member.streams_placed,
                              pool_size=len(pool.members))

    def _warn_drift(self, route, hello, identity):
        unserved, unowned = control.hostname_drift(route.public_hostnames, hello.hostnames,
                                                   hello.catch_all)
        if unserved:
            self.log.warn("hostname-mirroring-drift", tunnel=route.name, client_identity=identity,
                          unserved_hostnames=",".join(unserved))
        if unowned:
            self.log.warn("hostname-mirroring-drift", tunnel=route.name, client_identity=identity,
                          unowned_hostnames=",".join(unowned))


def _config_arg(config):
    return f"-c {shlex.quote(str(config.source or 'FILE'))}"  # a Server always has a config file


def _not_ours(config):
    return f"it was not issued by a Server CA whose key is {config.cert_dir / SERVER_CA_KEY}"


def _replace_hint(config):
    """How to get a Server certificate the Server can serve, when it cannot renew this one."""
    return (f"replace server.crt and server.key with a current certificate for "
            f"{config.hostname}, or run 'runewarp server cert rotate-ca {_config_arg(config)}' "
            "for a private Server CA that the Server renews itself (every Client must then "
            "trust its server-ca.crt)")


def _wrong_hostname(config, cert_path, leaf, renewable):
    names = ", ".join(certcheck.dns_names(leaf)) or "no DNS name"
    if renewable:
        fix = (f"run 'runewarp server cert renew {_config_arg(config)}' for a certificate "
               f"for {config.hostname}")
    else:
        fix = _replace_hint(config)
    return (f"{cert_path} is for {names}, not {config.hostname} (the name Clients check); "
            f"{fix}")
