"""Doctor checks of certificate and key files: present, private, current, for the right
name, from the right CA, and matching their key.

The rules come from material/ (loading, key modes) and certcheck.py (dates,
names, issuer); this module only turns their answers into check lines.  It
reads files and never writes one.
"""

import os
import pwd
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import certcheck
from ..errors import MaterialError
from ..material import key_permission_problem, load_certificate
from .checks import fail, ok, warn


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def key_files(paths):
    """One line per private key present: mode 0600 (no group or other access) and owned by
    the user running the doctor, who should be the user the daemon runs as."""
    me = os.geteuid()
    for path in map(Path, paths):
        try:
            st = os.stat(path)
        except OSError:
            continue  # a missing key is the certificate checks' to report
        check = f"key-permissions {path}"
        problem = key_permission_problem(path)
        if problem is not None:
            detail = problem.removeprefix(f"{path}: ").partition("; run ")[0]
            yield fail(check, detail, f"chmod 600 {shlex.quote(str(path))}")
        elif st.st_uid != me:
            yield fail(check, f"owned by {_user(st.st_uid)}, not {_user(me)} (the user running "
                              "this check)",
                       f"chown {_user(me)} {shlex.quote(str(path))}, or run the doctor as the "
                       "user the daemon runs as")
        else:
            yield ok(check, f"mode {st.st_mode & 0o777:04o}, owned by {_user(me)}")


@dataclass(frozen=True)
class Leaf:
    """A certificate to check and what to tell the operator about it.

    `hostname` must be named by the certificate and names the checks; `ca_path` is
    the CA the certificate must come from (None or missing: not checked); `load_pair`
    loads the pair as the runtime does, raising MaterialError when the key does not
    match; `renewer` is the role that renews it itself when `renewable`.
    """

    hostname: str
    cert_path: Path
    key_path: Path
    ca_path: Path | None
    load_pair: Callable[[], object]
    renewable: bool
    renewer: str
    init: str  # the fix when the files are missing
    renew: str  # the fix when Runewarp can issue a new one
    replace: str  # the fix when it cannot


def certificate(leaf: Leaf, now):
    """certificate-files, -key, -expiry, -hostname and -chain lines for `leaf`."""
    host = leaf.hostname
    missing = [str(p) for p in (leaf.cert_path, leaf.key_path) if not p.exists()]
    if missing:
        yield fail(f"certificate-files {host}", f"missing {', '.join(missing)}", leaf.init)
        return
    yield ok(f"certificate-files {host}", f"{leaf.cert_path} and {leaf.key_path} present")
    new = leaf.renew if leaf.renewable else leaf.replace
    try:
        leaf.load_pair()
        cert = load_certificate(leaf.cert_path)
    except MaterialError as exc:
        yield fail(f"certificate-key {host}", str(exc), new)
        return
    yield ok(f"certificate-key {host}", f"{leaf.key_path.name} matches {leaf.cert_path.name}")
    yield _expiry(leaf, cert, now, new)
    if certcheck.names_hostname(cert, host):
        yield ok(f"certificate-hostname {host}", f"{leaf.cert_path} names {host}")
    else:
        names = ", ".join(certcheck.dns_names(cert)) or "no DNS name"
        yield fail(f"certificate-hostname {host}", f"{leaf.cert_path} is for {names}, not {host}",
                   new)
    yield _chain(leaf, cert, new)


def _expiry(leaf, cert, now, new):
    check = f"certificate-expiry {leaf.hostname}"
    dates = f"{leaf.cert_path} {certcheck.describe(cert, now)}"
    if certcheck.validity(cert, now) != certcheck.VALID:
        return fail(check, dates, new)
    if leaf.renewable:
        return ok(check, f"{dates}; the {leaf.renewer} renews it itself")
    if certcheck.expiring(cert, now):
        return warn(check, dates, leaf.replace)
    return ok(check, dates)


def _chain(leaf, cert, new):
    check = f"certificate-chain {leaf.hostname}"
    if leaf.ca_path is None or not leaf.ca_path.exists():
        return ok(check, f"no CA file beside it{f' ({leaf.ca_path})' if leaf.ca_path else ''}; "
                         "the issuer is not checked")
    try:
        ca = load_certificate(leaf.ca_path)
    except MaterialError as exc:
        return fail(check, str(exc), new)
    if certcheck.issued_by(cert, ca):
        return ok(check, f"{leaf.cert_path.name} was issued by {leaf.ca_path}")
    return fail(check, f"{leaf.cert_path} was not issued by {leaf.ca_path}, the CA its peers "
                       "trust", new)
