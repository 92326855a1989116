"""The Client identity: a key and its self-signed certificate, named by the key's hash."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MaterialError
from .store import CERT_MODE, KEY_MODE, _commit, _make_private, _recover
from .x509 import (_cert_pem, _check_pair, _key_pem, _load_cert, _load_key, _make_client_cert,
                   _new_key, _now, _read, client_identity, identity_of_certificate)

IDENTITY_MAX_AGE_DAYS = 60

CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
CLIENT_IDENTITY = "client-identity.txt"

_IDENTITY_INIT_HINT = "run 'runewarp client identity init'"


@dataclass(frozen=True)
class IdentityResult:
    """The client identity and whether this call wrote new material."""

    identity: str
    created: bool
    cert_path: Path | None = None
    key_path: Path | None = None
    not_after: _dt.datetime | None = None



# --------------------------------------------------------------------------
# Client identity


def _identity_targets(identity_dir: Path) -> list[Path]:
    """Rename order: key, certificate, identity text."""
    return [identity_dir / CLIENT_KEY, identity_dir / CLIENT_CERT, identity_dir / CLIENT_IDENTITY]


def _identity_result(identity_dir: Path, cert: x509.Certificate, created: bool) -> IdentityResult:
    return IdentityResult(
        identity=identity_of_certificate(cert),
        created=created,
        cert_path=identity_dir / CLIENT_CERT,
        key_path=identity_dir / CLIENT_KEY,
        not_after=cert.not_valid_after_utc,
    )


def _identity_text(identity: str) -> bytes:
    return (identity + "\n").encode("ascii")


def init_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """Create the client key and certificate, unless already there.

    client-identity.txt is derived data, so a missing or stale copy is
    rewritten rather than reported.
    """
    identity_dir = Path(identity_dir)
    key_path, cert_path, txt_path = _identity_targets(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=True)
    if key_path.exists() and cert_path.exists():
        key = _load_key(key_path)
        cert = _load_cert(cert_path)
        _check_pair(cert, key, cert_path, key_path)
        text = _identity_text(client_identity(key))
        if not txt_path.exists() or txt_path.read_bytes() != text:
            _commit(identity_dir, [(txt_path, text, CERT_MODE)])
        return _identity_result(identity_dir, cert, created=False)
    present = [p.name for p in (key_path, cert_path, txt_path) if p.exists()]
    if present:
        missing = [p.name for p in (key_path, cert_path) if not p.exists()]
        raise MaterialError(
            f"{identity_dir}: incomplete client identity, missing {', '.join(missing)}; "
            "run 'runewarp client identity renew' to reissue the certificate from an existing key, "
            "'runewarp client identity rotate' for a new identity, or remove the folder"
        )
    return _write_identity(identity_dir, _new_key(), _now(now), write_key=True)


def _write_identity(identity_dir: Path, key: ec.EllipticCurvePrivateKey, now: _dt.datetime,
                    *, write_key: bool) -> IdentityResult:
    key_path, cert_path, txt_path = _identity_targets(identity_dir)
    cert = _make_client_cert(key, now)
    text = _identity_text(client_identity(key))
    files = []
    if write_key:
        files.append((key_path, _key_pem(key), KEY_MODE))
    files.append((cert_path, _cert_pem(cert), CERT_MODE))
    # Rewriting an unchanged identity file would be harmless but noisy for
    # anyone watching it (and tests expect it byte-identical across renew).
    if write_key or not txt_path.exists() or txt_path.read_bytes() != text:
        files.append((txt_path, text, CERT_MODE))
    _commit(identity_dir, files)
    return _identity_result(identity_dir, cert, created=True)


def renew_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """New certificate for the existing key: the identity does not change.

    The key is kept, not rewritten, so its mode is tightened here: otherwise a key
    once left 0666 would stay so across every renewal.
    """
    identity_dir = Path(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=True)
    key = _load_key(identity_dir / CLIENT_KEY, _IDENTITY_INIT_HINT)
    _make_private(identity_dir / CLIENT_KEY)
    return _write_identity(identity_dir, key, _now(now), write_key=False)


def rotate_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """New key and certificate: a new identity the server must be told about."""
    identity_dir = Path(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=True)
    return _write_identity(identity_dir, _new_key(), _now(now), write_key=True)


def show_identity(identity_dir: Path) -> str:
    """The identity from client-identity.txt, verified against client.key.

    The text file is what operators copy to the server; a copy that disagrees
    with the key would authorise the wrong client, so it is never trusted alone.
    """
    identity_dir = Path(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=False)
    txt_path = identity_dir / CLIENT_IDENTITY
    stored = _read(txt_path, _IDENTITY_INIT_HINT).decode("ascii", "replace").strip()
    actual = client_identity(_load_key(identity_dir / CLIENT_KEY, _IDENTITY_INIT_HINT))
    if stored != actual:
        raise MaterialError(
            f"{txt_path} does not match {identity_dir / CLIENT_KEY}; {_IDENTITY_INIT_HINT}"
        )
    return actual


def load_identity_paths(identity_dir: Path) -> tuple[Path, Path]:
    """(certificate path, key path) for the TLS client, checked to be usable."""
    identity_dir = Path(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=False)
    cert_path, key_path = identity_dir / CLIENT_CERT, identity_dir / CLIENT_KEY
    cert = _load_cert(cert_path, _IDENTITY_INIT_HINT)
    key = _load_key(key_path, _IDENTITY_INIT_HINT)
    _check_pair(cert, key, cert_path, key_path)
    return cert_path, key_path


def identity_needs_renewal(identity_dir: Path, now: _dt.datetime | None = None,
                           max_age_days: int = IDENTITY_MAX_AGE_DAYS) -> bool:
    """True once the certificate is older than `max_age_days` or has expired.

    Renewing at 60 of 90 days leaves a month of slack for a client that is
    only started now and then.
    """
    identity_dir = Path(identity_dir)
    _recover(identity_dir, _identity_targets(identity_dir), cleanup=False)
    cert = _load_cert(identity_dir / CLIENT_CERT, _IDENTITY_INIT_HINT)
    t = _now(now)
    return (t - cert.not_valid_before_utc > _dt.timedelta(days=max_age_days)
            or t >= cert.not_valid_after_utc)
