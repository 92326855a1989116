"""`runewarp proxy`: a Visitor's plain TCP wrapped in TLS to a terminate Service.

Each local connection (an accepted socket, or stdin/stdout) gets its own TLS
connection to the Server, with the Public hostname as SNI; the Server routes it
like any Visitor and the Client terminates it.  The two are spliced by
io/splice.py: a FIN from the local side becomes a close_notify (TLS 1.3 keeps
the other direction open), a close_notify from the Service becomes a FIN.

Failures a Visitor meets are told as one line each (VisitorError): a name that
does not resolve, a refused TCP connection, an untrusted certificate, a Server
with no Service for the hostname (it closes the connection without a TLS
answer), a Service that refuses the client certificate (its alert arrives with
the first read, after a TLS 1.3 handshake).
"""

import os
import signal
import socket

import gevent
import gevent.os
from gevent import get_hub
from gevent.event import Event
from OpenSSL import SSL

from ..errors import TLSClosed, TransportError
from ..proto.address import format_address
from ..tls import expect_hostname, ssl_reason, verify_failure, visitor_proxy_context
from .dial import connect
from .listener import Listener
from .net import abort
from .splice import CHUNK, SocketEnd, Splices
from .tlsconn import ServerTLSConnection

CONNECT_DEADLINE = 15.0  # TCP and TLS handshake, per connection
POOL_SIZE = 1024  # handlers (connections being set up) per listener at once


class VisitorError(TransportError):
    """What went wrong for one Visitor connection, as one line."""


class _ServiceTLS(ServerTLSConnection):
    """The client end of TLS over memory BIOs on a gevent socket; the Server's pyOpenSSL
    end (recv, sendall, flush, close) with the connect state and the hostname check."""

    def __init__(self, sock, context, hostname):  # the engine differs: no super().__init__
        self.conn = SSL.Connection(context, None)
        self.conn.set_connect_state()
        expect_hostname(self.conn, hostname)
        super(ServerTLSConnection, self).__init__(sock, self.conn.do_handshake,
                                                  self.conn.bio_write, self.conn.bio_shutdown)


def open_service(forward, context, deadline=CONNECT_DEADLINE):
    """TCP and TLS to the Server for `forward`; VisitorError says why it failed."""
    server = format_address(forward.server)
    timer = gevent.Timeout(deadline)
    timer.start()
    sock = None
    try:
        try:
            sock = connect(forward.server)
        except socket.gaierror as exc:
            raise VisitorError(f"{forward.server[0]}: the name does not resolve "
                               f"({exc.strerror})") from None
        except ConnectionRefusedError:
            raise VisitorError(f"{server}: connection refused (no Server listens there)") from None
        except OSError as exc:
            raise VisitorError(f"{server}: {exc.strerror or exc}") from None
        tls = _ServiceTLS(sock, context, forward.hostname)
        try:
            tls.handshake()
        except (TLSClosed, ConnectionResetError, BrokenPipeError):
            raise VisitorError(f"the Server at {server} has no Service for {forward.hostname}: it "
                               "closed the connection during the TLS handshake") from None
        except SSL.Error as exc:
            raise _handshake_error(forward, tls, exc) from None
        return tls
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise VisitorError(f"{server}: no TLS connection for {forward.hostname} within "
                           f"{deadline:g} s") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    finally:
        timer.close()


def _handshake_error(forward, tls, exc):
    reason = verify_failure(tls.conn)
    if reason is None:
        return VisitorError(f"TLS handshake for {forward.hostname} failed: {ssl_reason(exc)}")
    if "hostname" in reason:
        return VisitorError(f"the certificate the Server presented is not for {forward.hostname} "
                            f"({reason})")
    trust = f"--ca-file {forward.ca_file}" if forward.ca_file else "the system store"
    return VisitorError(f"the certificate for {forward.hostname} is not trusted by {trust} "
                        f"({reason})")


def refused(hostname, exc):
    """The Service's alert after the handshake, as one line (a client certificate it refused)."""
    reason = ssl_reason(exc)
    hint = ""
    if "certificate" in reason or "unknown ca" in reason:
        hint = ": it requires a client certificate it trusts (--cert/--key)"
    return VisitorError(f"the Service for {hostname} refused the connection ({reason}){hint}")


class ServiceEnd:
    """Splice end for the TLS connection to the Service.  Reads wait for the next record
    (the engine may hold plaintext the socket no longer shows), so it never parks."""

    __slots__ = ("tls", "hostname", "error")

    def __init__(self, tls, hostname):
        self.tls = tls
        self.hostname = hostname
        self.error = None

    def try_recv(self):
        try:
            return self.tls.recv(CHUNK)
        except SSL.Error as exc:
            self.error = refused(self.hostname, exc)
            raise self.error from None

    def when_readable(self, callback):
        callback()

    def cancel_readable(self):
        pass

    def sendall(self, data):
        self.tls.sendall(b"".join(data) if type(data) is list else data)

    def delivered(self, n):
        pass

    def finish(self):
        """close_notify: the Client passes it on to the Local backend as a FIN."""
        self.tls.conn.shutdown()
        self.tls.flush()

    def abort(self):
        abort(self.tls.sock)

    def close(self):
        self.tls.close()


class _Fd:
    """What SocketEnd's readiness watcher needs of its socket: the hub and the fd."""

    __slots__ = ("hub", "fd")

    def __init__(self, fd):
        self.hub = get_hub()
        self.fd = fd

    def fileno(self):
        return self.fd


class StdioEnd(SocketEnd):
    """Splice end over stdin (read) and stdout (write), non-blocking on the gevent hub; it
    parks on stdin with SocketEnd's watcher."""

    __slots__ = ("rfd", "wfd")

    def __init__(self, rfd=0, wfd=1):  # no SocketEnd.__init__: there is no socket
        self.rfd, self.wfd = rfd, wfd
        self.sock = _Fd(rfd)
        self._raw = None
        self._watcher = None
        self._callback = None
        self.splice = None
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)

    def try_recv(self):
        try:
            return os.read(self.rfd, CHUNK)
        except BlockingIOError:
            return None

    def sendall(self, data):
        for part in data if type(data) is list else (data,):
            view = memoryview(part)
            while view:
                view = view[gevent.os.nb_write(self.wfd, view):]

    def finish(self):
        """EOF on stdout: the write end of the pipe closes (fd 1 now points at /dev/null)."""
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self.wfd)
        finally:
            os.close(null)

    def abort(self):
        self.close()

    def close(self):
        self.cancel_readable()
        for fd in (self.rfd, self.wfd):
            try:
                os.set_blocking(fd, True)
            except OSError:
                pass


class Forwarder:
    """One forward: its TLS context, and the connections spliced through it."""

    def __init__(self, forward, log, splices):
        self.forward = forward
        self.log = log
        self.splices = splices
        self.context = visitor_proxy_context(forward.ca_file, forward.cert, forward.key)

    def listener(self):
        return Listener(self.forward.label, self.forward.listen, self._handle, POOL_SIZE,
                        key=self.forward.listen_key)

    def _handle(self, sock, address):
        try:
            tls = open_service(self.forward, self.context)
        except VisitorError as exc:
            self.log.warn("proxy-connection-failed", public_hostname=self.forward.hostname,
                          visitor=format_address(address), reason=str(exc))
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        service = ServiceEnd(tls, self.forward.hostname)

        def done(result):
            if service.error is not None:
                self.log.warn("proxy-connection-refused", public_hostname=self.forward.hostname,
                              visitor=format_address(address), reason=str(service.error))
            else:
                self.log.debug("proxy-connection-closed", public_hostname=self.forward.hostname,
                               visitor=format_address(address), sent=result.a_to_b,
                               received=result.b_to_a, error=result.error)

        self.splices.start(SocketEnd(sock), service, done)

    def stdio(self):
        """One connection over stdin/stdout; the exit status, with the error line on stderr."""
        tls = open_service(self.forward, self.context)
        service = ServiceEnd(tls, self.forward.hostname)
        finished = Event()
        self.splices.start(StdioEnd(), service, lambda _result: finished.set())
        finished.wait()
        if service.error is not None:
            raise service.error
        return 0


def serve(forwards, log):
    """Serve every forward's listener until TERM/INT: the first closes the listeners and
    lets the connections end, a second aborts them."""
    splices = Splices()
    listeners = []
    stop = Event()
    signals = []

    def on_signal():
        signals.append(True)
        stop.set()
        if len(signals) > 1:
            splices.abort_all("stopped")

    handlers = [gevent.signal_handler(signum, on_signal) for signum in (signal.SIGTERM,
                                                                         signal.SIGINT)]
    try:
        for forward in forwards:
            listeners.append(Forwarder(forward, log, splices).listener())
        for listener, forward in zip(listeners, forwards, strict=True):
            listener.start()
            log.info("proxy-listening", address=format_address(listener.address),
                     public_hostname=forward.hostname, server=format_address(forward.server))
        stop.wait()
        for listener in listeners:
            listener.stop()
        for listener in listeners:  # connections still in their TLS handshake: bounded
            listener.server.pool.join(timeout=CONNECT_DEADLINE)
        log.info("proxy-stopping", connections=len(splices))
        splices.join()
        return 0
    finally:
        for listener in listeners:
            listener.stop()
        splices.abort_all("stopped")
        splices.close()
        for handler in handlers:
            handler.cancel()


def stdio(forward, log):
    splices = Splices()
    try:
        return Forwarder(forward, log, splices).stdio()
    finally:
        splices.abort_all("stopped")
        splices.close()
