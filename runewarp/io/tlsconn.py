"""The Server's end of a Tunnel connection: pyOpenSSL over memory BIOs on a gevent socket.

Memory BIOs let the Server hand the TLS engine the ClientHello bytes it has
already read during intake, and keep every wait on the gevent hub (OpenSSL never
touches the fd).  The object offers the small socket surface the tunnel runner
uses: recv, sendall, close.
"""

import gevent.lock
from OpenSSL import SSL

_CHUNK = 256 * 1024
# OpenSSL returns at most one record (16 KiB of plaintext) per read; asking for more
# only makes pyOpenSSL allocate (and, past malloc's mmap threshold, map) a bigger buffer.
_RECORD = 16 * 1024


class TLSClosed(Exception):
    """The peer went away during the handshake."""


class ServerTLSConnection:
    def __init__(self, sock, context, initial=b""):
        self.sock = sock
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self._send_lock = gevent.lock.Semaphore()
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
        data = self.sock.recv(_CHUNK)
        if not data:
            self.conn.bio_shutdown()
            return False
        self.conn.bio_write(data)
        return True

    def handshake(self):
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self.flush()
                if not self._feed():
                    raise TLSClosed("peer closed during the handshake") from None
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

        OpenSSL hands out one record (at most 16 KiB) per read; draining all
        buffered records in one call lets the mux parse them in one pass.
        """
        pieces = []
        total = 0
        while total < size:
            try:
                data = self.conn.recv(min(_RECORD, size - total))
            except SSL.WantReadError:
                if pieces:
                    break
                if not self._feed():
                    return b""
                continue
            except (SSL.ZeroReturnError, SSL.SysCallError):
                if pieces:
                    break  # the next call reports the end again
                return b""
            pieces.append(data)
            total += len(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def sendall(self, data):
        self.conn.sendall(data)
        self.flush()

    def close(self):
        try:
            self.conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        finally:
            self.sock.close()
