"""Terminate mode: the Client completes the Visitor's TLS handshake itself.

The certificate is chosen by the normalized SNI that intake already read; the
buffered ClientHello is handed to the TLS engine, so nothing is read twice.  A
hostname without a usable certificate fails the handshake (fail closed: never
fall back to passthrough).
"""

import os

from OpenSSL import SSL

from ..errors import MaterialError
from ..material import PUBLIC_CERT, PUBLIC_KEY, file_stamp, load_public_cert_paths
from .tlsconn import ServerTLSConnection


def _context(cert_path=None, key_path=None):
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    if cert_path is not None:
        ctx.use_certificate_chain_file(str(cert_path))
        ctx.use_privatekey_file(str(key_path))
    return ctx


class PublicCertificates:
    """Public hostname certificates by hostname, reloaded when their files change.

    The source is the manual `public-cert-dir` or, with `[client.acme]`,
    certbot's newest certificate version for the hostname.
    """

    def __init__(self, cert_dir, log, acme=None):
        self.cert_dir = cert_dir
        self.acme = acme
        self.log = log
        self._cache = {}
        self._refuse = _context()  # no certificate: every handshake fails

    def _locate(self, hostname):
        """(stamp, load): the stamp changes whenever the certificate does; None = missing."""
        if self.acme is not None:
            paths = self.acme.paths(hostname)
            return paths, lambda: paths
        folder = os.path.join(self.cert_dir, hostname)
        try:
            stamp = file_stamp(*(os.path.join(folder, n) for n in (PUBLIC_CERT, PUBLIC_KEY)))
        except OSError:
            stamp = None
        return stamp, lambda: load_public_cert_paths(self.cert_dir, hostname)

    def context_for(self, hostname):
        """SSL context for `hostname`, or the refusing context when none is usable."""
        if self.cert_dir is None and self.acme is None:
            return self._refuse
        stamp, load = self._locate(hostname)
        cached = self._cache.get(hostname)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        ctx = self._refuse
        if stamp is None:
            self.log.warn("public-certificate-missing", public_hostname=hostname)
        else:
            try:
                ctx = _context(*load())
                self.log.info("public-certificate-loaded", public_hostname=hostname)
            except (MaterialError, SSL.Error, OSError) as exc:
                self.log.warn("public-certificate-missing", public_hostname=hostname,
                              reason=str(exc))
        self._cache[hostname] = (stamp, ctx)
        return ctx


class StreamTransport:
    """A mux stream seen as a byte transport for the TLS engine."""

    def __init__(self, stream):
        self.stream = stream

    def recv(self, _size):
        return self.stream.recv_consumed()

    def sendall(self, data):
        self.stream.sendall(data)

    def close(self):
        self.stream.close()


class TLSEnd:
    """Splice endpoint for the decrypted side of a terminated Visitor connection."""

    def __init__(self, tls, stream):
        self.tls = tls
        self.stream = stream

    def try_recv(self):
        """Waits for the next record: the TLS engine may hold plaintext the mux stream no
        longer shows, so this end never parks and its pump keeps a greenlet."""
        return self.tls.recv(64 * 1024)

    def when_readable(self, callback):
        callback()

    def cancel_readable(self):
        pass

    def sendall(self, data):
        self.tls.sendall(data)

    def delivered(self, n):
        pass

    def finish(self):
        try:
            self.tls.conn.shutdown()
            self.tls.flush()
        finally:
            self.stream.end()

    def abort(self):
        self.stream.reset()

    def close(self):
        self.stream.close()


def accept_visitor_tls(stream, context, buffered):
    """Run the Visitor's handshake over the stream; the caller bounds it with a deadline."""
    tls = ServerTLSConnection(StreamTransport(stream), context, buffered)
    tls.handshake()
    return tls
