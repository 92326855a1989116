"""Both ends of a Tunnel connection's TLS, over memory BIOs on a gevent socket.

The Server's end uses pyOpenSSL (its verify callback judges the Client identity).

Memory BIOs let the Server hand the TLS engine the ClientHello bytes it has
already read during intake, and keep every wait on the gevent hub (OpenSSL never
touches the fd).  The object offers the small socket surface the tunnel runner
uses: recv, sendall, close.
"""

import ssl

import gevent.lock
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi, lib as _lib

from ..errors import TLSClosed as TLSClosed  # re-exported: raised here

_CHUNK = 256 * 1024


class ServerTLSConnection:
    def __init__(self, sock, context, initial=b""):
        self.sock = sock
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self._send_lock = gevent.lock.Semaphore()
        self._buffer = None
        if initial:
            self.conn.bio_write(bytes(initial))

    def flush(self):
        """Move every ciphertext byte OpenSSL produced onto the socket, in order."""
        with self._send_lock:
            while True:
                try:
                    data = self.conn.bio_read(_CHUNK)
                except SSL.WantReadError:
                    return
                if not data:
                    return
                self.sock.sendall(data)

    def _feed(self):
        """Hand the engine what the socket has: the byte count, 0 at EOF."""
        data = self.sock.recv(_CHUNK)
        if not data:
            self.conn.bio_shutdown()
            return 0
        self.conn.bio_write(data)
        return len(data)

    def handshake(self, progress=None):
        """`progress(n)` hears of every n bytes the peer delivers (admission sheds the
        handshakes that deliver least)."""
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self.flush()
                received = self._feed()
                if not received:
                    raise TLSClosed("peer closed during the handshake") from None
                if progress is not None:
                    progress(received)
                continue
            except SSL.Error:
                self.flush()  # deliver our alert before the caller closes
                raise
            self.flush()
            return

    def peer_certificate(self):
        return self.conn.get_peer_certificate()

    def recv(self, size=_CHUNK):
        """Up to `size` bytes of plaintext: every record already received, at least one.

        OpenSSL hands out one record (at most 16 KiB) per read; the records are
        decrypted straight into one buffer that lives as long as the connection
        (no allocation per record) and leave it as one bytes object, so the mux
        parses everything that arrived in one pass.
        """
        if self._buffer is None:
            self._buffer = _ffi.from_buffer(bytearray(_CHUNK))
        buffer, engine = self._buffer, self.conn._ssl
        size = min(size, _CHUNK)
        total = 0
        while total < size:
            n = _lib.SSL_read(engine, buffer + total, size - total)
            if n > 0:
                total += n
                continue
            error = _lib.SSL_get_error(engine, n)
            if error == _lib.SSL_ERROR_WANT_READ and not total:
                if not self._feed():
                    return b""
                continue
            if total:
                break  # the next call meets the same condition again
            if error in (_lib.SSL_ERROR_ZERO_RETURN, _lib.SSL_ERROR_SYSCALL):
                _lib.ERR_clear_error()
                return b""
            self.conn._raise_ssl_error(engine, n)
        return _ffi.buffer(buffer, total)[:]

    def sendall(self, data):
        self.conn.sendall(data)
        self.flush()

    def close(self):
        try:
            self.conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        finally:
            self.sock.close()


class ClientTLSConnection:
    """The Client's end of a Tunnel connection: the stdlib `ssl` engine over memory BIOs.

    A socket-backed SSL object sends every 16 KiB record with its own system call,
    and on loopback each of those also pays for waking the Server; over memory BIOs
    one mux write of up to 256 KiB leaves in a single send.  Reads go straight into
    one buffer that lives as long as the connection, one record per engine call.
    """

    def __init__(self, sock, context, server_hostname):
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.engine = context.wrap_bio(self._incoming, self._outgoing,
                                       server_hostname=server_hostname)
        self._send_lock = gevent.lock.Semaphore()
        self._buffer = None

    def flush(self):
        with self._send_lock:
            self._drain_outgoing()

    def _drain_outgoing(self):
        """Send every ciphertext byte the engine produced; the caller holds the send lock."""
        while self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    def _feed(self):
        data = self.sock.recv(_CHUNK)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    def handshake(self):
        while True:
            try:
                self.engine.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                if not self._feed():
                    raise ConnectionResetError("the Server closed the connection during the "
                                               "TLS handshake") from None
                continue
            self.flush()
            return

    def selected_alpn_protocol(self):
        return self.engine.selected_alpn_protocol()

    def recv(self, size=_CHUNK):
        """Up to `size` bytes of plaintext: every record already received, at least one."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(_CHUNK))
        view = self._buffer
        size = min(size, len(view))
        total = 0
        while total < size:
            try:
                n = self.engine.read(size - total, view[total:])
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    self.flush()  # e.g. a key update answer the engine queued while reading
                if total:
                    break
                if not self._feed():
                    return b""
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                if total:
                    break  # the next call reports the end again
                return b""
            if not n:
                break
            total += n
        return bytes(view[:total])

    def sendall(self, data):
        with self._send_lock:
            view = memoryview(data)
            while view:
                view = view[self.engine.write(view):]
            self._drain_outgoing()

    def close(self):
        self.sock.close()
