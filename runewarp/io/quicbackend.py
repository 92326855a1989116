"""The Client's QUIC flows: one mux stream of framed datagrams <-> one connected UDP socket.

The Server opens a stream per QUIC flow (docs/quic.md): a PROXY v2 header with transport
DGRAM, then each datagram framed (proto/datagrams.py).  The Client does not take the
Server's word for the hostname: it reads the ClientHello again from the client Initials
(proto/quic.py) and picks the Service by the same rules as for TCP.  It then sends every
datagram it held, in order, to the Service's `quic-backend-address` from a UDP socket of
its own, and relays both ways until the flow is idle for `quic-idle-timeout`, the Local
backend refuses (ICMP port unreachable), or the Server ends the stream.  The Local backend
completes the Visitor's QUIC handshake itself; it gets no PROXY header and sees the Client's
address.
"""

import socket
import time

import gevent
from gevent.event import Event

from ..errors import IntakeRejected, StreamAborted
from ..proto.address import format_address
from ..proto.datagrams import MAX_DATAGRAM, DatagramDecoder, DatagramFramingError, DatagramQueue, frame_all
from ..proto.mux import RESET_BEFORE_BACKEND  # the Server may place these on another member
from ..proto.quic import MAX_INITIALS, InitialReader, QuicDropped
from .intake import hello_hostname
from .net import describe, literal_family

# What a flow may hold before its ClientHello is complete: its Initials (MAX_INITIALS at most),
# and as many other datagrams again (0-RTT, a coalesced Handshake) from the same Visitor.
MAX_HELD = 2 * MAX_INITIALS
MAX_HELD_BYTES = 64 * 1024


class ClientQuic:
    """The QUIC half of the stream handlers (mixed into io.streams.ClientStreams), which reads
    the flow's ClientHello with read_quic_hello and chooses its Service as for TCP; it reads
    `config`, `handlers`, `metrics` and `log` from the Client."""

    def _quic(self, stream, service, series, taken, header):
        """Open the Service's QUIC backend socket and start the relay in a handler of its
        own; the stream's outcome.  `taken` is read_quic_hello's, the Service chosen by its
        hostname as for TCP."""
        if service.quic_backend_address is None:
            self.log.debug("stream-rejected", public_hostname=taken.hostname, transport="quic",
                           reason="no-quic-backend")
            stream.reset(RESET_BEFORE_BACKEND)
            return "no-quic-backend"
        backend = format_address(service.quic_backend_address)
        try:
            with gevent.Timeout(self.config.timeouts.backend_connect,
                                TimeoutError("no address within backend-connect")):
                sock = dial_udp(service.quic_backend_address)
        except OSError as exc:
            self.log.warn("backend-connect-failed", public_hostname=taken.hostname, transport="quic",
                          backend_address=backend, reason=describe(exc))
            stream.reset(RESET_BEFORE_BACKEND)
            return "backend-connect-failed"
        visitor = format_address(header.source) if header.source else None
        self.log.debug("stream-routed", public_hostname=taken.hostname, visitor=visitor,
                       backend_address=backend, transport="quic")
        flow = QuicFlow(stream, sock, taken.decoder, self.config.quic_idle_timeout, self.metrics)
        self.handlers.spawn(self._relay_quic, flow, taken.held, series, taken.hostname, visitor)
        return "quic-relayed"

    def _relay_quic(self, flow, held, series, hostname, visitor):
        series.active += 1
        started = time.monotonic()
        try:
            flow.run(held)
        finally:
            series.active -= 1
            self.log.log("info" if self.config.access_log else "debug", "stream-closed",
                         public_hostname=hostname, visitor=visitor, service=series.label,
                         transport="quic", datagrams_up=flow.datagrams_up,
                         datagrams_down=flow.datagrams_down, bytes_up=flow.bytes_up,
                         bytes_down=flow.bytes_down, dropped=flow.dropped,
                         duration=time.monotonic() - started, reason=flow.reason)


class QuicIntake:
    """A flow's ClientHello, its normalized hostname, every datagram read so far in order
    (`held`, for the Local backend), and the decoder holding any partial frame after them."""

    __slots__ = ("hello", "hostname", "held", "decoder")

    def __init__(self, hello, held, decoder):
        self.hello = hello
        self.hostname = hello_hostname(hello)
        self.held = held
        self.decoder = decoder


def read_quic_hello(recv, rest=b""):
    """read_client_hello for a QUIC flow stream: call `recv()` until the client Initials in
    its framed datagrams hold a whole ClientHello; a QuicIntake.

    Datagrams the reader drops without ending the flow (one that does not decrypt) are held
    all the same: they are the Visitor's, and only the Local backend can judge them.
    Raises IntakeRejected; the caller holds the intake deadline.
    """
    decoder = DatagramDecoder()
    reader = InitialReader()
    held, size, hello = [], 0, None
    data = rest
    while True:
        try:
            datagrams = decoder.feed(data) if data else ()
        except DatagramFramingError:
            raise IntakeRejected("malformed") from None
        for datagram in datagrams:
            held.append(datagram)
            size += len(datagram)
            if len(held) > MAX_HELD or size > MAX_HELD_BYTES:
                raise IntakeRejected("too-large")
            if hello is None:
                try:
                    hello = reader.feed(datagram)
                except QuicDropped as exc:
                    if exc.fatal:
                        raise IntakeRejected(exc.reason) from None
        if hello is not None:
            return QuicIntake(hello, held, decoder)
        data = recv()
        if not data:
            raise IntakeRejected("closed-before-client-hello")


def dial_udp(address):
    """A UDP socket connected to the first address of `address` that takes it: only datagrams
    from the Local backend reach it, and an ICMP port unreachable comes back as ECONNREFUSED.
    An IP literal skips the resolver."""
    host, port = address
    family = literal_family(host)
    if family is not None:
        targets = [(family, (host, port))]
    else:
        targets = [(info[0], info[4]) for info in
                   socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)]
    error = OSError(f"{host} has no address")
    for family, target in targets:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect(target)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class QuicFlow:
    """One relayed flow: the stream's datagrams to the socket, the socket's back through a
    DatagramQueue (a slow Tunnel connection drops the oldest, never blocks the socket's
    reader), and the idle timer.  `reason` says how it ended."""

    def __init__(self, stream, sock, decoder, idle_timeout, metrics):
        self.stream = stream
        self.sock = sock
        self.decoder = decoder
        self.idle_timeout = idle_timeout
        self.to_backend = metrics.quic_datagrams["to-backend"]
        self.to_server = metrics.quic_datagrams["to-server"]
        self.dropped_to_backend = metrics.quic_dropped["to-backend"]
        self.dropped_to_server = metrics.quic_dropped["to-server"]
        self.queue = DatagramQueue()
        self.queued = Event()
        self.done = Event()
        self.last = time.monotonic()  # the last datagram either way
        self.reason = None
        self.reset_code = None  # None: end the stream (FIN), else reset it with this code
        self.datagrams_up = self.datagrams_down = self.bytes_up = self.bytes_down = 0
        self.dropped = 0

    def run(self, held):
        workers = []
        try:
            self._send(held)
            held.clear()  # the flow's first datagrams are not kept for its lifetime
            workers = [gevent.spawn(self._guard, work) for work in
                       (self._stream_to_backend, self._backend_to_queue, self._queue_to_stream)]
            while not self.done.is_set():
                left = self.last + self.idle_timeout - time.monotonic()
                if left <= 0:
                    self._finish("idle-timeout", 0)
                else:
                    self.done.wait(left)
        except BaseException as exc:  # a worker's failure before the relay, or our kill
            self._finish(_reason(exc), 0)
            if not isinstance(exc, (OSError, gevent.GreenletExit)):
                raise
        finally:
            gevent.killall(workers)
            self.sock.close()
            self._close_stream()

    def _close_stream(self):
        if self.reset_code is None:
            self.stream.end()  # the Server ended first: the stream is then closed both ways
        else:
            self.stream.reset(self.reset_code)

    def _finish(self, reason, reset_code):
        if self.reason is None:
            self.reason = reason
            self.reset_code = reset_code
        self.done.set()

    def _guard(self, work):
        """Run one direction; whatever ends it ends the flow."""
        try:
            work()
        except StreamAborted as exc:
            self._finish(f"stream-reset: {exc}", 0)  # reset by the Server, or its connection died
        except DatagramFramingError as exc:
            self._finish(f"framing-error: {exc}", 0)
        except OSError as exc:
            self._finish(_reason(exc), 0)

    def _send(self, datagrams):
        sock = self.sock
        sent = 0
        for datagram in datagrams:
            try:
                sock.send(datagram)
            except ConnectionRefusedError:
                raise
            except OSError:  # too large for the path, no buffer: lost, as UDP may lose it
                self.dropped += 1
                self.dropped_to_backend.inc()
                continue
            sent += 1
            self.bytes_up += len(datagram)
        self.datagrams_up += sent
        self.to_backend.inc(sent)

    def _stream_to_backend(self):
        stream, decoder = self.stream, self.decoder
        while True:
            data = stream.recv()
            if not data:
                self._finish("server-ended", None)
                return
            datagrams = decoder.feed(data)
            if datagrams:
                self.last = time.monotonic()
                self._send(datagrams)
            stream.consumed(len(data))

    def _backend_to_queue(self):
        sock, queue, queued = self.sock, self.queue, self.queued
        while True:
            datagram = sock.recv(MAX_DATAGRAM)
            if not datagram:
                continue  # an empty datagram cannot be framed, and QUIC never sends one
            self.last = time.monotonic()
            dropped = queue.push(datagram)
            if dropped:
                self.dropped += dropped
                self.dropped_to_server.inc(dropped)
            queued.set()

    def _queue_to_stream(self):
        queue, queued, stream = self.queue, self.queued, self.stream
        while True:
            batch = queue.take()
            if not batch:
                queued.clear()
                queued.wait()
                continue
            data = frame_all(batch)
            stream.sendall(data)  # waits for the stream's window while the queue drops
            self.datagrams_down += len(batch)
            self.bytes_down += len(data) - 2 * len(batch)
            self.to_server.inc(len(batch))


def _reason(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "backend-refused"
    if isinstance(exc, gevent.GreenletExit):
        return "client shutting down"
    return describe(exc)
