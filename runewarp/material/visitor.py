"""Visitor certificate material: the Visitor CA a terminate Service names in
`visitor-ca-file`, and the client certificates it issues to Visitors.

The CA lives in a versioned folder like the other material; an issued certificate
is the Visitor's, not the Client's, so it is written as a plain pair wherever the
operator asks and never kept in the folder."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import MaterialError
from .store import CERT_MODE, KEY_MODE, View, atomic_write, ensure_dir, update
from .x509 import (_BACKDATE, _cert_pem, _digital_signature_usage, _key_pem, _make_ca, _name, _new_key, _now,
                   read_pair)

VISITOR_CA_CERT = "visitor-ca.crt"
VISITOR_CA_KEY = "state/visitor-ca.key"
VISITOR_CA_CN = "Runewarp Visitor CA"
VISITOR_CERT_DAYS = 365
MAX_VISITOR_CERT_DAYS = 3650
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class VisitorCA:
    """The Visitor CA certificate (what visitor-ca-file names) and whether it is new."""

    cert_path: Path
    created: bool


@dataclass(frozen=True)
class VisitorCert:
    """One issued Visitor certificate and its key."""

    cert_path: Path
    key_path: Path
    not_after: _dt.datetime


def _load_ca(view: View):
    """The Visitor CA, None if absent; half a CA is an error, not a reason to replace it."""
    has_cert, has_key = view.exists(VISITOR_CA_CERT), view.exists(VISITOR_CA_KEY)
    if not has_cert and not has_key:
        return None
    if not (has_cert and has_key):
        missing = VISITOR_CA_KEY if has_cert else VISITOR_CA_CERT
        raise MaterialError(f"{view.root}: incomplete Visitor CA, missing {missing}; remove the folder "
                            "and run 'runewarp client visitor-ca init' again")
    return read_pair(view, VISITOR_CA_CERT, VISITOR_CA_KEY)


def init_visitor_ca(ca_dir: Path, now: _dt.datetime | None = None) -> VisitorCA:
    """Ensure the Visitor CA in `ca_dir`; an existing one is kept."""
    ca_dir = Path(ca_dir)

    def build(view):
        if _load_ca(view) is not None:
            return {}, VisitorCA(ca_dir / VISITOR_CA_CERT, False)
        cert, key = _make_ca(VISITOR_CA_CN, _now(now))
        return {VISITOR_CA_KEY: _key_pem(key), VISITOR_CA_CERT: _cert_pem(cert)}, \
            VisitorCA(ca_dir / VISITOR_CA_CERT, True)

    return update(ca_dir, build, (VISITOR_CA_KEY, VISITOR_CA_CERT))


def visitor_cert_name(name: str) -> str:
    """A Visitor certificate's name (its CN and file names), or MaterialError."""
    if not _NAME.fullmatch(name):
        raise MaterialError(f"{name!r} is not a Visitor certificate name (1-64 of A-Z a-z 0-9 . _ -, "
                            "starting with a letter or digit)")
    return name


def issue_visitor_cert(ca_dir: Path, name: str, out_dir: Path, days: int = VISITOR_CERT_DAYS,
                       now: _dt.datetime | None = None) -> VisitorCert:
    """A client certificate with CN `name` signed by the Visitor CA in `ca_dir`, valid for
    `days` (1-MAX_VISITOR_CERT_DAYS), written as NAME.crt and NAME.key (0600) in `out_dir`;
    an existing pair there is replaced."""
    name = visitor_cert_name(name)
    view = View(Path(ca_dir))
    ca = _load_ca(view)
    if ca is None:
        raise MaterialError(f"{view.shown(VISITOR_CA_CERT)}: missing; run 'runewarp client visitor-ca init' first")
    ca_cert, ca_key = ca
    t = _now(now)
    key = _new_key()
    pub = key.public_key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(t - _BACKDATE)
        .not_valid_after(t + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir = Path(out_dir)
    try:
        ensure_dir(out_dir)
        atomic_write(out_dir / f"{name}.key", _key_pem(key), KEY_MODE)
        atomic_write(out_dir / f"{name}.crt", _cert_pem(cert), CERT_MODE)
    except OSError as e:
        raise MaterialError(f"{out_dir}: cannot write the Visitor certificate: {e.strerror or e}") from e
    return VisitorCert(out_dir / f"{name}.crt", out_dir / f"{name}.key", cert.not_valid_after_utc)
