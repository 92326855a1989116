"""Every TLS context Runewarp builds, and pyOpenSSL's internals.

TLS policy (versions, tickets, ALPN) is read here and nowhere else:

- Tunnel connections: the Server side uses pyOpenSSL because the stdlib cannot
  accept an arbitrary Client certificate and judge it by its key: the verify
  callback computes the Client identity from the certificate and refuses
  unknown identities during the handshake.  The Client side uses the stdlib
  `ssl` module (cooperative under gevent) because it verifies the Server
  certificate and hostname correctly with either the system store or one
  exclusive CA file.
- Terminate mode: the Client completes a Visitor's handshake with a Public
  hostname certificate, asking for a Visitor client certificate when the Service
  has a visitor-ca-file (`terminate_context`).
- ACME: the acme-tls/1 validation handshake (`challenge_context`).

`contextcache.ContextCache` rebuilds any of them when the files they come from change.

Every private pyOpenSSL use lives in this module (`tests/test_dependencies.py`
checks each one still exists, and that no other module adds one).
"""

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi, lib as _lib

from .errors import MaterialError
from .material.controlplane import judge
from .material.x509 import identity_of_certificate

ALPN_TUNNEL = b"runewarp/1"
ALPN_ACME = b"acme-tls/1"

# OpenSSL maps certificate verification errors to alerts; it has no mapping to
# access_denied, so a refused identity is reported with bad_certificate (42),
# the closest alert OpenSSL can emit from certificate verification.
_REFUSED = _lib.X509_V_ERR_CERT_REJECTED
UNAUTHORIZED_ALERTS = ("ALERT_BAD_CERTIFICATE", "ALERT_ACCESS_DENIED")


def is_unauthorized_alert(error):
    """True when `error` is the TLS alert a Server sends to refuse our Client identity.

    Judged by OpenSSL's reason code (e.g. SSLV3_ALERT_BAD_CERTIFICATE), not the message text.
    """
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    return bool(reason) and reason.endswith(UNAUTHORIZED_ALERTS)


# The alerts a Server sends for a certificate it refuses in managed mode (OpenSSL's reason codes).
_CERTIFICATE_ALERTS = {"ALERT_CERTIFICATE_EXPIRED": "expired", "ALERT_UNKNOWN_CA": "unknown-ca",
                       "ALERT_UNSUPPORTED_CERTIFICATE": "unsupported"}


def certificate_alert(error):
    """"expired", "unknown-ca" or "unsupported" when `error` is the TLS alert a Server sends to
    refuse our certificate itself, not its identity (managed mode); else None."""
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    return next((kind for suffix, kind in _CERTIFICATE_ALERTS.items()
                 if reason and reason.endswith(suffix)), None)


def identity_from_pyopenssl(cert):
    """Client identity of a pyOpenSSL X509 certificate."""
    return identity_of_certificate(cert.to_cryptography())


def _store_certificate(raw):
    """An X509 pointer of a verify callback's store (the peer's leaf: X509_STORE_CTX_get0_cert;
    the one this call is about: _get_current_cert) as a `cryptography` certificate, or None."""
    if raw == _ffi.NULL:
        return None
    return crypto.X509._from_raw_x509_ptr(_lib.X509_dup(raw)).to_cryptography()


def _address(pointer):
    return int(_ffi.cast("uintptr_t", pointer))


def tunnel_refusal(context, connection):
    """The Refusal the verify callback recorded for this connection, if any (and forget it)."""
    return context._runewarp_refused.pop(_address(connection._ssl), None)


# What OpenSSL found wrong with a managed certificate's chain, as controlplane.judge names it;
# its alert tells the Client the same (certificate_expired, unknown_ca, ...).
_CHAIN_PROBLEMS = {_lib.X509_V_ERR_CERT_HAS_EXPIRED: "expired",
                   _lib.X509_V_ERR_CERT_NOT_YET_VALID: "not-yet-valid",
                   **dict.fromkeys((_lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                                    _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                                    _lib.X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
                                    _lib.X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
                                    _lib.X509_V_ERR_CERT_SIGNATURE_FAILURE), "unknown-ca")}


# What each verdict of controlplane.judge leaves as the verification error ("chain": OpenSSL's
# own, whose alert names the problem): the Client reads it as the TLS alert.
_VERDICT_ERRORS = {"accept": _lib.X509_V_OK, "reject": _REFUSED,
                   "self-signed": _lib.X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT}


def server_tunnel_context(cert_path, key_path, authorize, managed=None):
    """Context for Tunnel connections: TLS 1.3, ALPN runewarp/1, pinned identities.

    `authorize(identity) -> bool` is consulted during the handshake, so an
    unknown identity never completes a Tunnel connection.  With `managed`
    (config.ManagedServerConfig) the certificate must also chain to its
    client_ca_file and be valid now (`controlplane.judge`).
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    try:
        ctx.use_certificate_chain_file(str(cert_path))
        ctx.use_privatekey_file(str(key_path))
        ctx.check_privatekey()
    except (SSL.Error, OSError) as exc:
        raise MaterialError(f"cannot load Server certificate {cert_path}: {exc}") from exc
    if managed is not None:
        try:
            ctx.load_verify_locations(str(managed.client_ca_file))
        except (SSL.Error, OSError) as exc:
            raise MaterialError(f"cannot load the control-plane CA {managed.client_ca_file}: "
                                f"{ssl_reason(exc)}") from exc

    def select_alpn(_conn, offered):
        return ALPN_TUNNEL if ALPN_TUNNEL in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    ctx.set_alpn_select_callback(select_alpn)

    @_ffi.callback("int(int, X509_STORE_CTX *)")
    def verify(preverify_ok, store_ctx):
        try:
            leaf = _store_certificate(_lib.X509_STORE_CTX_get0_cert(store_ctx))
        except Exception:  # noqa: BLE001 - any unparsable certificate is refused
            leaf = None
        error = _lib.X509_STORE_CTX_get_error(store_ctx)
        problem = None if preverify_ok else (_CHAIN_PROBLEMS.get(error) or _ffi.string(
            _lib.X509_verify_cert_error_string(error)).decode())
        at_leaf = _lib.X509_STORE_CTX_get_error_depth(store_ctx) == 0
        try:
            current = None if at_leaf else _store_certificate(
                _lib.X509_STORE_CTX_get_current_cert(store_ctx))
        except Exception:  # noqa: BLE001 - only the detail of a refusal would miss it
            current = None
        verdict, refusal = judge(leaf, problem, at_leaf, authorize, managed, current)
        _lib.X509_STORE_CTX_set_error(store_ctx, _VERDICT_ERRORS.get(verdict, error))
        if refusal is None:
            return 1
        ssl_ptr = _lib.X509_STORE_CTX_get_ex_data(store_ctx,
                                                  _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        refused[_address(ssl_ptr)] = refusal
        return 0

    refused = {}
    ctx._runewarp_refused = refused
    ctx._runewarp_verify = verify  # the C callback must live as long as the context
    _lib.SSL_CTX_set_verify(ctx._context,
                            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    return ctx


def client_tunnel_context(cert_path, key_path, trust, ca_file=None):
    """Context the Client dials with: TLS 1.3, ALPN runewarp/1, its identity certificate.

    `trust = "ca-file"` trusts exactly that bundle (Exclusive CA trust);
    `"system"` trusts the system store only.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN_TUNNEL.decode()])
    try:
        if trust == "ca-file":
            ctx.load_verify_locations(cafile=str(ca_file))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (ssl.SSLError, OSError) as exc:
        raise MaterialError(f"cannot load Server CA bundle {ca_file}: {exc}") from exc
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise MaterialError(
            f"cannot load Client identity from {cert_path}: {exc}; "
            "run 'runewarp client identity init'") from exc
    return ctx



def visitor_proxy_context(ca_file=None, cert=None, key=None):
    """Context `runewarp proxy` dials a terminate Service with, as a Visitor: TLS 1.2+, the
    Service certificate checked against `ca_file` (None: the system store), and a client
    certificate (`cert`, `key`) when the Service asks for one.  pyOpenSSL, like the
    Client's terminate end, so each side sends its close_notify with one SSL_shutdown
    and keeps reading: a half-close crosses TLS 1.3 in both directions."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER)
    try:
        if ca_file is None:
            ctx.set_default_verify_paths()
        else:
            ctx.load_verify_locations(str(ca_file))
    except (SSL.Error, OSError) as exc:
        raise MaterialError(f"cannot load the CA bundle {ca_file}: {ssl_reason(exc)}") from exc
    if cert is not None:
        try:
            ctx.use_certificate_chain_file(str(cert))
            ctx.use_privatekey_file(str(key))
            ctx.check_privatekey()
        except (SSL.Error, OSError) as exc:
            raise MaterialError(f"cannot load the client certificate {cert} with key {key}: "
                                f"{ssl_reason(exc)}") from exc
    return ctx


def expect_hostname(conn, hostname):
    """Send `hostname` as SNI and refuse a certificate that does not name it."""
    conn.set_tlsext_host_name(hostname.encode("idna"))
    param = _lib.SSL_get0_param(conn._ssl)
    if not _lib.X509_VERIFY_PARAM_set1_host(param, hostname.encode("ascii"), 0):
        raise SSL.Error(f"cannot check the certificate against {hostname!r}")


def verify_failure(conn):
    """Why the peer certificate failed verification on `conn` (OpenSSL's words), or None."""
    code = _lib.SSL_get_verify_result(conn._ssl)
    if code == _lib.X509_V_OK:
        return None
    return _ffi.string(_lib.X509_verify_cert_error_string(code)).decode()


def _openssl_reasons(exc):
    """The reason strings of an SSL.Error's OpenSSL error list ([] for anything else)."""
    details = exc.args[0] if isinstance(exc, SSL.Error) and exc.args else None
    return [entry[-1] for entry in details if entry and entry[-1]] \
        if isinstance(details, list) else []


def ssl_reason(exc):
    """The reason of an OpenSSL error list (or an OSError) as one phrase."""
    return "; ".join(_openssl_reasons(exc)) or getattr(exc, "strerror", None) or str(exc)


def any_certificate_context():
    """A client context that completes a handshake with any certificate: for probes that
    read a Local backend's names (doctor) or only need the handshake to finish (a TLS
    health check), never for a connection that carries data."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def terminate_context(cert_path=None, key_path=None):
    """Context for a Visitor's handshake in terminate mode; without a certificate every
    handshake fails (fail closed: never fall back to passthrough).

    ALPN is the Service's, not the certificate's: each connection carries its Service's
    list (`offer_alpn`), so one cached context serves any list and a reload that changes
    it needs no new context.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    if cert_path is not None:
        ctx.use_certificate_chain_file(str(cert_path))
        ctx.use_privatekey_file(str(key_path))
    ctx.set_alpn_select_callback(_select_visitor_alpn)
    return ctx


def require_visitor_certificate(ctx, visitor_ca_file):
    """Make the terminate context `ctx` ask every Visitor for a client certificate chained
    to `visitor_ca_file` (the file is both the trust store and the CA list sent in the
    CertificateRequest); without one the handshake fails with an alert.  Raises SSL.Error
    when the file holds no certificate OpenSSL can use."""
    ctx.load_verify_locations(str(visitor_ca_file))
    ctx.load_client_ca(str(visitor_ca_file))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)  # no resumption that skips the check
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)


# OpenSSL's reasons for a Visitor certificate the terminate handshake refused: none sent,
# or one that does not chain to the visitor-ca-file (or is expired, or not for clients).
_VISITOR_CERTIFICATE_REASONS = ("peer did not return a certificate", "certificate verify failed",
                                "certificate required")


def visitor_certificate_refused(error):
    """True when `error` (an SSL.Error of a terminate handshake) refused the Visitor's
    client certificate: judged by OpenSSL's reason strings, not by the whole message."""
    return any(reason in _VISITOR_CERTIFICATE_REASONS for reason in _openssl_reasons(error))


def visitor_certificate_name(conn):
    """(presented, subject CN or None) of the client certificate a terminate handshake
    on `conn` verified."""
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is None:
        return False, None
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return True, (str(names[0].value) if names else None)


def offer_alpn(conn, protocols):
    """Let the terminate handshake on `conn` agree one of `protocols` (str, preferred first)."""
    conn.set_app_data(tuple(name.encode() for name in protocols or ()))


def _select_visitor_alpn(conn, offered):
    """The first of the Service's protocols the Visitor offered (server preference, RFC 7301
    3.2); with none in common the handshake goes on without ALPN (no alert)."""
    offered = set(offered)
    return next((name for name in conn.get_app_data() or () if name in offered),
                SSL.NO_OVERLAPPING_PROTOCOLS)


def challenge_context(pem):
    """Context presenting a TLS-ALPN-01 validation certificate (`pem`: certificate, then key).

    It completes a handshake only for a client offering ALPN acme-tls/1 (RFC 8737).
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    cert = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, None)
    try:
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
    except TypeError:  # pyOpenSSL before 24.3 takes only its own wrappers
        ctx.use_certificate(crypto.X509.from_cryptography(cert))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.check_privatekey()

    def select_alpn(_conn, offered):
        # Refuse the handshake (alert no_application_protocol) unless acme-tls/1 is
        # offered: returning NO_OVERLAPPING_PROTOCOLS would go on without ALPN.
        if ALPN_ACME not in offered:
            raise SSL.Error("the client did not offer ALPN acme-tls/1")
        return ALPN_ACME

    ctx.set_alpn_select_callback(select_alpn)
    return ctx


def read_records(conn, buffer, feed):
    """Decrypt into `buffer` (a writable buffer) the plaintext of every record already
    received, at least one; returns the byte count, 0 at the end of the stream.

    OpenSSL hands out one record (at most 16 KiB) per read; the records go straight
    into the caller's buffer (no allocation, no copy per read), so the mux parses
    everything that arrived in one pass.  `feed()` hands the engine more ciphertext
    and returns 0 at EOF.
    """
    engine = conn._ssl
    size = len(buffer)
    total = 0
    with _ffi.from_buffer(buffer, require_writable=True) as target:
        while total < size:
            n = _lib.SSL_read(engine, target + total, size - total)
            if n > 0:
                total += n
                continue
            error = _lib.SSL_get_error(engine, n)
            if error == _lib.SSL_ERROR_WANT_READ and not total:
                if not feed():
                    return 0
                continue
            if total:
                break  # the next call meets the same condition again
            if error in (_lib.SSL_ERROR_ZERO_RETURN, _lib.SSL_ERROR_SYSCALL):
                _lib.ERR_clear_error()
                return 0
            conn._raise_ssl_error(engine, n)
    return total


def api_server_context(cert_path, key_path, client_ca_file):
    """The configuration API's listener (io/api.py): the Server certificate, TLS 1.2+, HTTP/1.1,
    a client certificate chained to `client_ca_file` required (stdlib: a CA decides, not a key)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET  # no resumption that outlives a replaced CA file
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
        ctx.load_verify_locations(cafile=str(client_ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise MaterialError(f"cannot load the API's {cert_path} or {client_ca_file}: {exc}") from exc
    return ctx
