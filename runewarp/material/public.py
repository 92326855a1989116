"""Public hostname material (terminate mode): the Public hostname CA and one leaf per
hostname."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MaterialError
from .identity import CLIENT_KEY
from .store import CERT_MODE, KEY_MODE, _commit, _make_private, _recover, ensure_dir
from .x509 import (PUBLIC_CA_CN, _cert_pem, _check_issued, _check_pair, _key_pem, _load_cert,
                   _load_key, _make_ca, _make_leaf, _normalize_hostname, _now, _san_names)

PUBLIC_CA_CERT = "public-ca.crt"
PUBLIC_CA_KEY = "state/public-ca.key"
PUBLIC_CERT = "public.crt"
PUBLIC_KEY = "public.key"


@dataclass(frozen=True)
class PublicLeaf:
    """One public-hostname leaf certificate."""

    hostname: str
    cert_path: Path
    key_path: Path
    not_after: _dt.datetime
    serial: int
    created: bool


@dataclass(frozen=True)
class PublicCertsResult:
    """Public CA plus the leaves an operation covered."""

    ca_cert_path: Path
    ca_created: bool
    leaves: tuple[PublicLeaf, ...]


# --------------------------------------------------------------------------
# Public hostname material (terminate mode)


def _public_hosts_present(public_dir: Path) -> list[str]:
    if not public_dir.is_dir():
        return []
    return sorted(
        d.name for d in public_dir.iterdir()
        if d.is_dir() and d.name != "state"
        and ((d / PUBLIC_CERT).exists() or (d / PUBLIC_KEY).exists())
    )


def _public_targets(public_dir: Path, hosts: list[str]) -> list[Path]:
    """Rename order: CA key, CA cert, then each leaf's key before its chain."""
    targets = [public_dir / PUBLIC_CA_KEY, public_dir / PUBLIC_CA_CERT]
    for h in hosts:
        targets += [public_dir / h / PUBLIC_KEY, public_dir / h / PUBLIC_CERT]
    return targets


def _public_recover(public_dir: Path, hosts: list[str]) -> None:
    every = sorted(set(hosts) | set(_public_hosts_present(public_dir)))
    _recover(public_dir, _public_targets(public_dir, every), cleanup=True)


def _load_public_ca(public_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The public CA, None if absent; half a CA is an error, not a reason to replace it."""
    ca_path, key_path = public_dir / PUBLIC_CA_CERT, public_dir / PUBLIC_CA_KEY
    if not ca_path.exists() and not key_path.exists():
        return None
    if not (ca_path.exists() and key_path.exists()):
        missing = ca_path if not ca_path.exists() else key_path
        raise MaterialError(
            f"{public_dir}: incomplete public CA, missing {missing.relative_to(public_dir)}; "
            "rotate the public CA or remove the folder"
        )
    ca_cert, ca_key = _load_cert(ca_path), _load_key(key_path)
    _check_pair(ca_cert, ca_key, ca_path, key_path)
    return ca_cert, ca_key


def _leaf_usable(public_dir: Path, host: str, ca_cert: x509.Certificate) -> bool:
    cert_path, key_path = public_dir / host / PUBLIC_CERT, public_dir / host / PUBLIC_KEY
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        leaf = _load_cert(cert_path)
        _check_pair(leaf, _load_key(key_path), cert_path, key_path)
        _check_issued(leaf, ca_cert, cert_path, public_dir / PUBLIC_CA_CERT)
    except MaterialError:
        return False
    return host in _san_names(leaf)


def _issue_public(public_dir: Path, hosts: list[str], ca, now: _dt.datetime,
                  files: list) -> list[PublicLeaf]:
    ca_cert, ca_key = ca
    leaves = []
    for h in hosts:
        leaf, key = _make_leaf(h, ca_cert, ca_key, now)
        ensure_dir(public_dir / h)
        files += [(public_dir / h / PUBLIC_KEY, _key_pem(key), KEY_MODE),
                  (public_dir / h / PUBLIC_CERT, _cert_pem(leaf, ca_cert), CERT_MODE)]
        leaves.append(PublicLeaf(h, public_dir / h / PUBLIC_CERT, public_dir / h / PUBLIC_KEY,
                                 leaf.not_valid_after_utc, leaf.serial_number, created=True))
    return leaves


def _existing_leaf(public_dir: Path, host: str) -> PublicLeaf:
    cert_path = public_dir / host / PUBLIC_CERT
    leaf = _load_cert(cert_path)
    return PublicLeaf(host, cert_path, public_dir / host / PUBLIC_KEY,
                      leaf.not_valid_after_utc, leaf.serial_number, created=False)


def _public_hostnames(hostnames) -> list[str]:
    if isinstance(hostnames, str):
        hostnames = [hostnames]
    return sorted({_normalize_hostname(h, allow_ip=False) for h in hostnames})


def init_public_certs(public_dir: Path, hostnames, now: _dt.datetime | None = None) -> PublicCertsResult:
    """Ensure the public CA and a leaf per hostname; existing usable material is kept."""
    public_dir = Path(public_dir)
    hosts = _public_hostnames(hostnames)
    _public_recover(public_dir, hosts)
    t = _now(now)
    files: list = []
    ca = _load_public_ca(public_dir)
    ca_created = ca is None
    if ca is None:
        ca = _make_ca(PUBLIC_CA_CN, t)
        files += [(public_dir / PUBLIC_CA_KEY, _key_pem(ca[1]), KEY_MODE),
                  (public_dir / PUBLIC_CA_CERT, _cert_pem(ca[0]), CERT_MODE)]
    to_issue = [h for h in hosts if ca_created or not _leaf_usable(public_dir, h, ca[0])]
    issued = {leaf.hostname: leaf for leaf in _issue_public(public_dir, to_issue, ca, t, files)}
    if files:
        ensure_dir(public_dir / "state")
        _commit(public_dir, files)
    leaves = tuple(issued.get(h) or _existing_leaf(public_dir, h) for h in hosts)
    return PublicCertsResult(public_dir / PUBLIC_CA_CERT, ca_created, leaves)


def renew_public_certs(public_dir: Path, hostnames=None, now: _dt.datetime | None = None) -> PublicCertsResult:
    """New leaves (new keys) from the same CA; None means every hostname present."""
    public_dir = Path(public_dir)
    if hostnames is None:
        hosts = _public_hosts_present(public_dir)
    else:
        hosts = _public_hostnames(hostnames)
    _public_recover(public_dir, hosts)
    ca = _load_public_ca(public_dir)
    if ca is None:
        raise MaterialError(f"{public_dir / PUBLIC_CA_CERT}: missing; create the public material first")
    _make_private(public_dir / PUBLIC_CA_KEY)  # kept, not rewritten: see renew_identity
    files: list = []
    leaves = _issue_public(public_dir, hosts, ca, _now(now), files)
    if files:
        _commit(public_dir, files)
    return PublicCertsResult(public_dir / PUBLIC_CA_CERT, False, tuple(leaves))


def rotate_public_ca(public_dir: Path, now: _dt.datetime | None = None) -> PublicCertsResult:
    """New public CA, and every present leaf reissued under it in the same commit."""
    public_dir = Path(public_dir)
    hosts = _public_hosts_present(public_dir)
    _public_recover(public_dir, hosts)
    t = _now(now)
    ca = _make_ca(PUBLIC_CA_CN, t)
    files: list = [(public_dir / PUBLIC_CA_KEY, _key_pem(ca[1]), KEY_MODE),
                   (public_dir / PUBLIC_CA_CERT, _cert_pem(ca[0]), CERT_MODE)]
    leaves = _issue_public(public_dir, hosts, ca, t, files)
    ensure_dir(public_dir / "state")
    _commit(public_dir, files)
    return PublicCertsResult(public_dir / PUBLIC_CA_CERT, True, tuple(leaves))


def public_cert_renewable(public_dir: Path, hostname: str) -> bool:
    """True when the hostname's certificate was issued by the Public hostname CA whose
    key is in ``public-cert-dir/state``: the Client can then renew it itself."""
    public_dir = Path(public_dir)
    try:
        ca = _load_public_ca(public_dir)
        return ca is not None and _leaf_usable(public_dir, _normalize_hostname(
            hostname, allow_ip=False), ca[0])
    except MaterialError:
        return False


def load_public_cert_paths(public_dir: Path, hostname: str) -> tuple[Path, Path]:
    """(chain path, key path) for terminating TLS on `hostname`."""
    public_dir = Path(public_dir)
    host = _normalize_hostname(hostname, allow_ip=False)
    _recover(public_dir, _public_targets(public_dir, [host]), cleanup=False)
    cert_path, key_path = public_dir / host / PUBLIC_CERT, public_dir / host / PUBLIC_KEY
    _check_pair(_load_cert(cert_path), _load_key(key_path), cert_path, key_path)
    return cert_path, key_path



def client_key_files(identity_dir: Path, public_cert_dir: Path | None = None,
                     hostnames=None) -> list[Path]:
    """Private keys a Client may load: client.key, then (terminate mode with a manual
    public-cert-dir) the public CA key and each hostname's public.key.

    `hostnames` limits the public keys to those hostnames; None means every
    hostname folder present.  Pass public_cert_dir=None when certificates come from
    ACME (certbot manages those keys).
    """
    files = [Path(identity_dir) / CLIENT_KEY]
    if public_cert_dir is not None:
        public_dir = Path(public_cert_dir)
        if hostnames is None:
            hosts = _public_hosts_present(public_dir)
        else:
            hosts = _public_hostnames(hostnames)
        files.append(public_dir / PUBLIC_CA_KEY)
        files += [public_dir / h / PUBLIC_KEY for h in hosts]
    return files
