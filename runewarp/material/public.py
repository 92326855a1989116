"""Public hostname material (terminate mode): the Public hostname CA and one leaf per
hostname.

A wildcard's leaf lives in the folder `_wildcard.<base>` (`*.example.com` in
`_wildcard.example.com`): no `*` for a shell to expand, and no clash with a
hostname's folder, since no hostname has an underscore."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import MaterialError
from ..proto.hostname import WILDCARD, normalize
from .identity import CLIENT_KEY
from .store import CURRENT, View, is_version, update
from .x509 import (PUBLIC_CA_CN, _cert_pem, _check_issued, _key_pem, _make_ca, _make_leaf, _now, _san_names, read_ca,
                   read_pair)

PUBLIC_CA_CERT = "public-ca.crt"
PUBLIC_CA_KEY = "state/public-ca.key"
PUBLIC_CERT = "public.crt"
PUBLIC_KEY = "public.key"
_STATE = "state"
WILDCARD_FOLDER = "_wildcard."


def public_cert_folder(host: str) -> str:
    """The folder of a normalized hostname or wildcard inside public-cert-dir."""
    return WILDCARD_FOLDER + host[len(WILDCARD):] if host.startswith(WILDCARD) else host


def _host_of_folder(name: str) -> str:
    return WILDCARD + name[len(WILDCARD_FOLDER):] if name.startswith(WILDCARD_FOLDER) else name


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


def _reserved(name: str) -> bool:
    """Folder names of the layout itself, which no hostname folder may take."""
    return name in (_STATE, CURRENT) or is_version(name)


def _hosts_present(view: View) -> list[str]:
    if not view.root.is_dir():
        return []
    return sorted(
        _host_of_folder(d.name) for d in view.root.iterdir()
        if d.is_dir() and not _reserved(d.name)
        and (view.exists(f"{d.name}/{PUBLIC_CERT}") or view.exists(f"{d.name}/{PUBLIC_KEY}"))
    )


def _flat_files(view: View) -> list[str]:
    """The material of a folder in the flat layout: CA key and certificate, each leaf's pair."""
    hosts = _hosts_present(view)
    return [PUBLIC_CA_KEY, PUBLIC_CA_CERT] + [f"{public_cert_folder(h)}/{n}" for h in hosts
                                              for n in (PUBLIC_KEY, PUBLIC_CERT)]


def _load_public_ca(view: View):
    """The public CA, None if absent."""
    return read_ca(view, PUBLIC_CA_CERT, PUBLIC_CA_KEY, "public CA", "rotate the public CA or remove the folder")


def _leaf_usable(view: View, host: str, ca_cert: x509.Certificate) -> bool:
    cert_rel, key_rel = f"{public_cert_folder(host)}/{PUBLIC_CERT}", f"{public_cert_folder(host)}/{PUBLIC_KEY}"
    if not (view.exists(cert_rel) and view.exists(key_rel)):
        return False
    try:
        leaf, _ = read_pair(view, cert_rel, key_rel)
        _check_issued(leaf, ca_cert, view.shown(cert_rel), view.shown(PUBLIC_CA_CERT))
    except MaterialError:
        return False
    return host in _san_names(leaf)


def _leaf(public_dir: Path, host: str, cert: x509.Certificate, created: bool) -> PublicLeaf:
    folder = public_dir / public_cert_folder(host)
    return PublicLeaf(host, folder / PUBLIC_CERT, folder / PUBLIC_KEY,
                      cert.not_valid_after_utc, cert.serial_number, created)


def _issue(public_dir: Path, hosts: list[str], ca, now: _dt.datetime, files: dict) -> list[PublicLeaf]:
    """A leaf per hostname under `ca`, added to `files`."""
    ca_cert, ca_key = ca
    leaves = []
    for h in hosts:
        leaf, key = _make_leaf(h, ca_cert, ca_key, now)
        folder = public_cert_folder(h)
        files |= {f"{folder}/{PUBLIC_KEY}": _key_pem(key), f"{folder}/{PUBLIC_CERT}": _cert_pem(leaf, ca_cert)}
        leaves.append(_leaf(public_dir, h, leaf, created=True))
    return leaves


def _new_ca(now: _dt.datetime, files: dict):
    ca = _make_ca(PUBLIC_CA_CN, now)
    files |= {PUBLIC_CA_KEY: _key_pem(ca[1]), PUBLIC_CA_CERT: _cert_pem(ca[0])}
    return ca


def _public_hostnames(hostnames) -> list[str]:
    """Normalized by the one hostname rule, wildcards included (HostnameError otherwise),
    layout names refused."""
    if isinstance(hostnames, str):
        hostnames = [hostnames]
    hosts = sorted({normalize(h, wildcard=True) for h in hostnames})
    for h in hosts:
        if _reserved(h):
            raise MaterialError(f"{h!r}: a Public hostname cannot be named like a folder of the "
                                "public-cert-dir layout (state, current, v<N>)")
    return hosts


def init_public_certs(public_dir: Path, hostnames, now: _dt.datetime | None = None) -> PublicCertsResult:
    """Ensure the public CA and a leaf per hostname; existing usable material is kept."""
    public_dir = Path(public_dir)
    hosts = _public_hostnames(hostnames)

    def build(view):
        t = _now(now)
        files: dict = {}
        ca = _load_public_ca(view)
        ca_created = ca is None
        if ca is None:
            ca = _new_ca(t, files)
        to_issue = [h for h in hosts if ca_created or not _leaf_usable(view, h, ca[0])]
        issued = {leaf.hostname: leaf for leaf in _issue(public_dir, to_issue, ca, t, files)}
        leaves = tuple(issued.get(h) or _leaf(public_dir, h, read_pair(
            view, f"{public_cert_folder(h)}/{PUBLIC_CERT}", f"{public_cert_folder(h)}/{PUBLIC_KEY}")[0], created=False)
            for h in hosts)
        return files, PublicCertsResult(public_dir / PUBLIC_CA_CERT, ca_created, leaves)

    return update(public_dir, build, _flat_files)


def renew_public_certs(public_dir: Path, hostnames=None, now: _dt.datetime | None = None) -> PublicCertsResult:
    """New leaves (new keys) from the same CA; None means every hostname present."""
    public_dir = Path(public_dir)
    given = None if hostnames is None else _public_hostnames(hostnames)

    def build(view):
        ca = _load_public_ca(view)
        if ca is None:
            raise MaterialError(f"{view.shown(PUBLIC_CA_CERT)}: missing; create the public material first")
        files: dict = {}
        leaves = _issue(public_dir, _hosts_present(view) if given is None else given, ca, _now(now), files)
        return files, PublicCertsResult(public_dir / PUBLIC_CA_CERT, False, tuple(leaves))

    return update(public_dir, build, _flat_files)


def rotate_public_ca(public_dir: Path, now: _dt.datetime | None = None) -> PublicCertsResult:
    """New public CA, and every present leaf reissued under it in the same update."""
    public_dir = Path(public_dir)

    def build(view):
        t = _now(now)
        files: dict = {}
        ca = _new_ca(t, files)
        leaves = _issue(public_dir, _hosts_present(view), ca, t, files)
        return files, PublicCertsResult(public_dir / PUBLIC_CA_CERT, True, tuple(leaves))

    return update(public_dir, build, _flat_files)


def public_cert_renewable(public_dir: Path, hostname: str) -> bool:
    """True when the hostname's certificate was issued by the Public hostname CA whose
    key is in ``public-cert-dir/state``: the Client can then renew it itself."""
    try:
        view = View(public_dir)
        ca = _load_public_ca(view)
        return ca is not None and _leaf_usable(view, normalize(hostname, wildcard=True), ca[0])
    except MaterialError:
        return False


def load_public_cert_paths(public_dir: Path, hostname: str) -> tuple[Path, Path]:
    """(chain path, key path) for terminating TLS on `hostname`.

    Stable names: open them through `store.pin` so both come from one version."""
    folder = public_cert_folder(normalize(hostname, wildcard=True))
    view = View(public_dir)
    cert_rel, key_rel = f"{folder}/{PUBLIC_CERT}", f"{folder}/{PUBLIC_KEY}"
    read_pair(view, cert_rel, key_rel)
    return view.shown(cert_rel), view.shown(key_rel)


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
        hosts = _hosts_present(View(public_dir)) if hostnames is None else _public_hostnames(hostnames)
        files.append(public_dir / PUBLIC_CA_KEY)
        files += [public_dir / public_cert_folder(h) / PUBLIC_KEY for h in hosts]
    return files
