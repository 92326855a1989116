"""TLS contexts for the Tunnel connection and the pinned Client identity check.

The Server side uses pyOpenSSL because the stdlib cannot accept an arbitrary
Client certificate and judge it by its key: the verify callback computes the
Client identity from the certificate and refuses unknown identities during the
handshake.  The Client side uses the stdlib `ssl` module (cooperative under
gevent) because it verifies the Server certificate and hostname correctly with
either the system store or one exclusive CA file.
"""

import ssl

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi, lib as _lib

from .errors import MaterialError
from .material import client_identity

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


def identity_from_pyopenssl(cert):
    """Client identity of a pyOpenSSL X509 certificate."""
    return client_identity(cert.to_cryptography().public_key())


def _store_leaf_identity(store_ctx):
    raw = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
    if raw == _ffi.NULL:
        return None
    cert = crypto.X509._from_raw_x509_ptr(_lib.X509_dup(raw))
    return identity_from_pyopenssl(cert)


def _address(pointer):
    return int(_ffi.cast("uintptr_t", pointer))


def refused_identity(context, connection):
    """The Client identity the verify callback refused on this connection, if any."""
    return context._runewarp_refused.pop(_address(connection._ssl), None)


def server_tunnel_context(cert_path, key_path, authorize):
    """Context for Tunnel connections: TLS 1.3, ALPN runewarp/1, pinned identities.

    `authorize(identity) -> bool` is consulted during the handshake, so an
    unknown identity never completes a Tunnel connection.
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

    def select_alpn(_conn, offered):
        return ALPN_TUNNEL if ALPN_TUNNEL in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    ctx.set_alpn_select_callback(select_alpn)

    @_ffi.callback("int(int, X509_STORE_CTX *)")
    def verify(_preverify_ok, store_ctx):
        if _lib.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
            return 1
        try:
            identity = _store_leaf_identity(store_ctx)
        except Exception:  # noqa: BLE001 - any unparsable certificate is refused
            identity = None
        if identity is not None and authorize(identity):
            _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)
            return 1
        ssl_ptr = _lib.X509_STORE_CTX_get_ex_data(store_ctx,
                                                  _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        refused[_address(ssl_ptr)] = identity
        _lib.X509_STORE_CTX_set_error(store_ctx, _REFUSED)
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

