"""The Client's streams: PROXY header → ClientHello → Service → Local backend → splice.

Each stream the Server opens gets one handler from a bounded pool; passthrough
forwards the buffered bytes, terminate completes the Visitor's TLS first.  A
passthrough stream whose header names the routed Public hostname (PP2_TYPE_AUTHORITY)
is forwarded without parsing its ClientHello: the Server already did.  A stream
refused before any byte reached a Local backend is reset with RESET_BEFORE_BACKEND,
which lets the Server retry it on another member (docs/protocol.md).
"""

import time

import gevent

from ..errors import IntakeRejected, StreamAborted, TLSClosed
from ..proto import proxyv2
from ..proto.mux import RESET_BEFORE_BACKEND  # the Server may place these on another member
from ..tls import ALPN_ACME, visitor_certificate_refused
from .intake import INTAKE_DEADLINE, Intake, intake_deadline, read_client_hello
from ..proto.address import format_address
from .net import describe, dial, send_first, set_keepalive, set_nodelay
from .quicbackend import ClientQuic, read_quic_hello
from .splice import TRANSPORT_ERRORS, SocketEnd, StreamEnd
from .terminate import StreamTransport, TLSEnd, accept_visitor_tls, visitor_tls


class ClientStreams(ClientQuic):
    """The stream handler half of the Client (mixed into io.client.Client): it reads
    `config`, `services`, `handlers`, `splices`, `saturation`, `acme`, `public_certs`,
    `metrics`, `health` and `log` from the Client.  Each Visitor stream counts one outcome."""

    def _on_stream(self, session, stream):
        if stream.id % 2 == 1:
            stream.reset()
            return
        # The Tunnel reader runs this and must never block: the running config's limit is the
        # only bound (the handler pool has none of its own, so a reload cannot disagree with it).
        if len(self.handlers) + len(self.splices) >= self.config.limits.active_streams:
            self.saturation.warn("active-streams", time.monotonic(),
                                 limit=self.config.limits.active_streams)
            self.metrics.unserved["handler-pool-full"].inc()
            stream.reset(RESET_BEFORE_BACKEND)
            return
        self.handlers.spawn(self._serve_stream, stream)

    def _serve_stream(self, stream):
        unserved = self.metrics.unserved
        outcomes = unserved  # the Service's outcomes once one is chosen
        outcome = "aborted"
        try:
            with intake_deadline():  # PROXY header and ClientHello share one deadline
                header, rest = _read_proxy_header(stream)
                quic = header.protocol == "udp"  # a QUIC flow: io/quicbackend.py
                taken = None if quic else self._routed(header, rest)
                if taken is None:
                    taken = (read_quic_hello if quic else read_client_hello)(
                        lambda: stream.recv_consumed(), rest)
                del rest  # the bytes live on in `taken` only until they are forwarded
            service = self.services.select(taken.hostname)
            if service is None:
                outcome = "no-service"
                self.log.debug("stream-rejected", public_hostname=taken.hostname,
                               reason="no-service")
                stream.reset(RESET_BEFORE_BACKEND)
                return
            series = self.metrics.services[service.backend_address]
            outcomes = series.outcome
            if quic:
                outcome = self._quic(stream, service, series, taken, header)
            elif service.tls_mode == "terminate":
                outcome = self._terminate(stream, service, series, taken, header)
            else:
                outcome = self._passthrough(stream, service, series, taken, header)
        except IntakeRejected as exc:
            outcome = "intake-deadline" if exc.reason == "intake-deadline" else \
                "header-invalid" if exc.reason == "closed-before-proxy-header" else "hello-invalid"
            self.log.debug("stream-rejected", reason=exc.reason)
            stream.reset()
        except proxyv2.ProxyHeaderError as exc:
            outcome = "header-invalid"
            self.log.debug("stream-rejected", reason=f"bad-proxy-header: {exc}")
            stream.reset()
        except StreamAborted:
            stream.reset()
        finally:
            outcomes[outcome].inc()

    def _routed(self, header, rest):
        """The intake of a passthrough stream whose header names its Public hostname, without
        the ClientHello (forwarded as it comes); None when the hello must be read (no TLV from
        an older Server, or a Service that terminates, answers ACME or is unknown here)."""
        hostname = proxyv2.routed_hostname(header)
        if hostname is None:
            return None
        service = self.services.select(hostname)
        if service is None or service.tls_mode == "terminate":
            return None
        return Intake(None, hostname, rest)

    def _connect_backend(self, service, series, hostname):
        started = time.monotonic()
        try:
            with gevent.Timeout(self.config.timeouts.backend_connect):
                sock = dial(service.backend_address)
        except (OSError, gevent.Timeout) as exc:
            self.log.warn("backend-connect-failed", public_hostname=hostname,
                          backend_address=format_address(service.backend_address),
                          reason=describe(exc))
            self.health.connect_failed(service, describe(exc))
            return None
        self.health.connect_succeeded(service)
        series.connect_seconds.observe(time.monotonic() - started)
        set_nodelay(sock)
        set_keepalive(sock)  # a backend host that vanished is noticed, and its stream freed
        return sock

    def _passthrough(self, stream, service, series, taken, header):
        """Connect the backend and splice; the stream's outcome."""
        sock = self._connect_backend(service, series, taken.hostname)
        if sock is None:
            stream.reset(RESET_BEFORE_BACKEND)
            return "backend-connect-failed"
        first = taken.buffered  # the ClientHello, after any PROXY header: one send for both
        if service.proxy_protocol is not None:
            first = proxyv2.backend_header(service.proxy_protocol, header, taken.hostname) + first
        failed = self._write_first(stream, sock, service, taken.hostname, first)
        if failed:
            return failed
        taken.release()
        return self._splice(StreamEnd(stream), sock, service, series, taken, header, "passthrough")

    def _write_first(self, stream, sock, service, hostname, data):
        """Send what the Local backend reads before the splice; on failure close both
        ends and return the outcome."""
        try:
            send_first(sock, data)
        except OSError as exc:
            self.log.warn("backend-write-failed", public_hostname=hostname,
                          backend_address=format_address(service.backend_address),
                          reason=describe(exc))
            sock.close()
            stream.reset()
            return "backend-write-failed"
        return None

    def _terminate(self, stream, service, series, taken, header):
        """Complete the Visitor's TLS, connect the backend and splice; the stream's outcome."""
        if self.challenges is not None and ALPN_ACME.decode() in taken.hello.alpn_protocols:
            # A TLS-ALPN-01 validation for this hostname, relayed by the Server.
            self.challenges.answer(StreamTransport(stream), taken.hostname, taken.buffered,
                                   self.log)
            return "acme-challenge"
        context = self.public_certs.context_for(taken.hostname, service.visitor_ca_file)
        try:
            with gevent.Timeout(INTAKE_DEADLINE):
                tls = accept_visitor_tls(stream, context, taken.buffered, service.alpn)
            taken.release()
        except (gevent.Timeout, TLSClosed, *TRANSPORT_ERRORS) as exc:
            refused = service.visitor_ca_file is not None and visitor_certificate_refused(exc)
            self.log.debug("stream-rejected", public_hostname=taken.hostname,
                           reason=f"{'visitor-certificate-refused' if refused else 'visitor-handshake-failed'}"
                                  f": {describe(exc)}")
            if refused:
                _linger(stream)
            stream.reset()
            return "visitor-certificate-refused" if refused else "terminate-handshake-failed"
        sock = self._connect_backend(service, series, taken.hostname)
        if sock is None:
            stream.reset(RESET_BEFORE_BACKEND)
            return "backend-connect-failed"
        if service.proxy_protocol is not None:  # before the first plaintext byte
            failed = self._write_first(stream, sock, service, taken.hostname, proxyv2.backend_header(
                service.proxy_protocol, header, taken.hostname, visitor_tls(tls)))
            if failed:
                return failed
        return self._splice(TLSEnd(tls, stream), sock, service, series, taken, header, "terminate")

    def _splice(self, visitor_end, sock, service, series, taken, header, mode):
        visitor = format_address(header.source) if header.source else None
        backend = series.label  # the Local backend's "host:port", spelled once per Service
        self.log.debug("stream-routed", public_hostname=taken.hostname, visitor=visitor,
                       backend_address=backend, tls_mode=mode)
        hostname = taken.hostname
        series.active += 1
        started = time.monotonic()

        def closed(result):
            series.active -= 1
            self.log.log("info" if self.config.access_log else "debug", "stream-closed",
                         public_hostname=hostname, visitor=visitor, service=backend,
                         tls_mode=mode, bytes_up=result.a_to_b, bytes_down=result.b_to_a,
                         duration=time.monotonic() - started, reason=result.error or "done")

        self.splices.start(visitor_end, SocketEnd(sock), closed)
        return "served"


LINGER = 1.0  # seconds a refused Visitor has to read our alert before the stream is reset


def _linger(stream):
    """End our direction after the alert and drain the Visitor's until it closes, for at
    most LINGER: a Visitor refused after its handshake (TLS 1.3 sends the certificate with
    the Finished) has already sent data, and a reset right away can overtake the alert."""
    stream.end()
    try:
        with gevent.Timeout(LINGER, False):
            while stream.recv_consumed():
                pass
    except TRANSPORT_ERRORS:
        pass


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
