"""Server role: accept → intake → route → place → envelope → splice.

Visitor connections and Tunnel connections share the public listener; a
ClientHello for the Server hostname is split by ALPN.  Routing reads one
immutable snapshot, swapped whole on reload.
"""

import dataclasses
import socket
import time

import gevent
from gevent.event import AsyncResult
from gevent.pool import Group
from OpenSSL import SSL

from .. import __version__
from ..errors import MaterialError, ProtocolError
from ..acme import AcmeCertificates, warn_port
from ..logs import RateLimitedWarning
from ..material import file_stamp, load_server_cert_paths, server_cert_paths
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
    def __init__(self, config, log):
        self.log = log
        self.config = config
        self.snapshot = config.routing_snapshot()
        self.pools = {t.name: TunnelPool(t.name) for t in self.snapshot.tunnels}
        self.acme = None
        if config.acme is not None:
            self.acme = AcmeCertificates(config.acme, [config.hostname], log, "server",
                                         on_ready=self._certificate_renewed)
        self.certificate = self._certificate_for(config)
        self.certificate_missing = False
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
        self.visitors.join(timeout=timeout)
        return self.splices.join(max(0.0, deadline - time.monotonic()))

    def close_all(self):
        if self.acme is not None:
            self.acme.stop()
        self.visitors.kill(block=False)
        self.splices.abort_all("server shutting down")
        self.splices.close()
        for pool in self.pools.values():
            for member in list(pool.members):
                member.session.close("server shutting down")
        self.tunnels.kill(block=True, timeout=2)

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
                                     check=lambda: load_server_cert_paths(config.cert_dir))

        def locate():
            paths = self.acme.paths(config.hostname)
            if paths is None:
                raise MaterialError(f"no ACME certificate for {config.hostname} yet")
            return paths

        return ServerCertificate(locate, self._authorize)

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
            slot = self._admit(self.intake_slots, sock, address)
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

    def _admit(self, table, sock, address):
        """A slot in `table` for this peer, shedding a slow holder under pressure; None if refused.

        A shed holder's socket is shut down, which wakes its reader with EOF: its own
        greenlet then ends the way any closed connection does.
        """
        kind = "intake" if table is self.intake_slots else "tunnel-handshakes"
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
        slot = self._admit(self.handshake_slots, sock, address)
        if slot is None:
            return
        self.saturation.recovered("tunnel-handshakes")
        tls = ServerTLSConnection(sock, context, buffered)
        try:
            with gevent.Timeout(TUNNEL_HANDSHAKE_DEADLINE) as timer:
                tls.handshake()
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
                                window_budget=self.window_budget)

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


