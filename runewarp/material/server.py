"""Server material (manual mode): the private Server CA and the Server certificate."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MaterialError
from .store import CERT_MODE, KEY_MODE, _commit, _make_private, _recover, ensure_dir
from .x509 import (SERVER_CA_CN, _cert_pem, _check_issued, _check_pair, _key_pem, _load_cert,
                   _load_key, _make_ca, _make_leaf, _normalize_hostname, _now, _san_names)

SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SERVER_CA_CERT = "server-ca.crt"
SERVER_CA_KEY = "state/server-ca.key"

_SERVER_INIT_HINT = "run 'runewarp server cert init'"


@dataclass(frozen=True)
class ServerCertResult:
    """What a server-material operation left on disk."""

    hostname: str
    cert_path: Path
    key_path: Path
    ca_cert_path: Path
    not_after: _dt.datetime
    serial: int
    created: bool = True


InitResult = ServerCertResult
"""`init_server_cert` result; ``created`` is False when material already existed."""



# --------------------------------------------------------------------------
# Server material (manual mode)


def _server_targets(cert_dir: Path) -> list[Path]:
    """Rename order: CA key, CA cert, leaf key, leaf chain."""
    return [cert_dir / SERVER_CA_KEY, cert_dir / SERVER_CA_CERT,
            cert_dir / SERVER_KEY, cert_dir / SERVER_CERT]


def _server_result(cert_dir: Path, hostname: str, leaf: x509.Certificate, created: bool) -> ServerCertResult:
    return ServerCertResult(
        hostname=hostname,
        cert_path=cert_dir / SERVER_CERT,
        key_path=cert_dir / SERVER_KEY,
        ca_cert_path=cert_dir / SERVER_CA_CERT,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        created=created,
    )


def _load_server_ca(cert_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    hint = f"{_SERVER_INIT_HINT}, or 'runewarp server cert rotate-ca' to make a new CA"
    ca_path, key_path = cert_dir / SERVER_CA_CERT, cert_dir / SERVER_CA_KEY
    ca_cert = _load_cert(ca_path, hint)
    ca_key = _load_key(key_path, hint)
    _check_pair(ca_cert, ca_key, ca_path, key_path)
    return ca_cert, ca_key


def _write_server(cert_dir: Path, hostname: str, now: _dt.datetime,
                  ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None) -> x509.Certificate:
    """Issue a leaf (and a CA when `ca` is None) and commit it in one step."""
    files = []
    if ca is None:
        ca_cert, ca_key = _make_ca(SERVER_CA_CN, now)
        files += [(cert_dir / SERVER_CA_KEY, _key_pem(ca_key), KEY_MODE),
                  (cert_dir / SERVER_CA_CERT, _cert_pem(ca_cert), CERT_MODE)]
    else:
        ca_cert, ca_key = ca
    leaf, leaf_key = _make_leaf(hostname, ca_cert, ca_key, now)
    files += [(cert_dir / SERVER_KEY, _key_pem(leaf_key), KEY_MODE),
              (cert_dir / SERVER_CERT, _cert_pem(leaf, ca_cert), CERT_MODE)]
    ensure_dir(cert_dir / "state")
    _commit(cert_dir, files)
    return leaf


def init_server_cert(cert_dir: Path, hostname: str, *, now: _dt.datetime | None = None) -> InitResult:
    """Create a private Server CA and a leaf for `hostname`, unless already there.

    Idempotent for the same hostname; refuses to guess when material is
    partial or belongs to another hostname.
    """
    cert_dir = Path(cert_dir)
    host = _normalize_hostname(hostname)
    targets = _server_targets(cert_dir)
    _recover(cert_dir, targets, cleanup=True)
    present = [t for t in targets if t.exists()]
    if len(present) == len(targets):
        leaf = _load_cert(cert_dir / SERVER_CERT)
        ca_cert, _ = _load_server_ca(cert_dir)
        _check_pair(leaf, _load_key(cert_dir / SERVER_KEY), cert_dir / SERVER_CERT, cert_dir / SERVER_KEY)
        _check_issued(leaf, ca_cert, cert_dir / SERVER_CERT, cert_dir / SERVER_CA_CERT)
        names = _san_names(leaf)
        if host not in names:
            raise MaterialError(
                f"{cert_dir}: existing certificate is for {', '.join(names) or '(no name)'}, "
                f"not {host}; renew it with the new hostname, or remove the folder"
            )
        return _server_result(cert_dir, host, leaf, created=False)
    if present:
        missing = [str(t.relative_to(cert_dir)) for t in targets if not t.exists()]
        raise MaterialError(
            f"{cert_dir}: incomplete server material, missing {', '.join(missing)}; "
            f"remove the folder and {_SERVER_INIT_HINT}, or run 'runewarp server cert rotate-ca'"
        )
    leaf = _write_server(cert_dir, host, _now(now), ca=None)
    return _server_result(cert_dir, host, leaf, created=True)


def _existing_hostname(cert_dir: Path, hostname: str | None) -> str:
    if hostname is not None:
        return _normalize_hostname(hostname)
    path = cert_dir / SERVER_CERT
    if not path.exists():
        raise MaterialError(f"{path}: missing; give the hostname explicitly")
    names = _san_names(_load_cert(path))
    if not names:
        raise MaterialError(f"{path}: no hostname in certificate; give the hostname explicitly")
    return names[0]


def renew_server_cert(cert_dir: Path, *, hostname: str | None = None,
                      now: _dt.datetime | None = None) -> ServerCertResult:
    """New leaf (new key) from the same CA; the CA files stay byte-identical."""
    cert_dir = Path(cert_dir)
    _recover(cert_dir, _server_targets(cert_dir), cleanup=True)
    host = _existing_hostname(cert_dir, hostname)
    ca = _load_server_ca(cert_dir)
    _make_private(cert_dir / SERVER_CA_KEY)  # kept, not rewritten: see renew_identity
    leaf = _write_server(cert_dir, host, _now(now), ca=ca)
    return _server_result(cert_dir, host, leaf, created=True)


def rotate_server_ca(cert_dir: Path, hostname: str | None = None,
                     now: _dt.datetime | None = None) -> ServerCertResult:
    """New CA and leaf; also the way out of partial or lost material."""
    cert_dir = Path(cert_dir)
    _recover(cert_dir, _server_targets(cert_dir), cleanup=True)
    host = _existing_hostname(cert_dir, hostname)
    leaf = _write_server(cert_dir, host, _now(now), ca=None)
    return _server_result(cert_dir, host, leaf, created=True)



def server_cert_renewable(cert_dir: Path) -> bool:
    """True when cert-dir holds the Server CA (``state/server-ca.key``) that issued
    ``server.crt``: the Server can then renew its certificate itself.  A certificate
    from another CA is never replaced, even when a Server CA sits beside it."""
    cert_dir = Path(cert_dir)
    try:
        ca_cert, _ = _load_server_ca(cert_dir)
        _check_issued(_load_cert(cert_dir / SERVER_CERT), ca_cert, cert_dir / SERVER_CERT,
                      cert_dir / SERVER_CA_CERT)
    except MaterialError:
        return False
    return True


def server_cert_paths(cert_dir: Path) -> tuple[Path, Path]:
    """Where the Server certificate chain and key live, unchecked (see load_server_cert_paths)."""
    cert_dir = Path(cert_dir)
    return cert_dir / SERVER_CERT, cert_dir / SERVER_KEY


def load_server_cert_paths(cert_dir: Path) -> tuple[Path, Path]:
    """(chain path, key path) for the TLS listener, checked to be usable."""
    cert_dir = Path(cert_dir)
    _recover(cert_dir, _server_targets(cert_dir), cleanup=False)
    cert_path, key_path = cert_dir / SERVER_CERT, cert_dir / SERVER_KEY
    leaf = _load_cert(cert_path, _SERVER_INIT_HINT)
    key = _load_key(key_path, _SERVER_INIT_HINT)
    _check_pair(leaf, key, cert_path, key_path)
    return cert_path, key_path



def server_key_files(cert_dir: Path) -> list[Path]:
    """Private keys in a manual Server cert-dir: the leaf key and the Server CA key.

    With ACME the Server's key lives in certbot's folder, which certbot manages:
    do not call this for it.
    """
    cert_dir = Path(cert_dir)
    return [cert_dir / SERVER_KEY, cert_dir / SERVER_CA_KEY]
