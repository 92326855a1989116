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

from ..errors import MaterialError
from .files import CERT_MODE, KEY_MODE, atomic_write, ensure_dir
from .authority import Authority, CAFolder
from .x509 import _cert_pem, _key_pem, _make_client_cert, _new_key, _now

VISITOR_CA_CERT = "visitor-ca.crt"
VISITOR_CA_KEY = "state/visitor-ca.key"
VISITOR_CA_CN = "Runewarp Visitor CA"
VISITOR_CERT_DAYS = 365
MAX_VISITOR_CERT_DAYS = 3650
VISITOR_CA = Authority(VISITOR_CA_CERT, VISITOR_CA_KEY, VISITOR_CA_CN, "Visitor CA",
                       "runewarp client visitor-ca init")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class VisitorCert:
    """One issued Visitor certificate and its key."""

    cert_path: Path
    key_path: Path
    not_after: _dt.datetime


def init_visitor_ca(ca_dir: Path, now: _dt.datetime | None = None) -> CAFolder:
    """Ensure the Visitor CA in `ca_dir`; an existing one is kept."""
    return VISITOR_CA.init(ca_dir, now)


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
    ca = VISITOR_CA.require(ca_dir)
    key = _new_key()
    cert = _make_client_cert(key, _now(now), name, ca, days)
    out_dir = Path(out_dir)
    try:
        ensure_dir(out_dir)
        atomic_write(out_dir / f"{name}.key", _key_pem(key), KEY_MODE)
        atomic_write(out_dir / f"{name}.crt", _cert_pem(cert), CERT_MODE)
    except OSError as e:
        raise MaterialError(f"{out_dir}: cannot write the Visitor certificate: {e.strerror or e}") from e
    return VisitorCert(out_dir / f"{name}.crt", out_dir / f"{name}.key", cert.not_valid_after_utc)
