"""The Server's QUIC intake: one UDP socket beside each public listener (`public-quic`).

One greenlet per socket reads datagrams and feeds the flow table
(proto/quicflows.py); it never waits on a Tunnel connection.  A flow whose
ClientHello is complete is routed like a TCP Visitor (same snapshot, placement and
active-stream limits) without waiting for a member: the QUIC client retransmits
its Initial.  A routed flow is one mux stream (docs/quic.md, wire format) with two
greenlets: the sender drains the flow's bounded DatagramQueue into the stream (a
full queue drops its oldest datagram), the receiver decodes the Client side's
datagrams and sends them to the Visitor from the public socket.  A flow idle for
`quic-idle-timeout` either way is reset (code 0); a reset or an end from the
Client ends it.  Flows do not survive a hand-over: the new process gets the sockets.
"""

import time

import gevent
from gevent.event import Event
from gevent.pool import Group

from ..errors import IntakeRejected, StreamAborted
from ..proto import proxyv2
from ..proto.address import format_address
from ..proto.datagrams import MAX_DATAGRAM, DatagramDecoder, DatagramFramingError, DatagramQueue, frame_all
from ..proto.quicflows import Dropped, FlowTable, Forward, Held, Routable
from .intake import hello_hostname
from .listener import BindError, bind_datagram

KEY = "server.public-quic"
RECV_SIZE = 65536  # any UDP payload


class Endpoint:
    """One public UDP socket and its flow table."""

    def __init__(self, sock, unit_owned, idle_timeout):
        self.sock = sock
        self.unit_owned = unit_owned
        self.address = sock.getsockname()[:2]
        self.table = FlowTable(idle_timeout)
        self.reader = None


class QuicFlow:
    """A routed flow: its stream, queue and counters (the table's Flow.handle)."""

    __slots__ = ("flow", "endpoint", "hostname", "tunnel", "pool", "member", "queue", "wake",
                 "stream", "ended", "started", "up", "down", "sender")

    def __init__(self, flow, endpoint, hostname, tunnel, pool, member):
        self.flow = flow
        self.endpoint = endpoint
        self.hostname = hostname
        self.tunnel = tunnel
        self.pool = pool
        self.member = member
        self.queue = DatagramQueue(max_datagrams=32, max_bytes=MAX_DATAGRAM)
        self.sender = None  # the greenlet of _send, once spawned
        self.wake = Event()
        self.stream = None
        self.ended = None  # why, once ended
        self.started = time.monotonic()
        self.up = self.down = 0  # datagrams to the Client side, to the Visitor


class QuicIntake:
    """The QUIC sockets and flows of `server` (io/server.py): it reads the Server's
    `config`, `snapshot`, `pools`, `metrics`, `log` and `saturation`, and shares its
    active-stream count and `_open` with the TCP Visitor path (io/visitors.py)."""

    def __init__(self, server):
        self.server = server
        self.endpoints = []
        self.flows = Group()  # every flow greenlet: senders and receivers
        self.sweeper = None
        server.metrics.quic_flows_active = self.active

    def active(self):
        return sum(e.table.open_flows for e in self.endpoints)

    # -- lifecycle --
    def bind(self, listeners, inherited, several):
        """A UDP socket on the address of each public listener (an inherited one first);
        BindError naming `public-quic` when one cannot be bound."""
        try:
            for listener in listeners:
                sock = inherited.claim(listener.address, datagram=True)
                unit_owned = sock is not None and id(sock) in inherited.unit_owned
                if sock is None:
                    try:
                        sock = bind_datagram(listener.address[:2], v6only=several)
                    except OSError as exc:
                        raise BindError(KEY, listener.address[:2], exc) from None
                else:
                    sock.settimeout(None)  # a socket unit's may be non-blocking
                self.endpoints.append(Endpoint(sock, unit_owned, self.server.config.quic_idle_timeout))
        except BaseException:
            self.close()
            self.endpoints = []
            raise

    def start(self):
        for endpoint in self.endpoints:
            endpoint.reader = gevent.spawn(self._read, endpoint)
        if self.endpoints:
            self.sweeper = gevent.spawn(self._sweep)

    def sockets(self):
        """(socket, name, unit_owned) for a hand-over."""
        return [(e.sock, "quic", e.unit_owned) for e in self.endpoints]

    def status(self):
        """/status's QUIC entry."""
        return {"addresses": [format_address(e.address) for e in self.endpoints],
                "flows": self.active(), "pending_flows": sum(len(e.table.pending) for e in self.endpoints)}

    def moved_away(self, public):
        """The public listeners' addresses `public` are no longer those of the UDP sockets."""
        return bool(self.endpoints) and {a[:2] for a in public} != {e.address for e in self.endpoints}

    def reload(self, config):
        """New flows take the new idle timeout; flows already open keep theirs."""
        for endpoint in self.endpoints:
            endpoint.table.idle_timeout = config.quic_idle_timeout

    def stop_reading(self):
        """Stop taking datagrams (TERM, hand-over); open flows still answer their Visitors."""
        for endpoint in self.endpoints:
            if endpoint.reader is not None:
                endpoint.reader.kill(block=False)

    def close(self):
        """Reset every flow and close the sockets."""
        self.stop_reading()
        if self.sweeper is not None:
            self.sweeper.kill(block=False)
        for endpoint in self.endpoints:
            for flow in list(endpoint.table.flows.values()):
                if flow.handle is not None:
                    self._end(flow.handle, "server-stopping")
                endpoint.table.forget(flow)
        self.flows.kill(block=False)
        for endpoint in self.endpoints:
            endpoint.sock.close()

    # -- the UDP reader --
    def _read(self, endpoint):
        sock = endpoint.sock
        while True:
            try:
                datagram, peer = sock.recvfrom(RECV_SIZE)
            except OSError as exc:  # not expected on an unconnected socket: never spin on it
                self.server.log.debug("quic-read-failed", address=format_address(endpoint.address),
                                      reason=str(exc))
                gevent.sleep(0.1)
                continue
            try:
                self._dispatch(endpoint, peer, datagram)
            except Exception as exc:  # noqa: BLE001 - a bug must not end every QUIC flow's intake
                self.server.log.error("quic-datagram-failed", visitor=format_address(peer),
                                      reason=f"{type(exc).__name__}: {exc}")

    def _dispatch(self, endpoint, peer, datagram):
        """One datagram from `peer` through the flow table, and what its event asks."""
        event = endpoint.table.receive(peer[:2], datagram, time.monotonic())
        kind = type(event)
        if kind is Forward:
            handle = event.flow.handle
            dropped = handle.queue.push(datagram)
            if dropped:
                self.server.metrics.quic_dropped["queue-overflow"].inc(dropped)
            handle.wake.set()
            if event.migrated:
                self.server.log.debug("quic-flow-migrated", visitor=format_address(peer),
                                      public_hostname=handle.hostname)
        elif kind is Routable:
            self._route(endpoint, event)
        elif kind is not Held:
            self._dropped(event, peer)

    def _dropped(self, event: Dropped, peer):
        server = self.server
        server.metrics.quic_dropped[event.reason].inc()
        if event.reason == "pending-full":
            server.saturation.warn("quic-pending-full", time.monotonic())
        if event.flow is not None:  # a pending flow ended
            server.metrics.quic_flows["rejected"].inc()
            server.log.debug("quic-flow-dropped", visitor=format_address(peer), reason=event.reason)

    def _refuse(self, endpoint, flow, reason, **fields):
        endpoint.table.forget(flow)
        self.server.metrics.quic_dropped[reason].inc()
        self.server.metrics.quic_flows[reason].inc()
        self.server.log.debug("quic-flow-dropped", visitor=format_address(flow.peer), reason=reason,
                              **fields)

    def _route(self, endpoint, event: Routable):
        """Route, place and count a flow whose ClientHello is complete; never waits."""
        server, flow = self.server, event.flow
        try:
            hostname = hello_hostname(event.hello)  # the one SNI rule, as for TCP Visitors
        except IntakeRejected as exc:
            return self._refuse(endpoint, flow, exc.reason)  # no-sni, invalid-sni
        found = server.snapshot.route(hostname, endpoint.address[1])
        if found is None:
            return self._refuse(endpoint, flow, "unknown-hostname", public_hostname=hostname)
        _, route = found
        pool = server.pools[route.name]
        member = pool.place(hostname)
        if member is None:
            return self._refuse(endpoint, flow, "no-member", public_hostname=hostname,
                                tunnel=route.name)
        # A valid Initial costs nothing to forge from any source address: QUIC flows take at
        # most half of active-streams, so spoofed ones can never starve TCP Visitors.
        if (self.active() > max(1, server.config.limits.active_streams // 2)  # this one included
                or not server._take_stream(pool, route.name)):
            return self._refuse(endpoint, flow, "active-streams-full", public_hostname=hostname,
                                tunnel=route.name)
        handle = flow.handle = QuicFlow(flow, endpoint, hostname, route.name, pool, member)
        for datagram in event.datagrams:
            handle.queue.push(datagram)
        handle.sender = self.flows.spawn(self._send, handle)

    # -- a flow's two greenlets --
    def _send(self, handle):
        """Open the stream, then move the queue into it until the flow ends."""
        server, flow = self.server, handle.flow
        to_client = server.metrics.quic_datagrams["to-client"]
        header = proxyv2.encode(flow.peer, handle.endpoint.address, "udp")
        batch = handle.queue.take()
        first = header + frame_all(batch)
        stream = server._open(handle.member, (first,), handle.hostname, handle.tunnel)
        if stream is None:
            server.metrics.quic_dropped["stream-open-failed"].inc()
            server.metrics.quic_flows["stream-open-failed"].inc()
            return self._end(handle, "stream-open-failed")
        handle.stream = stream
        if handle.ended is not None:  # idle or stopping while the stream opened
            stream.reset(0)
            return None
        server.metrics.quic_flows["routed"].inc()
        handle.up += len(batch)
        to_client.inc(len(batch))
        server.log.debug("quic-flow-routed", visitor=format_address(flow.peer),
                         public_hostname=handle.hostname, tunnel=handle.tunnel,
                         client_instance=handle.member.instance, stream=stream.id)
        self.flows.spawn(self._receive, handle)
        try:
            while handle.ended is None:
                handle.wake.wait()
                handle.wake.clear()
                batch = handle.queue.take()
                if batch:
                    stream.sendall(frame_all(batch))
                    handle.up += len(batch)
                    to_client.inc(len(batch))
        except StreamAborted:
            self._end(handle, "reset-by-client")
        return None

    def _receive(self, handle):
        """The Client side's datagrams, to the Visitor from the public socket."""
        stream, endpoint = handle.stream, handle.endpoint
        sock, table = endpoint.sock, endpoint.table
        to_visitor = self.server.metrics.quic_datagrams["to-visitor"]
        decoder = DatagramDecoder()
        reason = "ended-by-client"
        try:
            while True:
                data = stream.recv()
                if not data or handle.ended is not None:
                    break  # an ended flow sends nothing more and teaches the table nothing
                for datagram in decoder.feed(data):
                    table.learn(handle.flow, datagram, time.monotonic())
                    try:
                        sock.sendto(datagram, handle.flow.peer)
                    except OSError:
                        pass  # UDP: a datagram the kernel refused is lost like any other
                    handle.down += 1
                    to_visitor.inc()
                stream.consumed(len(data))
        except StreamAborted:
            reason = "reset-by-client"
        except DatagramFramingError:
            reason = "framing-error"
        self._end(handle, reason)

    def _end(self, handle, reason):
        """End a routed flow once: reset its stream (an end from the Client is answered
        with our end), release its stream slot, forget it."""
        if handle.ended is not None:
            return
        handle.ended = reason
        handle.wake.set()
        handle.endpoint.table.forget(handle.flow)
        server = self.server
        server.active_streams -= 1
        handle.pool.active_streams -= 1
        stream = handle.stream
        if stream is not None:
            if reason == "ended-by-client":
                stream.end()
            else:
                stream.reset(0)
        sender = handle.sender
        if stream is not None and sender is not None and sender is not gevent.getcurrent():
            sender.kill(block=False)  # it may wait on a window no stream will ever open
        level = "info" if server.config.access_log else "debug"
        if stream is not None and server.log.enabled(level):
            server.log.log(level, "quic-flow-closed", public_hostname=handle.hostname,
                           visitor=format_address(handle.flow.peer), tunnel=handle.tunnel,
                           client_instance=handle.member.instance, datagrams_up=handle.up,
                           datagrams_down=handle.down, duration=time.monotonic() - handle.started,
                           reason=reason)

    # -- timers --
    def _sweep(self):
        """Expire pending flows past their deadline and open flows idle too long."""
        metrics = self.server.metrics
        while True:
            gevent.sleep(max(0.1, min(1.0, self.server.config.quic_idle_timeout / 4)))
            now = time.monotonic()
            for endpoint in self.endpoints:
                for expired in endpoint.table.expire(now):
                    if expired.reason == "pending-expired":
                        metrics.quic_dropped["pending-expired"].inc()
                        metrics.quic_flows["pending-expired"].inc()
                        self.server.log.debug("quic-flow-dropped", reason="pending-expired",
                                              visitor=format_address(expired.flow.peer))
                    elif expired.flow.handle is not None:
                        self._end(expired.flow.handle, "idle-timeout")
