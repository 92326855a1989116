"""Managed Client authentication material: the control-plane CA, the short-lived Client
certificates it issues for durable Client identity keys, and the CSR a Client hands a
control plane (docs/managed.md).

The certificate attests a key the Client already has: the issuer never sees or makes a
private key, and checks that the key it certifies is the identity it was asked for."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from ..errors import MaterialError
from ..proto.identity import identities_in_uris, identity_uri
from .authority import Authority, CAFolder
from .store import View
from .x509 import (CLIENT_CN, _cert_pem, _load_certs, _make_client_cert, _name, _now, _read,
                   client_identity, identity_of_certificate, read_key)

CONTROL_PLANE_CA_CERT = "control-plane-ca.crt"
CONTROL_PLANE_CA_KEY = "state/control-plane-ca.key"
CONTROL_PLANE_CA = Authority(CONTROL_PLANE_CA_CERT, CONTROL_PLANE_CA_KEY, "Runewarp Control-plane CA",
                             "control-plane CA", "runewarp ca init")
DEFAULT_TTL = 3600  # seconds
MAX_TTL = 24 * 3600  # short-lived: an identity removed from a Tunnel stays out, a leaked one expires


def init_control_plane_ca(ca_dir: Path, now: _dt.datetime | None = None) -> CAFolder:
    """Ensure the control-plane CA in `ca_dir`; an existing one is kept."""
    return CONTROL_PLANE_CA.init(ca_dir, now)


def public_key_of_pem(data: bytes, shown) -> object:
    """The public key of a PEM `PUBLIC KEY` file."""
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise MaterialError(f"{shown}: not a PEM public key: {e}") from None


def public_key_of_csr(data: bytes, shown) -> object:
    """The public key of a PEM CSR whose signature holds (its sender has the private key)."""
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as e:
        raise MaterialError(f"{shown}: not a PEM certificate signing request: {e}") from None
    if not csr.is_signature_valid:
        raise MaterialError(f"{shown}: the CSR's signature does not verify with its own key")
    return csr.public_key()


def issue_managed_cert(ca_dir: Path, identity: str, public_key, ttl: int = DEFAULT_TTL,
                       now: _dt.datetime | None = None) -> bytes:
    """A PEM client certificate from the control-plane CA in `ca_dir` for `public_key`, valid
    `ttl` seconds (1-MAX_TTL) from `now` (and 5 minutes before it, for clock skew), naming
    `identity` in a URI SAN; MaterialError unless the key's identity is `identity`."""
    if not 1 <= ttl <= MAX_TTL:
        raise MaterialError(f"a managed certificate lives 1 s to {MAX_TTL} s; got {ttl}")
    check_attests(public_key, identity)
    ca = CONTROL_PLANE_CA.require(ca_dir)
    return _cert_pem(_make_client_cert(public_key, _now(now), CLIENT_CN, ca,
                                       lifetime=_dt.timedelta(seconds=ttl),
                                       uris=(identity_uri(identity),)))


def check_attests(public_key, identity: str) -> None:
    """MaterialError unless `public_key` is the key of Client identity `identity`."""
    actual = client_identity(public_key)
    if actual != identity:
        raise MaterialError(f"the key's Client identity is {actual}, not {identity}: refusing to "
                            "certify it for another identity")


def identity_csr(identity_dir: Path) -> bytes:
    """A PEM CSR signed by the Client identity key, its identity in a URI SAN."""
    key = read_key(View(Path(identity_dir)), "client.key", "run 'runewarp client identity init'")
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(client_identity(key)))])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(CLIENT_CN))
           .add_extension(san, critical=False).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ManagedCert:
    """The Client's cert-file as read before a dial: what it certifies and until when."""

    path: Path
    not_before: _dt.datetime
    not_after: _dt.datetime


def check_managed_cert(cert_file: Path, identity_dir: Path) -> ManagedCert:
    """The cert-file the Client presents with the identity key of `identity_dir`: MaterialError
    when it does not load, certifies another key, or names another identity in its URI SAN.
    Whether it is current is the Server's to judge (the Client only says so)."""
    key = read_key(View(Path(identity_dir)), "client.key", "run 'runewarp client identity init'")
    cert = _load_certs(Path(cert_file))[0]
    wanted, got = client_identity(key), client_identity(cert.public_key())
    if got != wanted:
        raise MaterialError(f"{cert_file} certifies the key of Client identity {got}, not this "
                            f"Client's identity key ({wanted}); have the control plane issue it "
                            "from 'runewarp client identity csr'")
    if any(named != wanted for named in uri_identities(cert)):
        raise MaterialError(f"{cert_file} names another Client identity in its URI SAN than its key's")
    return ManagedCert(Path(cert_file), cert.not_valid_before_utc, cert.not_valid_after_utc)


def uri_identities(cert: x509.Certificate) -> list[str]:
    """The identities a certificate's `runewarp:identity:` URI SANs name."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return identities_in_uris(san.get_values_for_type(x509.UniformResourceIdentifier))


def read_public_input(path: Path, csr: bool):
    """The public key of the file `ca issue` was given (--csr or --public-key)."""
    data = _read(Path(path))
    return public_key_of_csr(data, path) if csr else public_key_of_pem(data, path)


def is_self_signed(cert: x509.Certificate) -> bool:
    """Signed by its own key: a self-hosted identity certificate, not one a CA issued."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# Why a Server refused a managed certificate, by what OpenSSL found wrong with its chain: the
# log and metric reason (docs/managed.md).  Anything else is "managed-certificate-invalid".
CHAIN_REFUSALS = {"expired": "managed-certificate-expired",
                  "not-yet-valid": "managed-certificate-not-yet-valid",
                  "unknown-ca": "not-issued-by-control-plane-ca"}


def chain_refusal(problem: str, cert: x509.Certificate, at_leaf: bool = True) -> tuple[str, str]:
    """(reason, detail) for a chain OpenSSL refused with `problem` (its kind, or its words) at
    `cert`: the leaf, or (`at_leaf` False) the CA certificate above it."""
    reason = CHAIN_REFUSALS.get(problem, "managed-certificate-invalid")
    whose = "" if at_leaf else f"the control-plane CA certificate {cert.subject.rfc4514_string()} "
    if problem == "expired":
        return reason, f"{whose}expired at {cert.not_valid_after_utc.isoformat()}"
    if problem == "not-yet-valid":
        return reason, f"{whose}valid only from {cert.not_valid_before_utc.isoformat()}"
    if problem == "unknown-ca":
        return reason, f"issued by {cert.issuer.rfc4514_string()}, not the client-ca-file's CA"
    return reason, problem


class Refusal(NamedTuple):
    """Why a Server refused a Tunnel connection's certificate: the log and metric `reason`, the
    Client identity of its key (None when unparsable) and a detail."""

    identity: str | None
    reason: str
    detail: str | None = None


def judge(leaf, problem, at_leaf, authorize, managed, current=None) -> tuple[str, Refusal | None]:
    """The Server's verdict on one call of its Tunnel verify callback: ("accept", None) lets the
    handshake go on; "chain" (OpenSSL's own error and alert), "self-signed" (unknown_ca) and
    "reject" (bad_certificate) refuse it, with the Refusal.

    `leaf` is the peer's certificate (None: unparsable), `problem` what OpenSSL found wrong with
    the chain at this call (None: nothing; "expired", "not-yet-valid", "unknown-ca" or its
    words), `at_leaf` whether the call is about the leaf, `authorize(identity)` the Tunnels'
    pinning, `managed` the [server.managed] config or None.  Without `managed` (self-hosted),
    or for a self-signed certificate `accept_self_signed` admits, only the key counts.
    `current`: the certificate this call is about when it is not the leaf (a CA's expiry is
    told as the CA's).  It runs before the peer proves it holds the key, so any certificate
    it cannot read is refused, never an exception."""
    if leaf is None:
        return "reject", Refusal(None, "tls-error", "an unparsable certificate")
    try:
        identity = identity_of_certificate(leaf)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "reject", Refusal(None, "tls-error", "a certificate whose key cannot be read")
    self_hosted = managed is None or is_self_signed(leaf)
    if self_hosted and managed is not None and not managed.accept_self_signed:
        return "self-signed", Refusal(identity, "self-signed-not-accepted", "a self-signed identity "
                                      "certificate; the Server needs one from its control-plane CA")
    if not self_hosted and problem is not None:
        return "chain", Refusal(identity, *chain_refusal(problem, current or leaf, current is None))
    if not at_leaf:
        return "accept", None
    if not self_hosted and any(named != identity for named in uri_identities(leaf)):
        return "reject", Refusal(identity, "managed-identity-mismatch",
                                 "its URI SAN names another Client identity than its key")
    if authorize(identity):
        return "accept", None
    return "reject", Refusal(identity, "unauthorized-client-identity")
