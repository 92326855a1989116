"""The Visitor path of the Server: accept → intake → route → place → envelope → splice.

Mixed into io.server.Server (as io/tunnels.py's Tunnel connections are): it reads
`config`, `snapshot`, `pools`, `metrics`, `splices`, `visitors`, `tunnels`,
`challenges`, `saturation` and `log`, and counts `active_streams`.  A ClientHello
for the Server hostname is split by ALPN: Tunnel connection, ACME, or refused.

With `workers = N`, a worker with no member for a Visitor's hostname passes it to
the next worker (io/workerpass.py) before member-wait; the last worker it can reach
places it or refuses it as one process does.  The pass outcome is counted where the
Visitor ends, so the workers' outcome counts add up to the Visitors.
"""

import time

import gevent
from gevent.event import Event

from ..errors import IntakeRejected, ProtocolError, StreamAborted
from ..metrics import INTAKE_OUTCOMES
from ..proto import proxyv2
from ..proto.address import format_address
from ..proto.retry import Held, Retries, retry_reason
from ..proto.workerpass import Pass, PassError, next_workers
from ..tls import ALPN_ACME, ALPN_TUNNEL
from ..workers import this_worker
from .intake import intake_deadline, read_client_hello, real_peer
from .splice import SocketEnd, StreamEnd
from .workerpass import WorkerPasses

PASSED = "passed"  # _route_visitor's outcome for a Visitor another worker now owns

ENVELOPE_DEADLINE = 5.0


class VisitorPath:
    def _handle_public(self, sock, address, passed=None):
        """One Visitor accepted here, or `passed` here by another worker (a
        proto/workerpass.Pass: its intake is done, `address` is its source)."""
        self.visitors.add(gevent.getcurrent())  # nodelay and keepalive: from the listener
        spliced = False
        outcome = "aborted"  # killed at shutdown, or a bug: every path counts one outcome
        try:
            if passed is None:
                accepted, hops = time.monotonic(), 0
                intake = self._intake(sock, address)
                if isinstance(intake, str):
                    outcome = intake
                    return
                address, taken = intake
                if taken.hostname == self.snapshot.server_hostname:
                    outcome = self._server_hostname_connection(sock, address, taken)
                    return
            else:
                accepted, hops = passed.accepted, passed.hops
                taken = read_client_hello(lambda: b"", passed.buffered)  # parsed by the sender
            outcome = self._route_visitor(sock, address, taken, accepted, hops)
            spliced = outcome == "routed"
            if outcome == PASSED:
                outcome = None  # counted by the worker it was passed to
        except IntakeRejected as exc:
            outcome = INTAKE_OUTCOMES.get(exc.reason, "malformed-hello")
            detail = getattr(exc, "detail", None)
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason=f"{exc.reason}: {detail}" if detail else exc.reason)
        except OSError as exc:
            outcome = "socket-error"
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason=f"socket-error: {exc}")
        finally:
            if outcome is not None:
                self.metrics.visitor[outcome].inc()
            if not spliced:
                sock.close()

    def _intake(self, sock, address):
        """PROXY header (from a trusted balancer) and ClientHello under the intake deadline:
        (the Visitor's address, the Intake), or the Visitor's outcome when there is no
        Visitor to route (a health check, admission refused); IntakeRejected otherwise."""
        accepted = time.monotonic()
        table = self.intake_slots  # a reload may replace it: release into this one
        slot = None

        def read():
            data = sock.recv(16 * 1024)
            if slot is not None:
                slot.progress(len(data))
            return data

        with intake_deadline(self.config.timeouts.client_hello):  # PROXY header and hello
            peer = real_peer(read, address, self.config.trusted_proxies)
            if peer is None:
                return "proxy-health-check"
            address, rest = peer  # behind a trusted balancer: the Visitor it names
            slot = self._admit(table, "intake", sock, address)
            if slot is None:
                return "admission-full"
            self.saturation.recovered("intake-full")
            self.saturation.recovered("source-full")
            slot.progress(len(rest))
            try:
                taken = read_client_hello(read, rest)
            except IntakeRejected:
                if slot.shed:
                    raise IntakeRejected("shed") from None
                raise
            finally:
                table.release(slot)
        if slot.shed:  # its hello was already buffered when it was shed: still shed
            raise IntakeRejected("shed")
        self.metrics.intake_seconds.observe(time.monotonic() - accepted)
        if taken.hello.ech:  # routed by its outer SNI like any other (docs/ech.md)
            self.metrics.visitor_ech.inc()
        return address, taken

    # -- workers = N: passing a Visitor to another worker --
    def _worker_passes(self):
        """This worker's pass socket (io/workerpass.py), bound once: `Server.start` calls it
        before the listeners serve, so a worker holding a Tunnel connection always reads
        passes."""
        passes = self.__dict__.get("worker_passes")
        if passes is None:
            passes = self.worker_passes = WorkerPasses(this_worker(), self._passed_here,
                                                       self.log, self.metrics.worker_passes)
            passes.start()
        return passes

    def _close_worker_passes(self):
        """Stop reading passes (the Server's close_all); a pass sent meanwhile is refused
        and its sender places the Visitor itself."""
        passes = self.__dict__.get("worker_passes")
        if passes is not None:
            passes.close()

    def _pass_on(self, sock, address, taken, accepted, hops):
        """Pass the Visitor to the next worker that takes it; whether one did."""
        passes = self._worker_passes()
        worker = passes.worker
        for target, arriving in next_workers(worker.index, worker.count, hops):
            try:
                passed = Pass(address[:2], taken.buffered, accepted, arriving)
                if passes.send(sock, passed, target):
                    self.log.debug("visitor-passed", visitor=format_address(address),
                                   public_hostname=taken.hostname, to_worker=target)
                    return True
            except PassError:
                return False
        return False

    def _passed_here(self, sock, passed):
        """A Visitor another worker passed: placed in its own greenlet, as if accepted here."""
        if self.stopping:
            sock.close()
            self.metrics.visitor["no-tunnel-connection"].inc()
            return
        self.visitors.spawn(self._handle_public, sock, passed.source, passed)

    def _server_hostname_connection(self, sock, address, taken):
        """A connection to the Server hostname; its Visitor outcome."""
        offered = taken.hello.alpn_protocols
        if ALPN_TUNNEL.decode() in offered and self.config.tunnel_bind_address is None:
            self.visitors.discard(gevent.getcurrent())
            self.tunnels.add(gevent.getcurrent())
            self._tunnel_connection(sock, address, taken.buffered)
            return "tunnel-connection"
        if ALPN_ACME.decode() in offered and self.challenges is not None:
            self.challenges.answer(sock, taken.hostname, taken.buffered, self.log)
            return "acme-challenge"
        if ALPN_ACME.decode() in offered:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason="acme-not-configured")
        else:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           reason="server-hostname-without-tunnel-alpn"
                           if self.config.tunnel_bind_address is None
                           else "tunnel-connections-use-the-tunnel-listener")
        return "server-hostname-other-alpn"

    def _route_visitor(self, sock, address, taken, accepted, hops=0):
        """Route and place one Visitor; its outcome, "routed" once a splice owns its socket,
        PASSED once another worker does.  `hops`: the passes that brought it here."""
        hostname = taken.hostname
        local = sock.getsockname()[:2]  # the public listener's address: its port routes too
        found = self.snapshot.route(hostname, local[1])
        if found is None:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           public_hostname=hostname, reason="unknown-hostname")
            return "unknown-hostname"
        pattern, route = found  # the configured name or wildcard labels the metrics
        pool = self.pools[route.name]  # one snapshot: its Tunnels have pools
        member = pool.place(hostname)
        if member is None and self._pass_on(sock, address, taken, accepted, hops):
            return PASSED
        if member is None:
            member, outcome = self._wait_for_member(pool, hostname, sock, address, taken.size)
        if member is None:
            self.log.debug("visitor-rejected", visitor=format_address(address),
                           public_hostname=hostname, tunnel=route.name, reason=outcome)
            return outcome
        limits = self.config.limits
        if not self._take_stream(pool, route.name):
            return "active-streams-full"
        spliced = False
        try:
            header = proxyv2.encode(address[:2], local, authority=hostname)
            envelope = header + taken.buffered
            held = Held(envelope, taken.size, taken.hello.consumed == taken.size,
                        limits.retry_buffer)
            taken.release()
            stream = self._open(member, (envelope,), hostname, route.name)
            del envelope  # held, or not at all
            if stream is None:
                return "stream-open-failed"
            started = time.monotonic()
            self.log.debug("visitor-routed", visitor=format_address(address),
                           public_hostname=hostname, tunnel=route.name,
                           client_instance=member.instance, stream=stream.id)
            # Retry within the intake deadline, and never past the first-byte timeout, which
            # counts from this first placement whatever the retries did.
            deadline = accepted + self.config.timeouts.client_hello
            if limits.stream_first_byte_timeout:
                deadline = min(deadline, started + limits.stream_first_byte_timeout)
            retries = Retries(limits.retries, deadline)
            visitor = SocketEnd(sock)  # the wait below reads it as the splice will
            while stream is not None and retries.possible(held, time.monotonic()):
                why = self._first_answer(visitor, stream, held, retries.deadline)
                if why is None:
                    break
                tried = retries.failed(member)
                placed = pool.place(hostname, exclude=tried)
                self.log.debug("visitor-retry", visitor=format_address(address),
                               public_hostname=hostname, tunnel=route.name,
                               client_instance=member.instance, stream=stream.id, reason=why,
                               retry_on=placed.instance if placed else "none")
                if placed is None:
                    self.metrics.visitor_retries["given-up"].inc()
                    break
                self.metrics.visitor_retries["retried"].inc()
                member = placed
                stream = self._open(member, held.chunks, hostname, route.name)
            held.drop()
            if stream is None:
                return "stream-open-failed"
            uploaded = held.size  # the Visitor's bytes sent before the splice
            series = self.metrics.tunnels[route.name]
            series.routed[pattern].inc()

            def closed(result):
                self.active_streams -= 1
                pool.active_streams -= 1
                series.to_client.inc(result.a_to_b + uploaded)
                series.to_visitor.inc(result.b_to_a)
                level = "info" if self.config.access_log else "debug"
                if self.log.enabled(level):  # the Visitor as the Client's stream-closed names it
                    visitor = format_address(proxyv2.decode(header)[0].source)
                    self.log.log(level, "visitor-closed", public_hostname=hostname, visitor=visitor,
                                 tunnel=route.name, client_identity=member.identity[:12],
                                 client_instance=member.instance,
                                 bytes_up=result.a_to_b + uploaded, bytes_down=result.b_to_a,
                                 duration=time.monotonic() - started,
                                 reason=result.error or "done")

            self.splices.start(visitor, StreamEnd(stream), closed,
                               age=time.monotonic() - started)
            spliced = True
            return "routed"
        finally:
            if not spliced:
                self.active_streams -= 1
                pool.active_streams -= 1

    def _take_stream(self, pool, tunnel):
        """Count one more active stream on `pool` (a Visitor or a QUIC flow, io/quic.py)
        if the limits allow it; False, with a rate-limited warning, when they do not."""
        limits = self.config.limits
        if self.active_streams >= limits.active_streams:
            self.saturation.warn("active-streams", time.monotonic())
            return False
        if pool.active_streams >= limits.tunnel_share(len(self.pools)):
            self.saturation.warn(f"active-streams-per-tunnel:{tunnel}", time.monotonic(),
                                 tunnel=tunnel)
            return False
        self.active_streams += 1
        pool.active_streams += 1
        return True

    def _open(self, member, chunks, hostname, tunnel):
        """Open a stream on `member` and write `chunks` (the envelope, or the bytes held for
        a retry) within ENVELOPE_DEADLINE; the stream, or None when that failed."""
        try:
            stream = member.session.open_stream()
        except ProtocolError:
            self.log.debug("visitor-rejected", public_hostname=hostname, tunnel=tunnel,
                           reason="tunnel-connection-going-away")
            return None
        member.streams_placed += 1
        try:
            with gevent.Timeout(ENVELOPE_DEADLINE):
                for chunk in chunks:
                    stream.sendall(chunk)
        except (gevent.Timeout, StreamAborted):
            stream.reset()
            self.log.debug("visitor-rejected", public_hostname=hostname, tunnel=tunnel,
                           reason="stream-open-failed")
            return None
        return stream

    def _first_answer(self, visitor, stream, held, deadline):
        """Wait for the first byte from the Client side, sending the Visitor's bytes on (and
        holding them) meanwhile; `visitor` is the SocketEnd the splice takes over.  Why the
        stream may be placed again, or None: it answered (or ended), the Visitor ended, the
        bytes outgrew `held`, or the deadline passed; the splice takes it from there.  Only
        a chunk the Visitor sends here costs Python work."""
        wake = Event()
        stream.when_readable(wake.set)
        try:
            while True:
                if stream.answered:  # even with a reset behind the bytes: never replayed
                    return None
                if stream.reset_reason is not None:
                    if held.chunks is None:  # outgrew retry-buffer just before the reset
                        return None
                    return retry_reason(stream.reset_code, held.hello_only)
                left = deadline - time.monotonic()
                visitor.when_readable(wake.set)
                if left <= 0 or not wake.wait(left):
                    return None
                wake.clear()
                if stream.readable:
                    continue
                try:
                    data = visitor.try_recv()
                except OSError:
                    return None
                if data is None:
                    continue
                if not data:
                    return None  # the splice reads the end again and forwards it
                keep = held.add(data)
                try:
                    stream.sendall(data)
                except StreamAborted:
                    continue  # reset meanwhile: judged at the top
                if not keep:
                    return None
        finally:
            visitor.cancel_readable()
            stream.when_readable(None)
