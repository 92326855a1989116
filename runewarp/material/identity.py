"""The Client identity: a key and its self-signed certificate, named by the key's hash."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MaterialError
from .staging import abort, commit, refuse_if_staged, stage, staged_path, staged_view
from .store import View, update
from .x509 import (_cert_pem, _key_pem, _make_client_cert, _new_key, _now, _read, client_identity,
                   identity_of_certificate, read_cert, read_key, read_pair)

IDENTITY_MAX_AGE_DAYS = 60

CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
CLIENT_IDENTITY = "client-identity.txt"
_FILES = [CLIENT_KEY, CLIENT_CERT, CLIENT_IDENTITY]

_IDENTITY_INIT_HINT = "run 'runewarp client identity init'"


@dataclass(frozen=True)
class IdentityResult:
    """The client identity and whether this call wrote new material."""

    identity: str
    created: bool
    cert_path: Path | None = None
    key_path: Path | None = None
    not_after: _dt.datetime | None = None



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


def _issue(identity_dir: Path, key: ec.EllipticCurvePrivateKey, now: _dt.datetime) -> tuple[dict, IdentityResult]:
    """A certificate for `key` (and the key and identity text) as the files of one update."""
    cert = _make_client_cert(key, now)
    files = {CLIENT_KEY: _key_pem(key), CLIENT_CERT: _cert_pem(cert),
             CLIENT_IDENTITY: _identity_text(client_identity(key))}
    return files, _identity_result(identity_dir, cert, created=True)


def init_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """Create the client key and certificate, unless already there.

    client-identity.txt is derived data, so a missing or stale copy is
    rewritten rather than reported.
    """
    identity_dir = Path(identity_dir)

    def build(view):
        if view.exists(CLIENT_KEY) and view.exists(CLIENT_CERT):
            cert, key = read_pair(view, CLIENT_CERT, CLIENT_KEY)
            text = _identity_text(client_identity(key))
            stale = not view.exists(CLIENT_IDENTITY) or view.path(CLIENT_IDENTITY).read_bytes() != text
            return {CLIENT_IDENTITY: text} if stale else {}, _identity_result(identity_dir, cert, created=False)
        if any(view.exists(rel) for rel in _FILES):
            missing = [rel for rel in (CLIENT_KEY, CLIENT_CERT) if not view.exists(rel)]
            raise MaterialError(
                f"{identity_dir}: incomplete client identity, missing {', '.join(missing)}; "
                "run 'runewarp client identity renew' to reissue the certificate from an existing key, "
                "'runewarp client identity rotate' for a new identity, or remove the folder"
            )
        return _issue(identity_dir, _new_key(), _now(now))

    return update(identity_dir, build, _FILES)


def renew_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """New certificate for the existing key: the identity does not change.

    The key is written into the new version like every file, so it ends 0600 even
    if it was left looser."""
    identity_dir = Path(identity_dir)
    return update(identity_dir, lambda view: _issue(
        identity_dir, read_key(view, CLIENT_KEY, _IDENTITY_INIT_HINT), _now(now)), _FILES)


def rotate_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """New key and certificate: a new identity the server must be told about (a hard cut)."""
    identity_dir = Path(identity_dir)

    def build(view):
        refuse_if_staged(view)
        return _issue(identity_dir, _new_key(), _now(now))

    return update(identity_dir, build, _FILES)


def stage_identity(identity_dir: Path, now: _dt.datetime | None = None) -> IdentityResult:
    """The next key and certificate in the staged slot; the current identity stays in force.

    The running Client sees the slot (watch-config or reload) and dials with it too."""
    identity_dir = Path(identity_dir)

    def build(view):
        read_key(view, CLIENT_KEY, _IDENTITY_INIT_HINT)  # a current identity to rotate from
        files, result = _issue(identity_dir, _new_key(), _now(now))
        return files, {}, result

    result = stage(identity_dir, build, _FILES)
    return replace(result, cert_path=staged_path(identity_dir, CLIENT_CERT),
                   key_path=staged_path(identity_dir, CLIENT_KEY))


def staged_identity(identity_dir: Path) -> IdentityResult | None:
    """The staged identity and the stable names of its files, or None when nothing is staged."""
    view = staged_view(identity_dir)
    if view is None:
        return None
    cert, _ = read_pair(view, CLIENT_CERT, CLIENT_KEY)
    return replace(_identity_result(identity_dir, cert, created=False),
                   cert_path=staged_path(identity_dir, CLIENT_CERT),
                   key_path=staged_path(identity_dir, CLIENT_KEY))


def commit_identity(identity_dir: Path) -> str:
    """The staged identity becomes current; the previous key is removed.  The new identity."""
    staged = staged_identity(identity_dir)
    commit(identity_dir, keep_previous=False)  # MaterialError when nothing is staged
    return staged.identity


def abort_identity(identity_dir: Path) -> str:
    """Drop the staged identity; the current one stays.  The current identity."""
    abort(identity_dir)
    return show_identity(identity_dir)


def show_identity(identity_dir: Path) -> str:
    """The identity from client-identity.txt, verified against client.key.

    The text file is what operators copy to the server; a copy that disagrees
    with the key would authorise the wrong client, so it is never trusted alone.
    """
    view = View(identity_dir)
    stored = _read(view.path(CLIENT_IDENTITY), _IDENTITY_INIT_HINT, view.shown(CLIENT_IDENTITY))
    actual = client_identity(read_key(view, CLIENT_KEY, _IDENTITY_INIT_HINT))
    if stored.decode("ascii", "replace").strip() != actual:
        raise MaterialError(
            f"{view.shown(CLIENT_IDENTITY)} does not match {view.shown(CLIENT_KEY)}; {_IDENTITY_INIT_HINT}"
        )
    return actual


def load_identity_paths(identity_dir: Path) -> tuple[Path, Path]:
    """(certificate path, key path) for the TLS client, checked to be usable."""
    view = View(identity_dir)
    read_pair(view, CLIENT_CERT, CLIENT_KEY, _IDENTITY_INIT_HINT)
    return view.shown(CLIENT_CERT), view.shown(CLIENT_KEY)


def identity_needs_renewal(identity_dir: Path, now: _dt.datetime | None = None,
                           max_age_days: int = IDENTITY_MAX_AGE_DAYS) -> bool:
    """True once the certificate is older than `max_age_days` or has expired.

    Renewing at 60 of 90 days leaves a month of slack for a client that is
    only started now and then.
    """
    cert = read_cert(View(identity_dir), CLIENT_CERT, _IDENTITY_INIT_HINT)
    t = _now(now)
    return (t - cert.not_valid_before_utc > _dt.timedelta(days=max_age_days)
            or t >= cert.not_valid_after_utc)
