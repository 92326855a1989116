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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runewarp.errors import ConfigError

from .client import Overrides, parse_client
from .model import (
    DEFAULT_ACME_DIRECTORY,
    AcmeConfig,
    ClientConfig,
    Limits,
    MetricsConfig,
    ServerConfig,
    ServiceConfig,
    TunnelConfig,
    keep_running,
    restart_only,
)
from .paths import (
    default_client_identity_dir,
    default_client_public_cert_dir,
    default_config_path,
    default_server_ca_file,
    default_server_cert_dir,
    xdg_config_home,
    xdg_data_home,
    xdg_state_home,
)
from .proxy import command_line_forward, load_proxy_config
from .reader import Context, exists, peek, read_toml
from .schema import names
from .server import parse_server

# tests/test_packaging.py checks the templates against the limit keys.
_SERVER_LIMITS = names("server.limits")
_CLIENT_LIMITS = names("client.limits")

__all__ = [
    "DEFAULT_ACME_DIRECTORY",
    "AcmeConfig",
    "ClientConfig",
    "Limits",
    "MetricsConfig",
    "ServerConfig",
    "ServiceConfig",
    "TunnelConfig",
    "keep_running",
    "restart_only",
    "default_client_identity_dir",
    "default_client_public_cert_dir",
    "default_config_path",
    "default_server_ca_file",
    "default_server_cert_dir",
    "command_line_forward",
    "load_client_config",
    "load_proxy_config",
    "load_server_config",
    "peek",
    "xdg_config_home",
    "xdg_data_home",
    "xdg_state_home",
]


def load_server_config(path: Path | None, *, env: Mapping[str, str] = os.environ) -> ServerConfig:
    """Read and validate the `[server]` side of a config file (default path when None)."""
    source = Path(path) if path is not None else default_config_path(env)
    doc = read_toml(source)
    ctx = Context(str(source), source.absolute().parent, env)
    ctx.check_keys(doc, None)
    if "server" not in doc:
        raise ctx.error("server", "missing [server] table")
    return parse_server(ctx, doc, source.absolute())


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
    cli = Overrides(overrides or {}, env)
    if path is None and cli.has("server-address") and cli.has("backend-address"):
        return parse_client(cli.ctx, {"client": {}}, None, cli)
    source = Path(path) if path is not None else default_config_path(env)
    if path is None and not exists(source):
        raise ConfigError(
            f"no config file at {source}; pass --config, or --server-address and --backend-address",
            file=str(source),
        )
    doc = read_toml(source)
    ctx = Context(str(source), source.absolute().parent, env)
    ctx.check_keys(doc, None)
    if "client" not in doc:
        raise ctx.error("client", "missing [client] table")
    return parse_client(ctx, doc, source.absolute(), cli)
