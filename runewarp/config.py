"""TOML configuration -> validated, frozen dataclasses.

Everything is checked here, before anything starts or is written, and every
error names the TOML key path it came from (`server.tunnels[0].public-hostnames[1]`,
array indexes 0-based), so an operator can fix the file without guessing.
Unknown keys are errors: a typo must never silently turn a setting off.

Loading has no side effects: no folders are created, no sockets opened, and
certificate material is not looked at (the runtime reports missing material
with a hint). The only files read besides the config are files the config
names explicitly (`server-ca-file`), to check they are readable.
"""

import difflib
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping
from urllib.parse import urlsplit

from runewarp.errors import ConfigError
from runewarp.proto import hostname as _hostname
from runewarp.proto.routes import RoutingConflict, RoutingSnapshot, TunnelRoute

__all__ = [
    "AcmeConfig",
    "ClientConfig",
    "Limits",
    "ServerConfig",
    "ServiceConfig",
    "TunnelConfig",
    "default_client_identity_dir",
    "default_client_public_cert_dir",
    "default_config_path",
    "default_server_ca_file",
    "default_server_cert_dir",
    "load_client_config",
    "load_server_config",
    "xdg_config_home",
    "xdg_data_home",
    "xdg_state_home",
]

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
TLS_MODES = ("passthrough", "terminate")
SERVER_TRUSTS = ("system", "ca-file")
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_SERVER_PORT = 443
COMMAND_LINE = "command line"

_IDENTITY = re.compile(r"[0-9a-f]{64}")
_IDENTITY_ANY_CASE = re.compile(r"[0-9a-fA-F]{64}")
_TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Limits:
    """Resource bounds (security.md, Limits and abuse); the Client uses the stream keys only.

    A timeout of 0 disables it.  `active_streams_per_tunnel` 0 means: all of
    `active_streams` with one Tunnel, half of it with several.
    """

    intake_connections: int = 4096
    intake_per_source: int = 64
    intake_ipv4_prefix: int = 32
    intake_ipv6_prefix: int = 64
    tunnel_handshakes: int = 256
    tunnel_handshakes_per_source: int = 16
    active_streams: int = 16384
    active_streams_per_tunnel: int = 0
    pool_connections: int = 256
    stream_buffer_budget: int = 64 * 1024 * 1024
    stream_idle_timeout: float = 600.0
    stream_half_closed_timeout: float = 30.0
    stream_first_byte_timeout: float = 30.0

    def tunnel_share(self, tunnels: int) -> int:
        """Most streams one Tunnel may hold, so one tenant can exhaust only itself."""
        if self.active_streams_per_tunnel:
            return self.active_streams_per_tunnel
        return self.active_streams if tunnels <= 1 else max(1, self.active_streams // 2)


@dataclass(frozen=True, kw_only=True)
class AcmeConfig:
    """ACME account and state; `state_dir_explicit` tells the runtime whether it chose the folder."""

    email: str
    state_dir: Path
    directory_url: str = DEFAULT_ACME_DIRECTORY
    state_dir_explicit: bool = False


@dataclass(frozen=True)
class TunnelConfig:
    """One `[[server.tunnels]]` entry, hostnames normalized."""

    name: str
    public_hostnames: tuple[str, ...]
    client_identities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `runewarp server` needs; `source` is the file it came from."""

    hostname: str
    public_bind_address: tuple[str, int] = ("0.0.0.0", 443)
    tunnel_bind_address: tuple[str, int] | None = None
    cert_dir: Path
    acme: AcmeConfig | None = None
    graceful_shutdown_duration: float = 30.0
    strict_permissions: bool = False
    tunnels: tuple[TunnelConfig, ...]
    limits: Limits = Limits()
    log_level: str = "info"
    log_format: str = "text"
    source: Path | None = None

    def routing_snapshot(self) -> RoutingSnapshot:
        """The immutable hostname/identity index the Server routes from."""
        return RoutingSnapshot.build(
            self.hostname,
            (TunnelRoute(t.name, frozenset(t.public_hostnames), frozenset(t.client_identities)) for t in self.tunnels),
        )


@dataclass(frozen=True)
class ServiceConfig:
    """One `[[client.services]]` entry; no hostnames means Catch-all."""

    public_hostnames: tuple[str, ...]
    backend_address: tuple[str, int]
    tls_mode: str = "passthrough"

    @property
    def is_catch_all(self) -> bool:
        return not self.public_hostnames


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything `runewarp client` needs; one Tunnel connection per Server address."""

    server_addresses: tuple[tuple[str, int], ...]
    server_trust: str = "system"
    server_ca_file: Path | None = None
    identity_dir: Path
    public_cert_dir: Path | None = None
    acme: AcmeConfig | None = None
    services: tuple[ServiceConfig, ...]
    limits: Limits = Limits()
    log_level: str = "info"
    log_format: str = "text"
    graceful_shutdown_duration: float = 30.0
    strict_permissions: bool = False
    source: Path | None = None

    def service_for_hostname(self, hostname: str) -> ServiceConfig | None:
        """The Service for a normalized SNI: the Catch-all takes everything."""
        for service in self.services:
            if service.is_catch_all or hostname in service.public_hostnames:
                return service
        return None


# --- XDG locations ---------------------------------------------------------


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg(env: Mapping[str, str], variable: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = env.get(variable)
    if value and os.path.isabs(value):
        return Path(value)
    return _home(env) / fallback


def xdg_config_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config")


def xdg_data_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_DATA_HOME", ".local/share")


def xdg_state_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_STATE_HOME", ".local/state")


def default_config_path(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_config_home(env) / "runewarp" / "config.toml"


def default_server_cert_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "server" / "cert"


def default_client_identity_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "identity"


def default_client_public_cert_dir(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "public-cert"


def default_server_ca_file(env: Mapping[str, str] = os.environ) -> Path:
    return xdg_data_home(env) / "runewarp" / "client" / "server-ca.crt"


def _default_acme_state_dir(env: Mapping[str, str], role: str) -> Path:
    return xdg_state_home(env) / "runewarp" / role / "acme"


# --- loading ---------------------------------------------------------------


def load_server_config(path: Path | None, *, env: Mapping[str, str] = os.environ) -> ServerConfig:
    """Read and validate the `[server]` side of a config file (default path when None)."""
    source = Path(path) if path is not None else default_config_path(env)
    doc = _read_toml(source)
    ctx = _Context(str(source), source.absolute().parent, env)
    _check_top_level(ctx, doc)
    if "server" not in doc:
        raise ctx.error("server", "missing [server] table")
    return _parse_server(ctx, doc, source.absolute())


def load_client_config(
    path: Path | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] = os.environ,
) -> ClientConfig:
    """Read and validate the `[client]` side, with command-line `overrides` on top.

    `overrides` maps option names (`server-address`, `backend-address`,
    `server-trust`, `server-ca-file`, `identity-dir`) to values; None values are ignored. With
    no `path` and both addresses given, no file is read at all: the result is
    one Catch-all passthrough Service.
    """
    cli = _Overrides(overrides or {}, env)
    if path is None and cli.has("server-address") and cli.has("backend-address"):
        return _parse_client(cli.ctx, {"client": {}}, None, cli)
    source = Path(path) if path is not None else default_config_path(env)
    if path is None and not _exists(source):
        raise ConfigError(
            f"no config file at {source}; pass --config, or --server-address and --backend-address",
            file=str(source),
        )
    doc = _read_toml(source)
    ctx = _Context(str(source), source.absolute().parent, env)
    _check_top_level(ctx, doc)
    if "client" not in doc:
        raise ctx.error("client", "missing [client] table")
    return _parse_client(ctx, doc, source.absolute(), cli)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _read_toml(source: Path) -> dict:
    try:
        with open(source, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", file=str(source)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", file=str(source)) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: file is not UTF-8", file=str(source)) from None


# --- validation machinery --------------------------------------------------


def _join(prefix: str | None, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    part = key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{prefix}.{part}" if prefix else part


_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Context:
    """Where values come from: error labels, the folder relative paths resolve against, env."""

    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]):
        self.file = file
        self.base_dir = base_dir
        self.env = env

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    # Typed getters: `table` is a TOML table, `prefix` its key path.

    def check_keys(self, table: dict, prefix: str | None, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                message = f"unknown key; did you mean {hint[0]!r}?" if hint else "unknown key"
                raise self.error(_join(prefix, key), message)

    def table(self, parent: dict, prefix: str | None, key: str) -> dict | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(_join(prefix, key), f"expected a table, got {_type_name(value)}")
        return value

    def string(self, parent: dict, prefix: str | None, key: str, *, choices: tuple[str, ...] = ()) -> str | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        if choices and value not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def required_string(self, parent: dict, prefix: str | None, key: str) -> str:
        value = self.string(parent, prefix, key)
        if value is None:
            raise self.error(_join(prefix, key), "required key is missing")
        return value

    def string_list(self, parent: dict, prefix: str | None, key: str) -> list[str] | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if not isinstance(value, list):
            raise self.error(path, f"expected an array of strings, got {_type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(_join(path, i), f"expected a string, got {_type_name(item)}")
        return value

    def positive_int(self, parent: dict, prefix: str | None, key: str) -> int | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {_type_name(value)}")
        if value < 1:
            raise self.error(path, f"must be at least 1; got {value}")
        return value

    def duration(self, parent: dict, prefix: str | None, key: str) -> float | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"expected a number of seconds, got {_type_name(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.error(path, f"must be a finite number of seconds >= 0; got {value}")
        return float(value)

    def boolean(self, parent: dict, prefix: str | None, key: str) -> bool | None:
        if key not in parent:
            return None
        value = parent[key]
        if not isinstance(value, bool):
            raise self.error(_join(prefix, key), f"expected true or false, got {_type_name(value)}")
        return value

    def path(self, parent: dict, prefix: str | None, key: str) -> Path | None:
        value = self.string(parent, prefix, key)
        return None if value is None else self.resolve(value)

    def resolve(self, value: str) -> Path:
        """Expand `~` against $HOME and anchor relative paths at the config file's folder."""
        if value == "~" or value.startswith("~/"):
            path = _home(self.env) / value[2:]
        else:
            path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else self.base_dir / path


def _check_top_level(ctx: _Context, doc: dict) -> None:
    ctx.check_keys(doc, None, ("log-level", "log-format", "server", "client"))


def _logging(ctx: _Context, doc: dict) -> tuple[str, str]:
    level = ctx.string(doc, None, "log-level", choices=LOG_LEVELS) or "info"
    fmt = ctx.string(doc, None, "log-format", choices=LOG_FORMATS) or "text"
    return level, fmt


def _normalize_hostname(ctx: _Context, key: str, value: str) -> str:
    try:
        return _hostname.normalize(value)
    except _hostname.HostnameError as e:
        raise ctx.error(key, str(e)) from None


def _parse_port(ctx: _Context, key: str, text: str, *, minimum: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise ctx.error(key, f"port {text!r} is not a number")
    port = int(text)
    if not minimum <= port <= 65535:
        raise ctx.error(key, f"port {port} is out of range {minimum}-65535")
    return port


def _split_host_port(ctx: _Context, key: str, value: str, *, port_required: bool) -> tuple[str, str | None, bool]:
    """Split `host:port` / `[v6]:port`; returns (host, port text or None, bracketed)."""
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            raise ctx.error(key, f"{value!r}: missing ']' after IPv6 address")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ctx.error(key, f"{value!r}: expected ':port' after ']'")
        port = rest[1:] if rest else None
        bracketed = True
    elif value.count(":") > 1:
        raise ctx.error(key, f"{value!r}: write IPv6 addresses in brackets, e.g. [::1]:443")
    elif ":" in value:
        host, port = value.split(":")
        bracketed = False
    else:
        host, port, bracketed = value, None, False
    if not host:
        raise ctx.error(key, f"{value!r}: missing host")
    if port is None and port_required:
        raise ctx.error(key, f"{value!r}: missing ':port'")
    return host, port, bracketed


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _bind_address(ctx: _Context, key: str, value: str) -> tuple[str, int]:
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=True)
    ip = _ip(host)
    if ip is None:
        raise ctx.error(key, f"{value!r}: host must be a literal IP address, e.g. 0.0.0.0:443 or [::]:443")
    if isinstance(ip, ipaddress.IPv6Address) and not bracketed:
        raise ctx.error(key, f"{value!r}: write IPv6 addresses in brackets, e.g. [::]:443")
    if isinstance(ip, ipaddress.IPv4Address) and bracketed:
        raise ctx.error(key, f"{value!r}: only IPv6 addresses go in brackets")
    return str(ip), _parse_port(ctx, key, port, minimum=0)


def _server_address(ctx: _Context, key: str, value: str) -> tuple[str, int]:
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=False)
    if bracketed or _ip(host) is not None:
        raise ctx.error(key, f"{value!r}: host must be a DNS name, not an IP address (it is the Server hostname)")
    name = _normalize_hostname(ctx, key, host)
    return name, DEFAULT_SERVER_PORT if port is None else _parse_port(ctx, key, port, minimum=1)


def _backend_address(ctx: _Context, key: str, value: str) -> tuple[str, int]:
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=True)
    ip = _ip(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise ctx.error(key, f"{value!r}: only IPv6 addresses go in brackets")
    name = str(ip) if ip is not None else _normalize_hostname(ctx, key, host)
    return name, _parse_port(ctx, key, port, minimum=1)


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


# --- [server] --------------------------------------------------------------

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


# --- [client] --------------------------------------------------------------

_CLIENT_KEYS = (
    "server-address",
    "server-trust",
    "server-ca-file",
    "identity-dir",
    "public-cert-dir",
    "graceful-shutdown-duration",
    "strict-permissions",
    "acme",
    "services",
    "limits",
)
_SERVICE_KEYS = ("public-hostnames", "backend-address", "tls-mode")
_OVERRIDE_KEYS = ("server-address", "backend-address", "server-trust", "server-ca-file", "identity-dir")


class _Overrides:
    """Command-line values that replace or stand in for config keys."""

    def __init__(self, values: Mapping[str, Any], env: Mapping[str, str]):
        self.ctx = _Context(COMMAND_LINE, Path.cwd(), env)
        self.values = {}
        for key, value in values.items():
            if key not in _OVERRIDE_KEYS:
                raise self.ctx.error(f"--{key}", "not a client config option")
            if value is not None:
                self.values[key] = value

    def has(self, key: str) -> bool:
        return key in self.values

    def key(self, key: str) -> str:
        return f"--{key}"


def _parse_client(ctx: _Context, doc: dict, source: Path | None, cli: _Overrides) -> ClientConfig:
    log_level, log_format = _logging(ctx, doc)
    p = "client"
    client = ctx.table(doc, None, p)
    ctx.check_keys(client, p, _CLIENT_KEYS)

    server_addresses = _client_server_addresses(ctx, client, cli)
    trust, ca_file = _client_trust(ctx, client, cli)
    if cli.has("identity-dir"):
        identity_dir = cli.ctx.resolve(os.fspath(cli.values["identity-dir"]))
    else:
        identity_dir = ctx.path(client, p, "identity-dir") or default_client_identity_dir(ctx.env)
    public_cert_dir = ctx.path(client, p, "public-cert-dir")
    acme_table = ctx.table(client, p, "acme")
    acme = None
    if acme_table is not None:
        if public_cert_dir is not None:
            raise ctx.error(_join(p, "public-cert-dir"), "cannot be used together with [client.acme]; choose one")
        acme = _acme(ctx, acme_table, _join(p, "acme"), "client")
    grace = ctx.duration(client, p, "graceful-shutdown-duration")

    if cli.has("backend-address"):
        if "services" in client:
            raise cli.ctx.error(
                cli.key("backend-address"),
                f"cannot be combined with the [[client.services]] in {ctx.file}",
            )
        services = (_catch_all_override(cli),)
    else:
        services = _parse_services(ctx, client)

    if any(s.tls_mode == "terminate" for s in services):
        if public_cert_dir is None and acme is None:
            # Manual material in the XDG default folder, where `public-cert init` writes it.
            public_cert_dir = default_client_public_cert_dir(ctx.env)
    elif acme is not None:
        raise ctx.error(_join(p, "acme"), 'needs at least one Service with tls-mode = "terminate"')
    elif public_cert_dir is not None:
        raise ctx.error(_join(p, "public-cert-dir"), 'needs at least one Service with tls-mode = "terminate"')

    return ClientConfig(
        server_addresses=server_addresses,
        server_trust=trust,
        server_ca_file=ca_file,
        identity_dir=identity_dir,
        public_cert_dir=public_cert_dir,
        acme=acme,
        services=services,
        limits=_limits(ctx, client, p, _CLIENT_LIMITS),
        log_level=log_level,
        log_format=log_format,
        graceful_shutdown_duration=30.0 if grace is None else grace,
        strict_permissions=bool(ctx.boolean(client, p, "strict-permissions")),
        source=source,
    )


def _client_server_addresses(ctx: _Context, client: dict, cli: _Overrides) -> tuple[tuple[str, int], ...]:
    if cli.has("server-address"):
        where, label, value = cli.ctx, cli.key("server-address"), cli.values["server-address"]
    elif "server-address" in client:
        where, label, value = ctx, "client.server-address", client["server-address"]
    else:
        raise ctx.error("client.server-address", "required key is missing (hostname[:port] of the Server)")
    if isinstance(value, str):
        items = [(label, value)]
    elif isinstance(value, (list, tuple)):
        if not value:
            raise where.error(label, "must not be empty")
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise where.error(_join(label, i), f"expected a string, got {_type_name(item)}")
            items.append((_join(label, i), item))
    else:
        raise where.error(label, f"expected a string or an array of strings, got {_type_name(value)}")

    addresses: dict[tuple[str, int], str] = {}
    for item_key, text in items:
        address = _server_address(where, item_key, text)
        if address in addresses:
            raise where.error(item_key, f"{text!r} is the same Server address as {addresses[address]}")
        addresses[address] = item_key
    return tuple(addresses)


def _client_trust(ctx: _Context, client: dict, cli: _Overrides) -> tuple[str, Path | None]:
    p = "client"
    if cli.has("server-trust"):
        trust = cli.values["server-trust"]
        if trust not in SERVER_TRUSTS:
            raise cli.ctx.error(cli.key("server-trust"), f"must be one of {', '.join(SERVER_TRUSTS)}; got {trust!r}")
    elif cli.has("server-ca-file"):
        trust = "ca-file"
    else:
        trust = ctx.string(client, p, "server-trust", choices=SERVER_TRUSTS) or "system"

    if cli.has("server-ca-file"):
        ca_ctx, ca_key = cli.ctx, cli.key("server-ca-file")
        value = cli.values["server-ca-file"]
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ca_ctx.error(ca_key, "expected a file path")
        ca_file = cli.ctx.resolve(os.fspath(value))
    else:
        ca_ctx, ca_key = ctx, _join(p, "server-ca-file")
        ca_file = ctx.path(client, p, "server-ca-file")

    if trust == "system":
        if ca_file is not None:
            raise ca_ctx.error(ca_key, 'only allowed with server-trust = "ca-file"')
        return trust, None
    if ca_file is None:
        return trust, default_server_ca_file(ctx.env)
    try:
        with open(ca_file, "rb"):
            pass
    except OSError as e:
        raise ca_ctx.error(ca_key, f"cannot read {ca_file}: {e.strerror or e}") from None
    return trust, ca_file


def _catch_all_override(cli: _Overrides) -> ServiceConfig:
    value = cli.values["backend-address"]
    key = cli.key("backend-address")
    if not isinstance(value, str) or not value:
        raise cli.ctx.error(key, "expected host:port")
    return ServiceConfig((), _backend_address(cli.ctx, key, value), "passthrough")


def _parse_services(ctx: _Context, client: dict) -> tuple[ServiceConfig, ...]:
    p = "client.services"
    entries = client.get("services")
    if entries is None:
        raise ctx.error(p, "at least one [[client.services]] is required")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ctx.error(p, f"expected an array of tables ([[client.services]]), got {_type_name(entries)}")
    if not entries:
        raise ctx.error(p, "at least one [[client.services]] is required")

    seen: dict[str, str] = {}
    services = []
    for i, entry in enumerate(entries):
        sp = _join(p, i)
        ctx.check_keys(entry, sp, _SERVICE_KEYS)
        raw_hosts = ctx.string_list(entry, sp, "public-hostnames")
        hosts_key = _join(sp, "public-hostnames")
        if raw_hosts is None and len(entries) > 1:
            raise ctx.error(
                hosts_key, "required when there is more than one Service (only a sole Service may be Catch-all)"
            )
        public_hostnames = []
        for j, raw in enumerate(raw_hosts or ()):
            key = _join(hosts_key, j)
            host = _normalize_hostname(ctx, key, raw)
            if host in seen:
                raise ctx.error(key, f"{host!r} is already listed at {seen[host]}")
            seen[host] = key
            public_hostnames.append(host)

        backend = ctx.required_string(entry, sp, "backend-address")
        backend_address = _backend_address(ctx, _join(sp, "backend-address"), backend)
        tls_mode = ctx.string(entry, sp, "tls-mode", choices=TLS_MODES) or "passthrough"
        if tls_mode == "terminate" and not public_hostnames:
            raise ctx.error(
                _join(sp, "tls-mode"),
                "a Catch-all Service cannot terminate TLS; list its public-hostnames",
            )
        services.append(ServiceConfig(tuple(public_hostnames), backend_address, tls_mode))
    return tuple(services)
