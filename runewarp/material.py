"""Certificate and key material: creation, renewal, rotation and loading.

Everything is ECDSA P-256 in unencrypted PKCS#8 / PEM, made with
`cryptography` only, and touches nothing but the folders it is given.

Crash safety: an update never overwrites a live file in place. Each update is
one *commit*:

1. every new file is written next to its target as ``<name>.new`` (each write
   atomic and fsynced); the live material is untouched, so a crash here leaves
   the previous material in use and the stray ``.new`` files are discarded by
   the next update;
2. a journal (``.pending-commit``) listing the targets is written atomically;
   from this point the update is decided;
3. the ``.new`` files are renamed over their targets, keys before the
   certificates that depend on them;
4. the journal is removed.

A crash during step 3 leaves a journal behind; every function here first
finishes such an interrupted commit (roll-forward), so callers always see a
consistent set: all old or all new, never a key paired with the wrong
certificate.

Commits and recoveries of one folder hold an exclusive ``flock`` on the folder
itself, because two processes may update it at once: a running Server or Client
renews its own certificates while an operator may run a material command.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import ipaddress
import json
import os
import time
import re
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import MaterialError

CA_DAYS = 3650
LEAF_DAYS = 90
IDENTITY_MAX_AGE_DAYS = 60
# Peers with slightly slow clocks must not see a certificate as not-yet-valid.
_BACKDATE = _dt.timedelta(minutes=5)

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

SERVER_CA_CN = "Runewarp Server CA"
PUBLIC_CA_CN = "Runewarp Public CA"
CLIENT_CN = "runewarp-client"

SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
SERVER_CA_CERT = "server-ca.crt"
SERVER_CA_KEY = "state/server-ca.key"

CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
CLIENT_IDENTITY = "client-identity.txt"

PUBLIC_CA_CERT = "public-ca.crt"
PUBLIC_CA_KEY = "state/public-ca.key"
PUBLIC_CERT = "public.crt"
PUBLIC_KEY = "public.key"

_JOURNAL = ".pending-commit"
_STAGED_SUFFIX = ".new"

_SERVER_INIT_HINT = "run 'runewarp server cert init'"
_IDENTITY_INIT_HINT = "run 'runewarp client identity init'"

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")


# --------------------------------------------------------------------------
# Result objects


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


@dataclass(frozen=True)
class IdentityResult:
    """The client identity and whether this call wrote new material."""

    identity: str
    created: bool
    cert_path: Path | None = None
    key_path: Path | None = None
    not_after: _dt.datetime | None = None


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
# Durable file primitives


def _fsync_dir(path: Path) -> None:
    """Persist directory entries (renames, new files) across power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and missing parents with `mode` exactly (umask ignored).

    Existing folders are left as they are: they belong to the user.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)
        _fsync_dir(d.parent)
    if not path.is_dir():
        raise MaterialError(f"{path}: exists but is not a folder")


def atomic_write(path: Path, data: bytes, mode: int = CERT_MODE) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    The temporary file is created 0600 (mkstemp), so key bytes are never
    exposed, and gets `mode` only once it is complete.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _staged(path: Path) -> Path:
    return path.with_name(path.name + _STAGED_SUFFIX)


def _roll_forward(root: Path) -> bool:
    """Finish a commit whose journal is on disk; True if there was one."""
    journal = root / _JOURNAL
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return False
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError("not a list of paths")
    except ValueError as e:
        raise MaterialError(f"{journal}: unreadable commit journal ({e}); remove it") from e
    resolved_root = root.resolve()
    for rel in entries:
        target = root / rel
        if resolved_root not in target.resolve().parents:
            raise MaterialError(f"{journal}: path {rel!r} escapes {root}")
        staged = _staged(target)
        if staged.exists():
            os.replace(staged, target)
            _fsync_dir(target.parent)
    journal.unlink(missing_ok=True)
    _fsync_dir(root)
    return True


def _discard_strays(targets: list[Path]) -> None:
    """Remove leftovers of an update that crashed before its journal was written."""
    for target in targets:
        parent = target.parent
        if not parent.is_dir():
            continue
        leftovers = [_staged(target), *parent.glob(f".{target.name}.*.tmp"),
                     *parent.glob(f".{_staged(target).name}.*.tmp")]
        for p in leftovers:
            try:
                p.unlink()
            except FileNotFoundError:
                pass


LOCK_WAIT = 30.0
"""Seconds to wait for another process's update of the same folder (it takes milliseconds)."""


def _wait_for_lock(fd: int, root: Path) -> None:
    """Poll a non-blocking flock: a blocking one would stall the daemon's whole event
    loop (time.sleep is cooperative under gevent), and a lost holder fails in bounded time."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise MaterialError(f"{root}: still locked by another update after "
                                    f"{LOCK_WAIT:g} s") from None
            time.sleep(0.01)


@contextlib.contextmanager
def _folder_lock(root: Path):
    """Hold an exclusive flock on the folder `root` (not a file in it, so nothing is
    created and read-only callers can take it too).  Never nested: a second open of
    the same folder would wait for the first, even in the same process."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None  # the operation itself reports what is wrong with the folder
    try:
        if fd is not None:
            _wait_for_lock(fd, root)
        yield
    finally:
        if fd is not None:
            # Unlocked explicitly: gevent's os.close defers closing a folder's fd to
            # the next loop iteration, and the lock would live until then.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _recover(root: Path, targets: list[Path], *, cleanup: bool) -> None:
    """Bring `root` to a consistent state before reading or updating it.

    Read-only callers pass cleanup=False: stray staged files are harmless and
    they may lack write access; an unfinished commit, however, must be
    completed or the material is inconsistent.
    """
    if not root.is_dir():
        return
    try:
        with _folder_lock(root):
            _roll_forward(root)
            if cleanup:
                _discard_strays(targets)
    except OSError as e:
        raise MaterialError(f"{root}: cannot complete an interrupted update: {e}") from e


def _commit(root: Path, files: list[tuple[Path, bytes, int]]) -> None:
    """Install `files` (path, data, mode) all-or-nothing; order = rename order."""
    try:
        ensure_dir(root)
    except OSError as e:
        raise MaterialError(f"{root}: cannot write material: {e}") from e
    decided = False
    with _folder_lock(root):
        try:
            for path, data, mode in files:
                atomic_write(_staged(path), data, mode)
            rels = [str(path.relative_to(root)) for path, _, _ in files]
            atomic_write(root / _JOURNAL, json.dumps(rels).encode(), KEY_MODE)
            decided = True
            _roll_forward(root)
        except OSError as e:
            if not decided:
                try:
                    _discard_strays([path for path, _, _ in files])
                except OSError:
                    pass
            raise MaterialError(f"{root}: cannot write material: {e}") from e


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
    return hashlib.sha256(_spki_der(public_key)).hexdigest()


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


def _read(path: Path, hint: str | None = None) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MaterialError(f"{path}: missing" + (f"; {hint}" if hint else "")) from None
    except OSError as e:
        raise MaterialError(f"{path}: cannot read: {e.strerror or e}") from e


def _load_certs(path: Path, hint: str | None = None) -> list[x509.Certificate]:
    data = _read(path, hint)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise MaterialError(f"{path}: not a valid PEM certificate: {e}") from e
    return certs


def _load_cert(path: Path, hint: str | None = None) -> x509.Certificate:
    """First certificate of a PEM file (the leaf of a chain file)."""
    return _load_certs(path, hint)[0]


def _load_key(path: Path, hint: str | None = None) -> ec.EllipticCurvePrivateKey:
    data = _read(path, hint)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise MaterialError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise MaterialError(f"{path}: expected an ECDSA key")
    return key


def _check_pair(cert: x509.Certificate, key, cert_path: Path, key_path: Path) -> None:
    if _spki_der(cert.public_key()) != _spki_der(key.public_key()):
        raise MaterialError(f"{key_path} does not match {cert_path}")


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


def _normalize_hostname(hostname: str, *, allow_ip: bool = True) -> str:
    """Canonical form for comparison and SANs: lowercase A-label, no final dot."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise MaterialError("hostname is empty")
    h = hostname.strip().rstrip(".").lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        ip = None
    if ip is not None:
        if not allow_ip:
            raise MaterialError(f"{hostname!r}: an IP address cannot be a public hostname")
        return str(ip)
    try:
        h = h.encode("idna").decode("ascii") if not h.isascii() else h
    except UnicodeError as e:
        raise MaterialError(f"{hostname!r}: invalid hostname: {e}") from e
    if len(h) > 253 or not _HOSTNAME_RE.match(h):
        raise MaterialError(f"{hostname!r}: invalid hostname")
    return h


def _general_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


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
        .add_extension(x509.SubjectAlternativeName([_general_name(hostname)]), critical=False)
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


def _make_client_cert(key: ec.EllipticCurvePrivateKey, now: _dt.datetime) -> x509.Certificate:
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(CLIENT_CN))
        .issuer_name(_name(CLIENT_CN))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_digital_signature_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


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


def file_stamp(*paths) -> tuple:
    """What changes whenever one of `paths` is rewritten (mtime and size of each), so a
    runtime reloads material only then; OSError when one is missing."""
    return tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, paths))


def load_certificate(cert_path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the leaf of a chain file)."""
    return _load_cert(Path(cert_path))


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


# --------------------------------------------------------------------------
# Key file permissions
#
# Every key this module writes goes through atomic_write, which creates a new
# 0600 file (mkstemp) and renames it over the old one, so neither the umask nor
# the old file's mode matter.  Keys it keeps (renew_identity) or that operators
# copy in by hand can still be loose; these functions find them so the runtime
# can warn, or refuse to start under strict permissions.


def _make_private(path: Path) -> None:
    """Best effort chmod 600 of a key that is kept rather than rewritten.

    A failure (a key owned by someone else, a read-only mount) is not an error
    here: the runtime's permission check reports the loose key at start.
    """
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, KEY_MODE)
    except OSError:
        pass


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


def server_key_files(cert_dir: Path) -> list[Path]:
    """Private keys in a manual Server cert-dir: the leaf key and the Server CA key.

    With ACME the Server's key lives in certbot's folder, which certbot manages:
    do not call this for it.
    """
    cert_dir = Path(cert_dir)
    return [cert_dir / SERVER_KEY, cert_dir / SERVER_CA_KEY]


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


# --------------------------------------------------------------------------
# Test and demo helper


def make_self_signed(hostname: str, dir: Path, *, now: _dt.datetime | None = None) -> tuple[Path, Path]:
    """Self-signed server certificate for a TLS backend: ``<hostname>.crt/.key``.

    Not crash-safe as a pair and not meant to be: it serves tests and demos.
    """
    dir = Path(dir)
    host = _normalize_hostname(hostname)
    cert, key = _make_leaf(host, None, None, _now(now))
    cert_path, key_path = dir / f"{host}.crt", dir / f"{host}.key"
    atomic_write(key_path, _key_pem(key), KEY_MODE)
    atomic_write(cert_path, _cert_pem(cert), CERT_MODE)
    return cert_path, key_path
