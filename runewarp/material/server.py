"""Server material (manual mode): the private Server CA and the Server certificate."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import MaterialError
from ..proto.hostname import normalize
from .staging import abort, commit, refuse_if_staged, stage, staged_path
from .store import View, update
from .x509 import (SERVER_CA_CN, _cert_pem, _check_issued, _key_pem, _make_ca, _make_leaf, _now, _san_names,
                   read_cert, read_pair)

SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SERVER_CA_CERT = "server-ca.crt"
SERVER_CA_KEY = "state/server-ca.key"
SERVER_CA_BUNDLE = "server-ca-bundle.crt"  # what Clients trust across a staged CA rotation
_FILES = [SERVER_CA_KEY, SERVER_CA_CERT, SERVER_KEY, SERVER_CERT]

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


def _load_server_ca(view: View):
    hint = f"{_SERVER_INIT_HINT}, or 'runewarp server cert rotate-ca' to make a new CA"
    return read_pair(view, SERVER_CA_CERT, SERVER_CA_KEY, hint)


def _issue(cert_dir: Path, hostname: str, now: _dt.datetime, ca) -> tuple[dict, ServerCertResult]:
    """A leaf (and a CA when `ca` is None) as the files of one update."""
    files = {}
    if ca is None:
        ca_cert, ca_key = _make_ca(SERVER_CA_CN, now)
        files |= {SERVER_CA_KEY: _key_pem(ca_key), SERVER_CA_CERT: _cert_pem(ca_cert)}
    else:
        ca_cert, ca_key = ca
    leaf, leaf_key = _make_leaf(hostname, ca_cert, ca_key, now)
    files |= {SERVER_KEY: _key_pem(leaf_key), SERVER_CERT: _cert_pem(leaf, ca_cert)}
    return files, _server_result(cert_dir, hostname, leaf, created=True)


def init_server_cert(cert_dir: Path, hostname: str, *, now: _dt.datetime | None = None) -> InitResult:
    """Create a private Server CA and a leaf for `hostname`, unless already there.

    Idempotent for the same hostname; refuses to guess when material is
    partial or belongs to another hostname.  HostnameError for an invalid hostname.
    """
    cert_dir = Path(cert_dir)
    host = normalize(hostname)

    def build(view):
        present = [rel for rel in _FILES if view.exists(rel)]
        if len(present) == len(_FILES):
            leaf, _ = read_pair(view, SERVER_CERT, SERVER_KEY)
            ca_cert, _ = _load_server_ca(view)
            _check_issued(leaf, ca_cert, view.shown(SERVER_CERT), view.shown(SERVER_CA_CERT))
            names = _san_names(leaf)
            if host not in names:
                raise MaterialError(
                    f"{cert_dir}: existing certificate is for {', '.join(names) or '(no name)'}, "
                    f"not {host}; renew it with the new hostname, or remove the folder"
                )
            return {}, _server_result(cert_dir, host, leaf, created=False)
        if present:
            missing = [rel for rel in _FILES if rel not in present]
            raise MaterialError(
                f"{cert_dir}: incomplete server material, missing {', '.join(missing)}; "
                f"remove the folder and {_SERVER_INIT_HINT}, or run 'runewarp server cert rotate-ca'"
            )
        return _issue(cert_dir, host, _now(now), ca=None)

    return update(cert_dir, build, _FILES)


def _existing_hostname(view: View, hostname: str | None) -> str:
    if hostname is not None:
        return normalize(hostname)
    if not view.exists(SERVER_CERT):
        raise MaterialError(f"{view.shown(SERVER_CERT)}: missing; give the hostname explicitly")
    names = _san_names(read_cert(view, SERVER_CERT))
    if not names:
        raise MaterialError(f"{view.shown(SERVER_CERT)}: no hostname in certificate; "
                            "give the hostname explicitly")
    return names[0]


def renew_server_cert(cert_dir: Path, *, hostname: str | None = None,
                      now: _dt.datetime | None = None) -> ServerCertResult:
    """New leaf (new key) from the same CA; the CA files stay byte-identical."""
    cert_dir = Path(cert_dir)

    def build(view):
        host = _existing_hostname(view, hostname)
        return _issue(cert_dir, host, _now(now), ca=_load_server_ca(view))

    return update(cert_dir, build, _FILES)


def rotate_server_ca(cert_dir: Path, hostname: str | None = None,
                     now: _dt.datetime | None = None) -> ServerCertResult:
    """New CA and leaf (a hard cut); also the way out of partial or lost material.  A
    bundle left by an earlier staged rotation is rewritten to the new CA alone."""
    cert_dir = Path(cert_dir)

    def build(view):
        refuse_if_staged(view)
        files, result = _issue(cert_dir, _existing_hostname(view, hostname), _now(now), ca=None)
        if view.exists(SERVER_CA_BUNDLE):
            files[SERVER_CA_BUNDLE] = files[SERVER_CA_CERT]
        return files, result

    return update(cert_dir, build, _FILES)


def stage_server_ca(cert_dir: Path, hostname: str | None = None,
                    now: _dt.datetime | None = None) -> tuple[ServerCertResult, Path]:
    """The next CA and a leaf it signed, staged; the Server keeps serving the current leaf.

    Also writes server-ca-bundle.crt (the current CA, then the next one) to the
    current set, for Clients to trust before the commit.  The staged result (its
    paths through ``next/``) and the bundle's path."""
    cert_dir = Path(cert_dir)

    def build(view):
        host = _existing_hostname(view, hostname)
        current_ca = read_cert(view, SERVER_CA_CERT, _SERVER_INIT_HINT)
        files, result = _issue(cert_dir, host, _now(now), ca=None)
        bundle = _cert_pem(current_ca) + files[SERVER_CA_CERT]
        files[SERVER_CA_BUNDLE] = bundle
        return files, {SERVER_CA_BUNDLE: bundle}, result

    result = stage(cert_dir, build, _FILES)
    staged = ServerCertResult(result.hostname, staged_path(cert_dir, SERVER_CERT),
                              staged_path(cert_dir, SERVER_KEY), staged_path(cert_dir, SERVER_CA_CERT),
                              result.not_after, result.serial)
    return staged, cert_dir / SERVER_CA_BUNDLE


def commit_server_ca(cert_dir: Path) -> None:
    """The staged CA and leaf become current: the next Tunnel handshake presents the leaf."""
    commit(Path(cert_dir))


def abort_server_ca(cert_dir: Path) -> None:
    """Drop the staged CA and leaf; the bundle goes back to the current CA alone."""
    cert_dir = Path(cert_dir)
    abort(cert_dir)
    update(cert_dir, lambda view: ({SERVER_CA_BUNDLE: view.path(SERVER_CA_CERT).read_bytes()}
                                   if view.exists(SERVER_CA_BUNDLE) else {}, None), _FILES)


def server_cert_renewable(cert_dir: Path) -> bool:
    """True when cert-dir holds the Server CA (``state/server-ca.key``) that issued
    ``server.crt``: the Server can then renew its certificate itself.  A certificate
    from another CA is never replaced, even when a Server CA sits beside it."""
    try:
        view = View(cert_dir)
        ca_cert, _ = _load_server_ca(view)
        _check_issued(read_cert(view, SERVER_CERT), ca_cert, view.shown(SERVER_CERT),
                      view.shown(SERVER_CA_CERT))
    except MaterialError:
        return False
    return True


def server_cert_paths(cert_dir: Path) -> tuple[Path, Path]:
    """Where the Server certificate chain and key live, unchecked (see load_server_cert_paths)."""
    view = View(cert_dir)
    return view.shown(SERVER_CERT), view.shown(SERVER_KEY)


def load_server_cert_paths(cert_dir: Path) -> tuple[Path, Path]:
    """(chain path, key path) for the TLS listener, checked to be usable.

    Stable names: open them through `store.pin` so both come from one version."""
    view = View(cert_dir)
    read_pair(view, SERVER_CERT, SERVER_KEY, _SERVER_INIT_HINT)
    return view.shown(SERVER_CERT), view.shown(SERVER_KEY)


def server_key_files(cert_dir: Path) -> list[Path]:
    """Private keys in a manual Server cert-dir: the leaf key and the Server CA key.

    With ACME the Server's key lives in certbot's folder, which certbot manages:
    do not call this for it.
    """
    cert_dir = Path(cert_dir)
    return [cert_dir / SERVER_KEY, cert_dir / SERVER_CA_KEY]
