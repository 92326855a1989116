"""Keys, certificates and identities: ECDSA P-256 in unencrypted PKCS#8 / PEM, made
with `cryptography` only."""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import MaterialError
from ..proto.hostname import normalize
from ..proto.identity import identity_of_spki
from .files import CERT_MODE, KEY_MODE, atomic_write

CA_DAYS = 3650
LEAF_DAYS = 90
# Peers with slightly slow clocks must not see a certificate as not-yet-valid.
_BACKDATE = _dt.timedelta(minutes=5)

SERVER_CA_CN = "Runewarp Server CA"
PUBLIC_CA_CN = "Runewarp Public CA"
CLIENT_CN = "runewarp-client"


# --------------------------------------------------------------------------
# Keys, certificates, identities


def _now(now: _dt.datetime | None) -> _dt.datetime:
    """Aware UTC time; naive datetimes are taken to be UTC."""
    if now is None:
        return _dt.datetime.now(_dt.UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=_dt.UTC)
    return now.astimezone(_dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _spki_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def client_identity(public_key) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.

    Keyed on the public key, not the certificate, so renewing a certificate
    keeps the identity. A private key is accepted for convenience.
    """
    if hasattr(public_key, "public_key"):
        public_key = public_key.public_key()
    return identity_of_spki(_spki_der(public_key))


def identity_of_certificate(cert: x509.Certificate) -> str:
    """Identity of the key a certificate certifies."""
    return client_identity(cert.public_key())


def identity_of_certificate_der(der: bytes) -> str:
    """Identity from a DER certificate, as handed over by a TLS peer."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise MaterialError(f"not a valid DER certificate: {e}") from e
    return identity_of_certificate(cert)


def _read(path: Path, hint: str | None = None, shown: Path | None = None) -> bytes:
    """Bytes of `path`; errors name `shown` (the stable name) when given."""
    shown = shown or path
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MaterialError(f"{shown}: missing" + (f"; {hint}" if hint else "")) from None
    except OSError as e:
        raise MaterialError(f"{shown}: cannot read: {e.strerror or e}") from e


def _load_certs(path: Path, hint: str | None = None, shown: Path | None = None) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in file order (a chain, or a bundle of CAs)."""
    data = _read(path, hint, shown)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise MaterialError(f"{shown or path}: not a valid PEM certificate: {e}") from e


def _load_cert(path: Path, hint: str | None = None, shown: Path | None = None) -> x509.Certificate:
    """First certificate of a PEM file (the leaf of a chain file)."""
    return _load_certs(path, hint, shown)[0]


def _load_key(path: Path, hint: str | None = None, shown: Path | None = None) -> ec.EllipticCurvePrivateKey:
    data = _read(path, hint, shown)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise MaterialError(f"{shown or path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MaterialError(f"{shown or path}: expected an ECDSA key")
    return key


def _check_pair(cert: x509.Certificate, key, cert_path: Path, key_path: Path) -> None:
    if _spki_der(cert.public_key()) != _spki_der(key.public_key()):
        raise MaterialError(f"{key_path} does not match {cert_path}")


def read_cert(view, rel: str, hint: str | None = None) -> x509.Certificate:
    """The first certificate of `rel` in one reading (`store.View`) of a folder."""
    return _load_cert(view.path(rel), hint, view.shown(rel))


def read_key(view, rel: str, hint: str | None = None) -> ec.EllipticCurvePrivateKey:
    return _load_key(view.path(rel), hint, view.shown(rel))


def read_pair(view, cert_rel: str, key_rel: str, hint: str | None = None):
    """(certificate, key) of one reading of a folder, checked to belong together."""
    cert, key = read_cert(view, cert_rel, hint), read_key(view, key_rel, hint)
    _check_pair(cert, key, view.shown(cert_rel), view.shown(key_rel))
    return cert, key


def _check_issued(leaf: x509.Certificate, ca: x509.Certificate, leaf_path: Path, ca_path: Path) -> None:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise MaterialError(f"{leaf_path} was not issued by {ca_path}") from e


def leaf_not_after(cert_path: Path) -> _dt.datetime:
    """Expiry (aware UTC) of the first certificate in `cert_path`."""
    return _load_cert(Path(cert_path)).not_valid_after_utc


def certificate_serial(cert_path: Path) -> int:
    """Serial of the first certificate in `cert_path`."""
    return _load_cert(Path(cert_path)).serial_number


def _san_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for, as TLS clients match them."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(cn: str, now: _dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _digital_signature_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False,
        crl_sign=False, encipher_only=False, decipher_only=False,
    )


def _make_leaf(
    hostname: str,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey | None,
    now: _dt.datetime,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Server-auth leaf for `hostname`; self-signed when no CA is given."""
    key = key or _new_key()
    pub = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if ca_cert is None:
        builder = builder.issuer_name(_name(hostname))
        signer = key
    else:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.issuer_name(ca_cert.subject).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        signer = ca_key
    return builder.sign(signer, hashes.SHA256()), key


def _make_client_cert(key, now: _dt.datetime, cn: str = CLIENT_CN, ca=None, days: int = LEAF_DAYS,
                      lifetime: _dt.timedelta | None = None, uris: tuple[str, ...] = ()) -> x509.Certificate:
    """Client-auth leaf: self-signed (the Client identity; `key` is then the private key), or
    signed by `ca` (certificate, key) for the public or private `key`: a Visitor certificate,
    a managed Client certificate (`lifetime` instead of `days`, its identity in `uris`)."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + (lifetime or _dt.timedelta(days=days)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(uri) for uri in uris]), critical=False)
    if ca is None:
        return builder.issuer_name(_name(cn)).sign(key, hashes.SHA256())
    ca_cert, ca_key = ca
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return builder.issuer_name(ca_cert.subject).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    ).sign(ca_key, hashes.SHA256())


def read_ca(view, cert_rel: str, key_rel: str, what: str, fix: str):
    """A CA's (certificate, key) in a material folder, None if absent; half a CA is an
    error saying `fix`, not a reason to replace it."""
    has_cert, has_key = view.exists(cert_rel), view.exists(key_rel)
    if not has_cert and not has_key:
        return None
    if not (has_cert and has_key):
        raise MaterialError(f"{view.root}: incomplete {what}, missing {key_rel if has_cert else cert_rel}; {fix}")
    return read_pair(view, cert_rel, key_rel)



def load_certificate(cert_path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the leaf of a chain file)."""
    return _load_cert(Path(cert_path))


def load_certificates(cert_path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file: a CA bundle (server-ca-file) may hold several."""
    return _load_certs(Path(cert_path))



# --------------------------------------------------------------------------
# Key file permissions
#
# Every key this package writes is created 0600, so neither the umask nor an old
# file's mode matter; keys operators copy in by hand can still be loose, and these
# functions find them so the runtime can warn, or refuse to start under strict
# permissions.


def key_permission_problem(path: Path) -> str | None:
    """A one-line complaint if the key at `path` is accessible to group or others.

    None when the mode is owner-only, or when the file is missing or cannot be
    stat'ed (loading it reports that better).  Symlinks are followed: the mode
    that protects the key is the target's.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return (f"{path}: private key is accessible to group or others (mode {mode:04o}); "
            f"run 'chmod 600 {shlex.quote(str(path))}'")


def key_permission_problems(paths) -> list[str]:
    """`key_permission_problem` for each path, in order, problems only."""
    return [p for p in map(key_permission_problem, paths) if p is not None]


# --------------------------------------------------------------------------
# Test and demo helper


def make_self_signed(hostname: str, dir: Path, *, now: _dt.datetime | None = None) -> tuple[Path, Path]:
    """Self-signed server certificate for a TLS backend: ``<hostname>.crt/.key``.

    Not crash-safe as a pair and not meant to be: it serves tests and demos.
    """
    dir = Path(dir)
    host = normalize(hostname)
    cert, key = _make_leaf(host, None, None, _now(now))
    cert_path, key_path = dir / f"{host}.crt", dir / f"{host}.key"
    atomic_write(key_path, _key_pem(key), KEY_MODE)
    atomic_write(cert_path, _cert_pem(cert), CERT_MODE)
    return cert_path, key_path
