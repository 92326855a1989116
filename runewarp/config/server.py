"""The [server] side: bind addresses, Tunnels, Client identities, limits, ACME."""

import re
from pathlib import Path
from urllib.parse import urlsplit

from runewarp.proto.routes import RoutingConflict

from .addresses import _bind_address, _normalize_hostname
from .model import DEFAULT_ACME_DIRECTORY, LOG_FORMATS, LOG_LEVELS, AcmeConfig, Limits, ServerConfig, TunnelConfig
from .paths import _default_acme_state_dir, default_server_cert_dir
from .reader import _Context, _join, _type_name

_IDENTITY = re.compile(r"[0-9a-f]{64}")
_IDENTITY_ANY_CASE = re.compile(r"[0-9a-fA-F]{64}")
_TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _check_top_level(ctx: _Context, doc: dict) -> None:
    ctx.check_keys(doc, None, ("log-level", "log-format", "server", "client"))


def _logging(ctx: _Context, doc: dict) -> tuple[str, str]:
    level = ctx.string(doc, None, "log-level", choices=LOG_LEVELS) or "info"
    fmt = ctx.string(doc, None, "log-format", choices=LOG_FORMATS) or "text"
    return level, fmt


def _acme(ctx: _Context, table: dict, prefix: str, role: str) -> AcmeConfig:
    ctx.check_keys(table, prefix, ("email", "state-dir", "directory-url"))
    email = ctx.required_string(table, prefix, "email")
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in email):
        raise ctx.error(_join(prefix, "email"), f"{email!r} is not an email address")
    state_dir = ctx.path(table, prefix, "state-dir")
    url = ctx.string(table, prefix, "directory-url") or DEFAULT_ACME_DIRECTORY
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ctx.error(_join(prefix, "directory-url"), f"{url!r}: must be an https:// URL")
    return AcmeConfig(
        email=email,
        state_dir=state_dir or _default_acme_state_dir(ctx.env, role),
        directory_url=url,
        state_dir_explicit=state_dir is not None,
    )



_SERVER_KEYS = (
    "hostname",
    "public-bind-address",
    "tunnel-bind-address",
    "cert-dir",
    "graceful-shutdown-duration",
    "strict-permissions",
    "acme",
    "tunnels",
    "limits",
)
_TUNNEL_KEYS = ("name", "public-hostnames", "client-identity", "client-identities")
_STREAM_LIMITS = {
    "active-streams": "active_streams",
    "stream-buffer-budget": "stream_buffer_budget",
    "stream-idle-timeout": "stream_idle_timeout",
    "stream-half-closed-timeout": "stream_half_closed_timeout",
}
_SERVER_LIMITS = {
    "intake-connections": "intake_connections",
    "intake-per-source": "intake_per_source",
    "intake-ipv4-prefix": "intake_ipv4_prefix",
    "intake-ipv6-prefix": "intake_ipv6_prefix",
    "tunnel-handshakes": "tunnel_handshakes",
    "tunnel-handshakes-per-source": "tunnel_handshakes_per_source",
    "active-streams-per-tunnel": "active_streams_per_tunnel",
    "pool-connections": "pool_connections",
    "stream-first-byte-timeout": "stream_first_byte_timeout",
    **_STREAM_LIMITS,
}
_CLIENT_LIMITS = dict(_STREAM_LIMITS)
_PREFIX_BOUNDS = {"intake-ipv4-prefix": 32, "intake-ipv6-prefix": 128}
_MIN_BUFFER_BUDGET = 1024 * 1024


def _limits(ctx: _Context, parent: dict, prefix: str, known: dict[str, str]) -> Limits:
    table = ctx.table(parent, prefix, "limits")
    if table is None:
        return Limits()
    path = _join(prefix, "limits")
    ctx.check_keys(table, path, tuple(known))
    values = {}
    for key, attr in known.items():
        if key not in table:
            continue
        if key.endswith("-timeout"):
            values[attr] = ctx.duration(table, path, key)
            continue
        value = ctx.positive_int(table, path, key)
        if key in _PREFIX_BOUNDS and value > _PREFIX_BOUNDS[key]:
            raise ctx.error(_join(path, key), f"must be at most {_PREFIX_BOUNDS[key]}; got {value}")
        if key == "stream-buffer-budget" and value < _MIN_BUFFER_BUDGET:
            raise ctx.error(_join(path, key), f"must be at least {_MIN_BUFFER_BUDGET} bytes; "
                                              f"got {value}")
        values[attr] = value
    return Limits(**values)


def _parse_server(ctx: _Context, doc: dict, source: Path) -> ServerConfig:
    log_level, log_format = _logging(ctx, doc)
    p = "server"
    server = ctx.table(doc, None, p)
    ctx.check_keys(server, p, _SERVER_KEYS)

    hostname = _normalize_hostname(ctx, _join(p, "hostname"), ctx.required_string(server, p, "hostname"))
    public_bind = ctx.string(server, p, "public-bind-address")
    tunnel_bind = ctx.string(server, p, "tunnel-bind-address")
    public_bind_address = (
        _bind_address(ctx, _join(p, "public-bind-address"), public_bind) if public_bind else ("0.0.0.0", 443)
    )
    tunnel_bind_address = _bind_address(ctx, _join(p, "tunnel-bind-address"), tunnel_bind) if tunnel_bind else None
    if tunnel_bind_address is not None and tunnel_bind_address == public_bind_address and tunnel_bind_address[1]:
        raise ctx.error(_join(p, "tunnel-bind-address"), "must differ from public-bind-address (omit it to share)")

    cert_dir = ctx.path(server, p, "cert-dir")
    acme_table = ctx.table(server, p, "acme")
    acme = None
    if acme_table is not None:
        if cert_dir is not None:
            raise ctx.error(_join(p, "cert-dir"), "cannot be used together with [server.acme]; choose one")
        acme = _acme(ctx, acme_table, _join(p, "acme"), "server")

    grace = ctx.duration(server, p, "graceful-shutdown-duration")
    tunnels = _parse_tunnels(ctx, server, hostname)
    limits = _limits(ctx, server, p, _SERVER_LIMITS)

    config = ServerConfig(
        hostname=hostname,
        public_bind_address=public_bind_address,
        tunnel_bind_address=tunnel_bind_address,
        cert_dir=cert_dir or default_server_cert_dir(ctx.env),
        acme=acme,
        graceful_shutdown_duration=30.0 if grace is None else grace,
        strict_permissions=bool(ctx.boolean(server, p, "strict-permissions")),
        tunnels=tunnels,
        limits=limits,
        log_level=log_level,
        log_format=log_format,
        source=source,
    )
    try:
        config.routing_snapshot()
    except RoutingConflict as e:
        raise ctx.error(_join(p, "tunnels"), str(e)) from None
    return config


def _parse_tunnels(ctx: _Context, server: dict, server_hostname: str) -> tuple[TunnelConfig, ...]:
    p = "server.tunnels"
    entries = server.get("tunnels")
    if entries is None:
        raise ctx.error(p, "at least one [[server.tunnels]] is required")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ctx.error(p, f"expected an array of tables ([[server.tunnels]]), got {_type_name(entries)}")
    if not entries:
        raise ctx.error(p, "at least one [[server.tunnels]] is required")

    names: dict[str, str] = {}
    hostnames: dict[str, str] = {}
    identities: dict[str, str] = {}
    tunnels = []
    for i, entry in enumerate(entries):
        tp = _join(p, i)
        ctx.check_keys(entry, tp, _TUNNEL_KEYS)

        name = ctx.string(entry, tp, "name")
        name_key = _join(tp, "name")
        if name is None:
            name = f"tunnel-{i + 1}"
            if name in names:
                raise ctx.error(name_key, f"default name {name!r} is already used by {names[name]}; set a name")
        elif not _TUNNEL_NAME.fullmatch(name):
            raise ctx.error(
                name_key, f"{name!r}: use 1-63 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
            )
        elif name in names:
            raise ctx.error(name_key, f"{name!r} is already the name of {names[name]}")
        names[name] = tp

        raw_hosts = ctx.string_list(entry, tp, "public-hostnames")
        if raw_hosts is None:
            raise ctx.error(_join(tp, "public-hostnames"), "required key is missing")
        public_hostnames = []
        for j, raw in enumerate(raw_hosts):
            key = _join(_join(tp, "public-hostnames"), j)
            host = _normalize_hostname(ctx, key, raw)
            if host == server_hostname:
                raise ctx.error(
                    key, f"{host!r} is the Server hostname (server.hostname); it cannot be a Public hostname"
                )
            if host in hostnames:
                raise ctx.error(key, f"{host!r} is already listed at {hostnames[host]}")
            hostnames[host] = key
            public_hostnames.append(host)

        client_identities = _tunnel_identities(ctx, entry, tp, identities)
        tunnels.append(TunnelConfig(name, tuple(public_hostnames), tuple(client_identities)))
    return tuple(tunnels)


def _tunnel_identities(ctx: _Context, entry: dict, tp: str, seen: dict[str, str]) -> list[str]:
    one, many = "client-identity" in entry, "client-identities" in entry
    if one and many:
        raise ctx.error(_join(tp, "client-identities"), "use either client-identity or client-identities, not both")
    if not one and not many:
        raise ctx.error(_join(tp, "client-identity"), "required key is missing (or client-identities for several)")
    if one:
        items = [(_join(tp, "client-identity"), ctx.string(entry, tp, "client-identity"))]
    else:
        raw = ctx.string_list(entry, tp, "client-identities")
        items = [(_join(_join(tp, "client-identities"), j), v) for j, v in enumerate(raw)]
    result = []
    for key, value in items:
        if not _IDENTITY.fullmatch(value):
            if _IDENTITY_ANY_CASE.fullmatch(value):
                raise ctx.error(key, "a Client identity is written in lowercase hex; use lowercase")
            raise ctx.error(
                key,
                f"{value!r} is not a Client identity (64 lowercase hex characters; "
                "see 'runewarp client identity show')",
            )
        if value == "0" * 64:
            # The shipped template's placeholder: an untouched template must not start.
            raise ctx.error(
                key, "the all-zero placeholder is not a Client identity; paste the real one "
                "printed by 'runewarp client identity show' on the Client")
        if value in seen:
            raise ctx.error(
                key, f"this Client identity is already listed at {seen[value]}; an identity belongs to one Tunnel"
            )
        seen[value] = key
        result.append(value)
    return result
