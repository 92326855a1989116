"""Both ends of a Tunnel connection's TLS, over memory BIOs on a gevent socket.

The Server's end uses pyOpenSSL (its verify callback judges the Client identity).

Memory BIOs let the Server hand the TLS engine the ClientHello bytes it has
already read during intake, and keep every wait on the gevent hub (OpenSSL never
touches the fd).  The object offers the small socket surface the tunnel runner
uses: recv_into (recv), sendall, close.
"""

import ssl

import gevent.lock
from OpenSSL import SSL

from ..errors import TLSClosed as TLSClosed  # re-exported: raised here
from ..tls import read_records
from .splice import send_gathered

_CHUNK = 256 * 1024
# Ciphertext on its way from the socket into an engine: filled by recv_into and emptied
# into the engine at once, with no switch between, so every connection of the process
# shares it and no read allocates.
_FEED = memoryview(bytearray(_CHUNK))
_PLAINTEXT = memoryview(bytearray(_CHUNK))  # ServerTLSConnection.recv's, shared the same way
_WRITE_SLICE = 64 * 1024  # plaintext per engine write: four records


class _MemoryTLS:
    """What both engines share: feeding them from the socket and the handshake loop.

    A subclass names its engine's "needs more bytes" exception (`_WANT_READ`),
    the engine errors whose alert is sent before they are raised (`_ALERTS`),
    what a peer that leaves mid-handshake raises (`_CLOSED`), and hands over the
    engine's handshake step and its ciphertext inputs (data, EOF).
    """

    _WANT_READ = Exception
    _ALERTS = ()

    def __init__(self, sock, do_handshake, write_incoming, write_eof):
        self.sock = sock
        self._do_handshake = do_handshake
        self._write_incoming = write_incoming
        self._write_eof = write_eof
        self._send_lock = gevent.lock.Semaphore()

    def _feed(self):
        """Hand the engine what the socket has: the byte count, 0 at EOF."""
        recv_into = getattr(self.sock, "recv_into", None)
        if recv_into is None:  # a mux stream (terminate mode) hands over whole chunks
            data = self.sock.recv(_CHUNK)
            n = len(data)
        else:
            n = recv_into(_FEED)
            data = _FEED[:n]
        if not n:
            self._write_eof()
            return 0
        self._write_incoming(data)
        return n

    def handshake(self, progress=None):
        """`progress(n)` hears of every n bytes the peer delivers (admission sheds the
        handshakes that deliver least)."""
        while True:
            try:
                self._do_handshake()
            except self._WANT_READ:
                self.flush()
                received = self._feed()
                if not received:
                    kind, message = self._CLOSED
                    raise kind(message) from None
                if progress is not None:
                    progress(received)
                continue
            except self._ALERTS:
                self.flush()  # deliver our alert before the caller closes
                raise
            self.flush()
            return


class ServerTLSConnection(_MemoryTLS):
    _WANT_READ = SSL.WantReadError
    _ALERTS = (SSL.Error,)
    _CLOSED = (TLSClosed, "peer closed during the handshake")

    def __init__(self, sock, context, initial=b""):
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        super().__init__(sock, self.conn.do_handshake, self.conn.bio_write,
                         self.conn.bio_shutdown)
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

    def peer_certificate(self):
        return self.conn.get_peer_certificate()

    def recv_into(self, buffer):
        """Decrypt into `buffer` every record already received, at least one; the byte
        count, 0 at the end."""
        return read_records(self.conn, buffer, self._feed)

    def recv(self, size=_CHUNK):
        """Up to `size` bytes of plaintext as bytes (a terminated Visitor's): every record
        already received, at least one; b"" at the end.

        They are decrypted into the process's one scratch buffer and copied out at once:
        read_records waits for the socket only before it has written anything, so no
        other connection's bytes are ever in it across a switch, and an idle connection
        holds no buffer of its own.
        """
        view = _PLAINTEXT[:min(size, _CHUNK)]
        return bytes(view[:self.recv_into(view)])

    def sendall(self, data):
        # SSL_write outside the send lock is safe: the outgoing BIO is FIFO and only
        # the flush, under the lock, drains it.
        self.conn.sendall(data)
        self.flush()

    def close(self):
        try:
            self.conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        finally:
            self.sock.close()


class ClientTLSConnection(_MemoryTLS):
    """The Client's end of a Tunnel connection: the stdlib `ssl` engine over memory BIOs.

    A socket-backed SSL object sends every 16 KiB record with its own system call,
    and on loopback each of those also pays for waking the Server; over memory BIOs
    one mux write of up to 256 KiB leaves in a single send.  Reads go straight into
    one buffer that lives as long as the connection, one record per engine call.
    """

    _WANT_READ = ssl.SSLWantReadError
    _CLOSED = (ConnectionResetError,
               "the Server closed the connection during the TLS handshake")

    def __init__(self, sock, context, server_hostname):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.engine = context.wrap_bio(self._incoming, self._outgoing,
                                       server_hostname=server_hostname)
        super().__init__(sock, self.engine.do_handshake, self._incoming.write,
                         self._incoming.write_eof)

    def flush(self):
        with self._send_lock:
            self._drain_outgoing()

    def _drain_outgoing(self):
        """Send every ciphertext byte the engine produced; the caller holds the send lock."""
        while self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    def selected_alpn_protocol(self):
        return self.engine.selected_alpn_protocol()

    def recv_into(self, buffer):
        """Decrypt into `buffer` every record already received, at least one; the byte
        count, 0 at the end."""
        view = memoryview(buffer)
        size = len(view)
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
                    return 0
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                if total:
                    break  # the next call reports the end again
                return 0
            if not n:
                break
            total += n
        return total

    def sendall(self, data):
        """Encrypt `data` a slice at a time, so the engine's output stays small enough to
        sit in the CPU cache, and send the ciphertext of all slices with one sendmsg."""
        with self._send_lock:
            view = memoryview(data)
            parts = []
            for offset in range(0, len(view), _WRITE_SLICE):
                chunk = view[offset:offset + _WRITE_SLICE]
                while chunk:
                    chunk = chunk[self.engine.write(chunk):]
                parts.append(self._outgoing.read())
            if not parts and self._outgoing.pending:
                parts.append(self._outgoing.read())
            if parts:
                send_gathered(self.sock, parts)

    def close(self):
        self.sock.close()
