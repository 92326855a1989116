"""The Server's Tunnel connections: pools and members, the Tunnel TLS handshake,
control hello and welcome, drift warnings, re-authorization after a reload.

A Tunnel connection arrives on the dedicated Tunnel listener, or on the public
listener as a ClientHello for the Server hostname with ALPN runewarp/1.
"""

import time
from functools import partial

import gevent
from gevent.event import AsyncResult, Event
from OpenSSL import SSL

from .. import __version__
from ..logs import RateLimitedWarning
from ..metrics import close_reason
from ..errors import IntakeRejected, MaterialError, StreamAborted, TLSClosed
from ..proto import control
from ..proto.mux import Role
from ..proto.placement import Placement, Served
from ..tls import identity_from_pyopenssl, tunnel_refusal
from ..proto.address import format_address
from .intake import intake_deadline, real_peer
from .tlsconn import ServerTLSConnection
from .tunnel import TunnelSession
from .tunnelstream import drain_control, read_control_messages
from .upkeep import utcnow
from ..workers import this_worker

# While the only members serving a hostname are ping-overdue, member-wait looks again this
# often: a late echo wakes nobody (unlike a join or a Client's service-health).
OVERDUE_RECHECK = 0.5


class TunnelMember:
    """One live Tunnel connection in a Tunnel pool; `served`: the hostnames its hello lists."""

    def __init__(self, session, identity, instance, peer, served):
        self.session = session
        self.identity = identity
        self.instance = instance
        self.peer = peer
        self.served = served
        self.streams_placed = 0
        self.connected_since = utcnow()


class TunnelPool:
    def __init__(self, name):
        self.name = name
        self.members = []
        self.placement = Placement()
        self.active_streams = 0  # routed streams of this Tunnel, held to its share
        self.joined = Event()  # set (and replaced) when a member joins: wakes member-wait
        self.unhealthy_drops = None  # RateLimitedWarning, made on the first drop

    def join(self, member):
        self.members.append(member)
        self.changed()

    def changed(self):
        """A member joined, serves more or became healthy: wake the Visitors in member-wait
        to look again."""
        joined, self.joined = self.joined, Event()
        joined.set()

    def _serving(self, hostname, exclude):
        return [m for m in self.members
                if m.session.accepting and hostname in m.served and m not in exclude]

    def place(self, hostname, exclude=()):
        """A live, healthy member that serves `hostname` and is not in `exclude` (members
        already tried), or None.  Healthy: its Client has not reported the hostname's
        Service unhealthy, and its keepalive ping is not overdue (io/tunnel.py)."""
        healthy = [m for m in self._serving(hostname, exclude)
                   if m.served.healthy_for(hostname) and not m.session.ping_overdue]
        return self.placement.choose(healthy, lambda m: m.session.active_streams,
                                     lambda m: m.session.ping_rtt)

    def unplaced(self, hostname, exclude=()):
        """Why `place` found nobody: the Visitor outcome."""
        if self._serving(hostname, exclude):
            return "no-healthy-member"
        if any(m.session.accepting for m in self.members):
            return "no-serving-member"
        return "no-tunnel-connection"

    def overdue_only(self, hostname):
        """Some member serving `hostname` is held back only by an overdue ping."""
        return any(m.session.ping_overdue and m.served.healthy_for(hostname)
                   for m in self._serving(hostname, ()))

    def warn_unhealthy(self, log, hostname):
        """One warning per Tunnel per 10 s while Visitors are dropped for want of a healthy
        member (the scope is the Tunnel, never the Visitor's name)."""
        if self.unhealthy_drops is None:
            self.unhealthy_drops = RateLimitedWarning(log, "no-healthy-member")
        self.unhealthy_drops.warn(self.name, time.monotonic(), tunnel=self.name,
                                  public_hostname=hostname)


class TunnelConnections:
    """The Tunnel-connection half of the Server (mixed into io.server.Server): it reads
    `snapshot`, `pools`, `config`, `certificate`, `stopping`, `handshake_slots`,
    `window_budget`, `tunnels`, `metrics` and `log` from the Server."""

    def _refused(self, reason):
        self.metrics.tunnel_event["refused", reason].inc()

    def _authorize(self, identity):
        return self.snapshot.tunnel_for_identity(identity) is not None


    def _wait_for_member(self, pool, hostname, sock, address, size):
        """member-wait: (a member of `pool` serving `hostname`, else None; the outcome then).

        A Visitor waits for a member to join (a Client restarting, or reconnecting after
        a Server hand-over) or to become healthy again (its Client's service-health, a
        late keepalive echo) at most `member-wait`, never beyond `client-hello`.  It holds
        an intake slot meanwhile, so waiters count against intake-connections and
        intake-per-source like Visitors still reading, and a flood of them is shed or
        refused the same way.  Woken by each join and each recovery; only while a member
        is held back by an overdue ping does it look again every OVERDUE_RECHECK.
        """
        wait = min(self.config.limits.member_wait, self.config.timeouts.client_hello)
        if wait <= 0:
            return None, self._unplaced(pool, hostname)
        table = self.intake_slots  # a reload may replace it: release into this one
        slot = self._admit(table, "intake", sock, address)
        if slot is None:
            return None, "admission-full"
        slot.progress(size)  # a complete hello: shed after any peer still trickling one
        deadline = time.monotonic() + wait
        try:
            member = None
            while member is None and not slot.shed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if pool.overdue_only(hostname):
                    pool.joined.wait(min(left, OVERDUE_RECHECK))
                elif not pool.joined.wait(left):
                    break
                member = pool.place(hostname)
        finally:
            table.release(slot)
        if slot.shed:
            return None, "shed"
        return member, None if member else self._unplaced(pool, hostname)

    def _unplaced(self, pool, hostname):
        outcome = pool.unplaced(hostname)
        if outcome == "no-healthy-member":
            pool.warn_unhealthy(self.log, hostname)
        return outcome

    def _reauthorize(self, old_pools, snapshot):
        """After a reload: close the Tunnel connections `snapshot` no longer authorizes."""
        for name, pool in old_pools.items():
            for member in list(pool.members):
                route = snapshot.tunnel_for_identity(member.identity)
                if route is None or route.name != name:
                    member.session.go_away()
                    member.session.close("identity no longer authorized for this tunnel")

    def _handle_tunnel_listener(self, sock, address):
        self.tunnels.add(gevent.getcurrent())
        self._worker_passes()  # io/visitors.py: a worker holding members reads passes
        try:
            try:
                with intake_deadline(self.config.timeouts.client_hello):
                    peer = real_peer(lambda: sock.recv(16 * 1024), address, self.config.trusted_proxies)
            except (IntakeRejected, OSError) as exc:
                self.log.debug("tunnel-connection-refused", peer=format_address(address),
                               reason=f"proxy-header-invalid: {getattr(exc, 'detail', exc)}")
                self._refused("proxy-header-invalid")
                return
            if peer is not None:  # None: the balancer's health check, closed quietly
                self._tunnel_connection(sock, *peer)  # behind a balancer: the Client it names
        finally:
            sock.close()

    def _tunnel_connection(self, sock, address, buffered):
        peer = format_address(address)
        if self.stopping:
            self._refused("stopping")
            return
        try:
            context = self.certificate.current()
        except MaterialError as exc:
            if not self.certificate_missing:
                self.log.warn("server-certificate-missing", reason=str(exc),
                              effect="Tunnel connections are refused until it exists")
            self.certificate_missing = True
            self._refused("certificate-missing")
            return
        if self.certificate_missing:
            self.certificate_missing = False
            self.log.info("server-certificate-ready")
        table = self.handshake_slots  # a reload may replace it: release into this one
        slot = self._admit(table, "tunnel-handshakes", sock, address)
        if slot is None:
            self._refused("admission-full")
            return
        self.saturation.recovered("tunnel-handshakes")
        tls = ServerTLSConnection(sock, context, buffered)
        slot.progress(len(buffered))
        timeouts = self.config.timeouts  # as this connection starts: a reload applies to the next
        try:
            with gevent.Timeout(timeouts.tunnel_handshake) as timer:
                tls.handshake(slot.progress)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self.log.info("tunnel-connection-refused", peer=peer, reason="handshake-deadline")
            self._refused("handshake-deadline")
            return
        except SSL.Error as exc:
            refusal = tunnel_refusal(context, tls.conn)  # None: not the certificate's fault
            unlisted = refusal is not None and refusal.reason == "unauthorized-client-identity"
            self.auth_failures.warn(address[0], time.monotonic(), peer=peer,
                                    client_identity=refusal and refusal.identity,
                                    tunnels="none" if unlisted else None,
                                    reason=refusal.reason if refusal else f"tls-error: {exc}",
                                    detail=refusal and refusal.detail)
            self._refused(refusal.reason if refusal else "tls-error")
            return
        except (TLSClosed, OSError) as exc:
            self.log.info("tunnel-connection-refused", peer=peer,
                          reason="shed" if slot.shed else f"closed: {exc}")
            self._refused("shed" if slot.shed else "closed-during-handshake")
            return
        finally:
            table.release(slot)
            tunnel_refusal(context, tls.conn)  # never leave an entry behind
        if slot.shed:  # finished from bytes already buffered when it was shed
            self.log.info("tunnel-connection-refused", peer=peer, reason="shed")
            self._refused("shed")
            tls.close()
            return
        identity = identity_from_pyopenssl(tls.peer_certificate())
        self._serve_tunnel(tls, peer, identity, timeouts)

    def _serve_tunnel(self, tls, peer, identity, timeouts):
        route = self.snapshot.tunnel_for_identity(identity)
        pool = self.pools.get(route.name) if route else None
        if pool is None:
            self._refused("no-tunnel")
            tls.close()
            return
        if len(pool.members) >= self.config.limits.pool_connections:
            self.saturation.warn(f"pool:{route.name}", time.monotonic(), tunnel=route.name)
            self._refused("pool-full")
            tls.close()
            return
        control_stream = AsyncResult()

        def on_stream(session, stream):
            if stream.id == 1 and not control_stream.ready():
                control_stream.set(stream)
            else:
                stream.reset()

        session = TunnelSession(tls, Role.SERVER, on_stream=on_stream, log=self.log,
                                window_budget=self.window_budget, name=peer,
                                keepalive_interval=timeouts.keepalive_interval,
                                idle_timeout=timeouts.dead_peer)

        def on_closed(_event):
            if not control_stream.ready():
                control_stream.set_exception(StreamAborted(session.close_reason))

        session.closed.rawlink(on_closed)
        session.start()
        member = None
        try:
            try:
                with gevent.Timeout(timeouts.control_hello) as timer:
                    stream = control_stream.get()
                    decoder = control.LineDecoder()
                    messages = read_control_messages(stream, decoder)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason="no control hello before the deadline")
                self._refused("no-control-hello")
                return
            except (StreamAborted, control.ControlError) as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"no control hello: {exc}")
                self._refused("no-control-hello")
                return
            try:
                hello = control.parse_hello(messages[0])
            except control.ControlError as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"bad control hello: {exc}")
                self._refused("bad-control-hello")
                return
            # A reload may have happened while we waited for the hello: judge again now.
            current = self.snapshot.tunnel_for_identity(identity)
            if current is None or current.name != route.name or self.pools.get(route.name) \
                    is not pool or len(pool.members) >= self.config.limits.pool_connections:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason="no longer authorized for this Tunnel, or its pool is full")
                self._refused("no-tunnel" if current is None or current.name != route.name
                              else "pool-full")
                return
            try:
                stream.sendall(control.encode(control.welcome(route.name, __version__,
                                                              route.public_hostnames,
                                                              this_worker())))
            except StreamAborted as exc:
                self.log.info("tunnel-connection-refused", peer=peer, client_identity=identity,
                              reason=f"closed after its hello: {exc}")
                self._refused("closed-during-handshake")
                return
            self._warn_drift(route, hello, identity, peer)
            member = TunnelMember(session, identity, hello.instance, peer,
                                  Served(hello.hostnames, hello.catch_all))
            pool.join(member)
            self.metrics.tunnel_event["established", "none"].inc()
            self.log.info("tunnel-connection-established", tunnel=route.name, peer=peer,
                          client_identity=identity, client_instance=member.instance,
                          client_version=hello.version, pool_size=len(pool.members))
            if self.stopping:  # joined during a drain: replace it at once, elsewhere
                session.go_away()
            gevent.spawn(drain_control, stream, decoder, self.log,
                         partial(self._control_message, pool, member), messages[1:])
            session.wait()
        finally:
            session.closed.unlink(on_closed)
            if member is not None and member in pool.members:
                pool.members.remove(member)
            session.close()
            if member is not None:
                self.metrics.tunnel_event["closed", close_reason(session.close_reason)].inc()
                self.log.info("tunnel-connection-closed", tunnel=route.name, peer=peer,
                              client_identity=identity, client_instance=member.instance,
                              reason=session.close_reason, streams_placed=member.streams_placed,
                              pool_size=len(pool.members))

    def _control_message(self, pool, member, message):
        """A message on the control stream after the hello: a later hello (its Client
        reloaded its Services) replaces the hostnames the member serves, a service-health
        which of them are unhealthy (io/tunnelstream.py drain_control reads them)."""
        kind = message.get("type")
        if kind == "hello":
            self._update_member(pool, member, control.parse_hello(message))
        elif kind == "service-health":
            self._member_health(pool, member, control.parse_service_health(message))

    def _update_member(self, pool, member, hello):
        member.served = Served(hello.hostnames, hello.catch_all)
        self.log.info("tunnel-member-updated", tunnel=pool.name, peer=member.peer,
                      client_identity=member.identity[:12], client_instance=member.instance,
                      hostnames=",".join(sorted(member.served.names)) or None,
                      catch_all=hello.catch_all or None)
        route = self.snapshot.tunnel_for_identity(member.identity)
        if route is not None and route.name == pool.name:
            self._warn_drift(route, hello, member.identity, member.peer)
        pool.changed()

    def _member_health(self, pool, member, change):
        served = member.served
        before = (served.unhealthy, served.catch_all_unhealthy)
        served.apply(change)
        if (served.unhealthy, served.catch_all_unhealthy) == before:
            return
        self.log.info("tunnel-member-health", tunnel=pool.name, peer=member.peer,
                      client_identity=member.identity[:12], client_instance=member.instance,
                      unhealthy=",".join(sorted(served.unhealthy)) or None,
                      catch_all_unhealthy=served.catch_all_unhealthy or None)
        if before[0] - served.unhealthy or before[1] > served.catch_all_unhealthy:
            pool.changed()  # healthier: Visitors in member-wait may take it now

    def _warn_drift(self, route, hello, identity, peer):
        """One warning per connect naming the member, when its hostnames differ from the
        Tunnel's: placement never gives it a Visitor for an unserved one."""
        unserved, unowned = control.hostname_drift(route.public_hostnames, hello.hostnames,
                                                   hello.catch_all)
        if unserved or unowned:
            self.log.warn("hostname-mirroring-drift", tunnel=route.name,
                          client_identity=identity[:12], client_instance=hello.instance, peer=peer,
                          unserved_hostnames=",".join(unserved) or None,
                          unowned_hostnames=",".join(unowned) or None)
