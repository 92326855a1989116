"""Terminate mode: the Client completes the Visitor's TLS handshake itself.

The certificate is chosen by the normalized SNI that intake already read: the
hostname's own, else the wildcard certificate over it (`*.example.com` for
`a.example.com`, in the folder `_wildcard.example.com`).  The buffered
ClientHello is handed to the TLS engine, so nothing is read twice.  A hostname
without a usable certificate fails the handshake (fail closed: never fall back
to passthrough).

With a manual `public-cert-dir`, certificates the Client issued from its own
Public hostname CA are renewed by the Client (`PublicCertificates.upkeep`, at
start, at reload and periodically); the others are only reported.
"""

import os
import shlex

from OpenSSL import SSL

from .. import certcheck
from ..errors import MaterialError
from ..proto.proxyv2 import VisitorTLS
from ..material import (PUBLIC_CA_KEY, PUBLIC_CERT, PUBLIC_KEY, load_certificate, pin,
                        load_public_cert_paths, public_cert_folder, public_cert_renewable,
                        renew_public_certs)
from ..proto.hostname import wildcard_over
from ..contextcache import ContextCache
from ..tls import (offer_alpn, require_visitor_certificate, terminate_context,
                   visitor_certificate_name)
from .splice import StreamEnd
from .tlsconn import ServerTLSConnection
from .upkeep import utcnow


class PublicCertificates:
    """Public hostname certificates by hostname, reloaded when their files change.

    The source is the manual `public-cert-dir` or, with `[client.acme]`,
    certbot's newest certificate version for the hostname.
    """

    def __init__(self, cert_dir, log, acme=None, clock=utcnow, metrics=None):
        """`metrics` (ClientMetrics) is told each certificate's notAfter as it is loaded."""
        self.cert_dir = cert_dir
        self.metrics = metrics
        self.acme = acme
        self.log = log
        self.clock = clock
        self._contexts = ContextCache(self._locate, self._build)
        self._refuse = terminate_context()  # no certificate: every handshake fails
        self._expiry_warnings = certcheck.ExpiryWarnings()
        self.names = frozenset()  # the configured terminate names, as `upkeep` last saw them

    def init_command(self, hostname):
        """The command that creates a certificate for `hostname` in this folder."""
        return (f"runewarp client public-cert init --dir {shlex.quote(str(self.cert_dir))} "
                f"--hostname {shlex.quote(hostname)}")

    def upkeep(self, hostnames, announce=False):
        """One pass over the terminate hostnames' manual certificates; nothing with ACME.

        Renews a certificate issued by the Public hostname CA in this folder once two
        thirds of its lifetime have passed (or when it is not valid now), and warns, at
        most once a day each, about any other certificate that expires within 30 days.
        With `announce` (start and reload) a hostname without a usable certificate is
        reported with the command that creates it.  Returns the renewed hostnames.
        The Client passes every configured terminate name (wildcards too) at start, at
        reload and periodically; they are also what `context_for` picks certificates from.
        """
        self.names = frozenset(hostnames)
        if self.cert_dir is None or self.acme is not None:
            return []
        renewed = []
        for hostname in hostnames:
            try:
                cert_path, _ = load_public_cert_paths(self.cert_dir, hostname)
                leaf = load_certificate(cert_path)
            except MaterialError as exc:
                if announce:
                    self.log.warn("public-certificate-missing", public_hostname=hostname,
                                  reason=str(exc), fix=self.init_command(hostname))
                continue
            now = self.clock()
            verdict = certcheck.decide(leaf, now,
                                       renewable=public_cert_renewable(self.cert_dir, hostname))
            if verdict == certcheck.RENEW:
                if self._renew(hostname, cert_path, leaf, now):
                    renewed.append(hostname)
            elif verdict in (certcheck.WARN, certcheck.REFUSE):
                self._warn_expiring(hostname, cert_path, leaf, now)
        return renewed

    def _renew(self, hostname, cert_path, leaf, now):
        try:
            result = renew_public_certs(self.cert_dir, [hostname], now=now)
        except (MaterialError, OSError) as exc:
            self.log.error("public-certificate-renewal-failed", public_hostname=hostname,
                           not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                           reason=str(exc))
            return False
        new = result.leaves[0]
        self.log.info("public-certificate-renewed", public_hostname=hostname,
                      not_after=certcheck.rfc3339(new.not_after), serial=format(new.serial, "x"),
                      previous_not_after=certcheck.rfc3339(leaf.not_valid_after_utc))
        return True

    def _warn_expiring(self, hostname, cert_path, leaf, now):
        if not self._expiry_warnings.due(hostname, leaf, now):
            return
        valid = certcheck.validity(leaf, now) == certcheck.VALID
        self.log.warn("public-certificate-expiring", public_hostname=hostname,
                      file=str(cert_path), not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                      days_left=certcheck.days_left(leaf, now),
                      reason=("the Client cannot renew it: it was not issued by the Public "
                              f"hostname CA in {os.path.join(self.cert_dir, PUBLIC_CA_KEY)}"
                              if valid else "it is not valid now: Visitors refuse it"))

    def _locate(self, key):
        """The certificate and key files of a cache key, then its visitor-ca-file if any;
        None when there are none."""
        hostname, visitor_ca = key if isinstance(key, tuple) else (key, None)
        if self.acme is not None:
            paths = self.acme.paths(hostname)
        else:
            folder = os.path.join(self.cert_dir, public_cert_folder(hostname))
            paths = tuple(os.path.join(folder, name) for name in (PUBLIC_CERT, PUBLIC_KEY))
        if paths is None or visitor_ca is None:
            return paths
        return (*paths, visitor_ca)

    def _build(self, key, paths):
        hostname, visitor_ca = key if isinstance(key, tuple) else (key, None)
        if visitor_ca is not None and not os.path.exists(visitor_ca):
            self.log.warn("visitor-ca-unusable", public_hostname=hostname, file=str(visitor_ca),
                          reason="missing")
            return self._refuse
        if paths is None:
            self.log.warn("public-certificate-missing", public_hostname=hostname,
                          fix=None if self.acme is not None else self.init_command(hostname))
            return self._refuse
        try:
            if self.acme is None:
                paths = load_public_cert_paths(self.cert_dir, hostname)
            paths = pin(*paths[:2])  # one version of the folder
            context = self._visitor_ca_context(hostname, paths, visitor_ca)
            if context is None:
                return self._refuse
            if self.metrics is not None:
                self.metrics.certificate("public", hostname,
                                         load_certificate(paths[0]).not_valid_after_utc)
        except (MaterialError, SSL.Error, OSError) as exc:
            self.log.warn("public-certificate-missing", public_hostname=hostname,
                          reason=str(exc))
            return self._refuse
        self.log.info("public-certificate-loaded", public_hostname=hostname)
        return context

    def _visitor_ca_context(self, hostname, paths, visitor_ca):
        """The terminate context, asking for a Visitor certificate from `visitor_ca` when
        given; None (logged) when that CA file cannot be used.  The certificate's own
        errors propagate to `_build`."""
        context = terminate_context(*paths)
        if visitor_ca is None:
            return context
        try:
            require_visitor_certificate(context, visitor_ca)
        except (SSL.Error, OSError) as exc:
            self.log.warn("visitor-ca-unusable", public_hostname=hostname, file=str(visitor_ca),
                          reason=str(exc) or "no CA certificate")
            return None
        return context

    def context_for(self, hostname, visitor_ca_file=None):
        """SSL context for `hostname`, or the refusing context when none is usable.  A
        Service's `visitor_ca_file` makes it a context of its own, rebuilt when that file
        changes too; without one the key and the work are what they always were."""
        if self.cert_dir is None and self.acme is None:
            return self._refuse
        name = self._certificate_name(hostname)
        return self._contexts.current(name if visitor_ca_file is None else (name, visitor_ca_file))

    def _certificate_name(self, hostname):
        """The configured name whose certificate serves `hostname`: itself, else the wildcard
        over it when that is configured (an exact name wins, as in Service selection).  So a
        Visitor under a wildcard never adds a key: the cache stays as small as the config."""
        if hostname in self.names:
            return hostname
        pattern = wildcard_over(hostname)
        return pattern if pattern in self.names else hostname


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


class TLSEnd(StreamEnd):
    """Splice endpoint for the decrypted side of a terminated Visitor connection: a
    StreamEnd whose bytes pass through the TLS engine; abort and close are the stream's."""

    __slots__ = ("tls",)

    def __init__(self, tls, stream):
        super().__init__(stream)
        self.tls = tls

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
        pass  # StreamTransport gave the credit back as the engine read the bytes

    def finish(self):
        try:
            self.tls.conn.shutdown()
            self.tls.flush()
        finally:
            self.stream.end()


def accept_visitor_tls(stream, context, buffered, alpn=()):
    """Run the Visitor's handshake over the stream, agreeing one of the Service's `alpn`
    protocols if the Visitor offers one; the caller bounds it with a deadline."""
    tls = ServerTLSConnection(StreamTransport(stream), context, buffered)
    offer_alpn(tls.conn, alpn)
    tls.handshake()
    return tls


def visitor_tls(tls):
    """What the Visitor's handshake settled, for the PROXY v2 ALPN and SSL TLVs."""
    conn = tls.conn
    presented, cn = visitor_certificate_name(conn)
    return VisitorTLS(conn.get_protocol_version_name(), conn.get_cipher_name() or "",
                      conn.get_alpn_proto_negotiated() or b"", presented, cn)
