"""What both roles read alike: the top level, `[<role>.acme]`, `[<role>.limits]`,
`[<role>.metrics]` and `[<role>.timeouts]`."""

import os
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import schema
import re

from .addresses import bind_address, backend_address
from .model import AcmeConfig, ClientTimeouts, Limits, MetricsConfig, ServerTimeouts
from .paths import default_acme_state_dir
from .reader import Context, join


def logging(ctx: Context, doc: dict) -> tuple[str, str]:
    """(log-level, log-format) from the top level."""
    return ctx.setting(doc, None, "log-level"), ctx.setting(doc, None, "log-format")


def acme(ctx: Context, parent: dict, role: str, folder_key: str, folder: object) -> AcmeConfig | None:
    """`[<role>.acme]`, which replaces the manual certificate folder `folder_key` (None without the table)."""
    table = ctx.table(parent, role, "acme")
    if table is None:
        return None
    if folder is not None:
        raise ctx.error(join(role, folder_key), f"cannot be used together with [{role}.acme]; choose one")
    prefix = join(role, "acme")
    ctx.check_keys(table, prefix)
    email = ctx.setting(table, prefix, "email")
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in email):
        raise ctx.error(join(prefix, "email"), f"{email!r} is not an email address")
    state_dir = ctx.setting(table, prefix, "state-dir")
    url = ctx.setting(table, prefix, "directory-url")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ctx.error(join(prefix, "directory-url"), f"{url!r}: must be an https:// URL")
    return AcmeConfig(
        email=email,
        state_dir=state_dir or default_acme_state_dir(ctx.env, role),
        directory_url=url,
        state_dir_explicit=state_dir is not None,
    )


def limits(ctx: Context, parent: dict, prefix: str) -> Limits:
    """The role's `limits` keys from the key table; the rest keep their defaults."""
    table = ctx.table(parent, prefix, "limits")
    if table is None:
        return Limits()
    path = join(prefix, "limits")
    ctx.check_keys(table, path)
    return Limits(**{key.replace("-", "_"): ctx.setting(table, path, key) for key in schema.names(path)})


_STATSD_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


def workers(ctx: Context, parent: dict, role: str, acme: AcmeConfig | None, api: object = None,
            quic: bool = False) -> int:
    """`workers`: 1-64, or "auto" for the number of CPUs.  More than one refuses what would
    run once per worker and must run once: certbot ([<role>.acme]) and the configuration
    API, whose changes would reach one worker only; and public QUIC, whose flows live in the
    worker that reads their first datagram."""
    key = join(role, "workers")
    bounds = schema.key(key).bounds
    value = parent.get("workers", schema.default(key))
    if value == "auto":
        count = min(os.cpu_count() or 1, bounds[1])
    elif isinstance(value, str):
        raise ctx.error(key, f'expected an integer 1-64 or "auto", got {value!r}')
    else:
        count = ctx.bounded_int(parent, role, "workers", bounds) if "workers" in parent else value
    if count > 1 and acme is not None:
        raise ctx.error(key, f"more than 1 cannot be used with [{role}.acme]: each worker would "
                        "run certbot for the same certificates; use workers = 1")
    if count > 1 and getattr(api, "bind_address", None) is not None:
        raise ctx.error(key, "more than 1 cannot be used with [server.api] bind-address: an API "
                        "change would reach one worker only; use workers = 1")
    if count > 1 and quic:
        raise ctx.error(key, "more than 1 cannot be used with public-quic = true: a QUIC flow's "
                        "datagrams would reach any worker; use workers = 1")
    return count


def subtable(ctx: Context, parent: dict, role: str, name: str) -> tuple[dict | None, str]:
    """`[<role>.<name>]` with its keys checked (None without it), and its key path."""
    table, p = ctx.table(parent, role, name), join(role, name)
    if table is not None:
        ctx.check_keys(table, p)
    return table, p


def metrics(ctx: Context, parent: dict, role: str) -> MetricsConfig | None:
    """`[<role>.metrics]` (None without the table)."""
    table, p = subtable(ctx, parent, role, "metrics")
    if table is None:
        return None
    bind = ctx.string(table, p, "bind-address")
    statsd = ctx.string(table, p, "statsd-address")
    prefix = ctx.setting(table, p, "statsd-prefix")
    if not _STATSD_PREFIX.fullmatch(prefix):
        raise ctx.error(join(p, "statsd-prefix"), f"{prefix!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    interval = positive(ctx, table, p, "statsd-interval")
    return MetricsConfig(
        bind_address=bind_address(ctx, join(p, "bind-address"), bind) if bind else None,
        statsd_address=backend_address(ctx, join(p, "statsd-address"), statsd) if statsd else None,
        statsd_prefix=prefix,
        statsd_interval=interval,
    )


def positive(ctx: Context, table: dict, prefix: str, key: str) -> float:
    """A `seconds` key that must be more than 0 (a timer of 0 would fire at once)."""
    value = ctx.setting(table, prefix, key)
    if value <= 0:
        raise ctx.error(join(prefix, key), f"must be more than 0 seconds; got {value:g}")
    return value


_TIMEOUTS = {"server": ServerTimeouts, "client": ClientTimeouts}


def timeouts(ctx: Context, parent: dict, role: str) -> ServerTimeouts | ClientTimeouts:
    """`[<role>.timeouts]`: each key > 0 seconds, and dead-peer longer than keepalive-interval."""
    p = join(role, "timeouts")
    table = ctx.table(parent, role, "timeouts") or {}
    ctx.check_keys(table, p)
    values = {key: positive(ctx, table, p, key) for key in schema.names(p)}
    if values["dead-peer"] <= values["keepalive-interval"]:
        raise ctx.error(join(p, "dead-peer"), f"must be more than keepalive-interval "
                        f"({values['keepalive-interval']:g} s); got {values['dead-peer']:g}")
    return _TIMEOUTS[role](**{key.replace("-", "_"): value for key, value in values.items()})


def ca_file(ctx: Context, path: Path, key: str, made_by: str) -> Path:
    """A CA bundle a config names (`visitor-ca-file`, `client-ca-file`), checked now so a
    typo fails the start or the reload instead of every handshake."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ctx.error(key, f"cannot read {path}: {e.strerror or e}") from None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not any(_is_ca(c) for c in certificates):
        raise ctx.error(key, f"{path} holds no PEM CA certificate (make one with {made_by})")
    return path


def certificates_of(path: Path) -> set[bytes]:
    """The DER of each certificate in the PEM file `path` (an already checked CA file)."""
    try:
        return {c.public_bytes(serialization.Encoding.DER)
                for c in x509.load_pem_x509_certificates(Path(path).read_bytes())}
    except (OSError, ValueError):
        return set()


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
