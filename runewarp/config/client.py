"""The [client] side: Server addresses, trust, Services, and the command-line overrides."""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from . import shared
from runewarp.proto.hostname import is_wildcard

from .addresses import backend_address, normalize_hostname, server_address, unique_hostnames
from .model import ClientConfig, HealthCheck, ManagedClientConfig, ServiceConfig
from .paths import default_client_identity_dir, default_client_public_cert_dir, default_server_ca_file
from .reader import COMMAND_LINE, Context, join, type_name
from .schema import SERVER_TRUSTS

_OVERRIDE_KEYS = ("server-address", "backend-address", "server-trust", "server-ca-file", "identity-dir")


class Overrides:
    """Command-line values that replace or stand in for config keys."""

    def __init__(self, values: Mapping[str, Any], env: Mapping[str, str]):
        self.ctx = Context(COMMAND_LINE, Path.cwd(), env)
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


def parse_client(ctx: Context, doc: dict, source: Path | None, cli: Overrides) -> ClientConfig:
    log_level, log_format = shared.logging(ctx, doc)
    p = "client"
    client = ctx.table(doc, None, p)
    ctx.check_keys(client, p)

    server_name = ctx.string(client, p, "server-name")
    if server_name is not None:
        server_name = normalize_hostname(ctx, join(p, "server-name"), server_name)
    server_addresses = _client_server_addresses(ctx, client, cli, ip_allowed=server_name is not None)
    trust, ca_file = _client_trust(ctx, client, cli)
    if cli.has("identity-dir"):
        identity_dir = cli.ctx.resolve(os.fspath(cli.values["identity-dir"]))
    else:
        identity_dir = ctx.path(client, p, "identity-dir") or default_client_identity_dir(ctx.env)
    public_cert_dir = ctx.path(client, p, "public-cert-dir")
    acme = shared.acme(ctx, client, p, "public-cert-dir", public_cert_dir)
    grace = ctx.setting(client, p, "graceful-shutdown-duration")

    if cli.has("backend-address"):
        if "services" in client:
            raise cli.ctx.error(
                cli.key("backend-address"),
                f"cannot be combined with the [[client.services]] in {ctx.file}",
            )
        services = (_catch_all_override(cli),)
    else:
        services = _parse_services(ctx, client)

    if acme is not None:
        _no_acme_wildcards(ctx, services)
    if any(s.tls_mode == "terminate" for s in services):
        if public_cert_dir is None and acme is None:
            # Manual material in the XDG default folder, where `public-cert init` writes it.
            public_cert_dir = default_client_public_cert_dir(ctx.env)
    elif acme is not None:
        raise ctx.error(join(p, "acme"), 'needs at least one Service with tls-mode = "terminate"')
    elif public_cert_dir is not None:
        raise ctx.error(join(p, "public-cert-dir"), 'needs at least one Service with tls-mode = "terminate"')

    return ClientConfig(
        server_addresses=server_addresses,
        server_name=server_name,
        connections_per_server=ctx.setting(client, p, "connections-per-server"),
        resolve_interval=shared.positive(ctx, client, p, "resolve-interval"),
        unhealthy_after=ctx.setting(client, p, "unhealthy-after"),
        quic_idle_timeout=shared.positive(ctx, client, p, "quic-idle-timeout"),
        server_trust=trust,
        server_ca_file=ca_file,
        identity_dir=identity_dir,
        public_cert_dir=public_cert_dir,
        acme=acme,
        services=services,
        limits=shared.limits(ctx, client, p),
        metrics=shared.metrics(ctx, client, p),
        timeouts=shared.timeouts(ctx, client, p),
        access_log=ctx.setting(client, p, "access-log"),
        watch_config=ctx.setting(client, p, "watch-config"),
        managed=_managed(ctx, client),
        log_level=log_level,
        log_format=log_format,
        graceful_shutdown_duration=grace,
        workers=shared.workers(ctx, client, p, acme),
        strict_permissions=ctx.setting(client, p, "strict-permissions"),
        pid_file=ctx.setting(client, p, "pid-file"),
        log_file=ctx.setting(client, p, "log-file"),
        source=source,
    )


def _managed(ctx: Context, client: dict) -> ManagedClientConfig | None:
    """`[client.managed]`: a readable PEM certificate; whether it certifies the identity key is
    the start's material check (cli/common.py), whether it is current the Server's."""
    table, p = shared.subtable(ctx, client, "client", "managed")
    if table is None:
        return None
    path = ctx.setting(table, p, "cert-file")
    key = join(p, "cert-file")
    try:
        with open(path, "rb") as f:
            x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise ctx.error(key, f"cannot read {path}: {e.strerror or e}") from None
    except ValueError:
        raise ctx.error(key, f"{path} holds no PEM certificate (the control plane issues it: "
                             "runewarp ca issue)") from None
    return ManagedClientConfig(path)


def _client_server_addresses(ctx: Context, client: dict, cli: Overrides,
                             ip_allowed: bool) -> tuple[tuple[str, int], ...]:
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
                raise where.error(join(label, i), f"expected a string, got {type_name(item)}")
            items.append((join(label, i), item))
    else:
        raise where.error(label, f"expected a string or an array of strings, got {type_name(value)}")

    addresses: dict[tuple[str, int], str] = {}
    for item_key, text in items:
        address = server_address(where, item_key, text, ip_allowed=ip_allowed)
        if address in addresses:
            raise where.error(item_key, f"{text!r} is the same Server address as {addresses[address]}")
        addresses[address] = item_key
    return tuple(addresses)


def _client_trust(ctx: Context, client: dict, cli: Overrides) -> tuple[str, Path | None]:
    p = "client"
    if cli.has("server-trust"):
        trust = cli.values["server-trust"]
        if trust not in SERVER_TRUSTS:
            raise cli.ctx.error(cli.key("server-trust"), f"must be one of {', '.join(SERVER_TRUSTS)}; got {trust!r}")
    elif cli.has("server-ca-file"):
        trust = "ca-file"
    else:
        trust = ctx.setting(client, p, "server-trust")

    if cli.has("server-ca-file"):
        ca_ctx, ca_key = cli.ctx, cli.key("server-ca-file")
        value = cli.values["server-ca-file"]
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ca_ctx.error(ca_key, "expected a file path")
        ca_file = cli.ctx.resolve(os.fspath(value))
    else:
        ca_ctx, ca_key = ctx, join(p, "server-ca-file")
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


def _catch_all_override(cli: Overrides) -> ServiceConfig:
    value = cli.values["backend-address"]
    key = cli.key("backend-address")
    if not isinstance(value, str) or not value:
        raise cli.ctx.error(key, "expected host:port")
    return ServiceConfig((), backend_address(cli.ctx, key, value), "passthrough")


def _parse_services(ctx: Context, client: dict) -> tuple[ServiceConfig, ...]:
    entries = ctx.array_of_tables(client, "client", "services")
    seen: dict[str, str] = {}
    services = []
    for sp, entry in entries:
        raw_hosts = ctx.string_list(entry, sp, "public-hostnames")
        hosts_key = join(sp, "public-hostnames")
        if raw_hosts is None and len(entries) > 1:
            raise ctx.error(
                hosts_key, "required when there is more than one Service (only a sole Service may be Catch-all)"
            )
        public_hostnames = unique_hostnames(ctx, hosts_key, raw_hosts or [], seen)

        backend = ctx.setting(entry, sp, "backend-address")
        address = backend_address(ctx, join(sp, "backend-address"), backend)
        tls_mode = ctx.setting(entry, sp, "tls-mode")
        if tls_mode == "terminate" and not public_hostnames:
            raise ctx.error(
                join(sp, "tls-mode"),
                "a Catch-all Service cannot terminate TLS; list its public-hostnames",
            )
        proxy_protocol = ctx.setting(entry, sp, "proxy-protocol")
        services.append(ServiceConfig(public_hostnames, address, tls_mode, proxy_protocol,
                                      _alpn(ctx, entry, sp, tls_mode),
                                      _visitor_ca_file(ctx, entry, sp, tls_mode),
                                      _health_check(ctx, entry, sp, tls_mode),
                                      _quic_backend_address(ctx, entry, sp, tls_mode)))
    return tuple(services)


def _quic_backend_address(ctx: Context, entry: dict, sp: str, tls_mode: str) -> tuple[str, int] | None:
    """Where the Service's QUIC flows go (None: it takes none).  QUIC carries its TLS inside
    the QUIC handshake, which the Client relays and never completes: nothing to terminate."""
    value = ctx.setting(entry, sp, "quic-backend-address")
    if value is None:
        return None
    key = join(sp, "quic-backend-address")
    if tls_mode == "terminate":
        raise ctx.error(key, 'not with tls-mode = "terminate" (the Client relays QUIC to the Local '
                             "backend, which completes the Visitor's handshake itself)")
    return backend_address(ctx, key, value)


def _health_check(ctx: Context, entry: dict, sp: str, tls_mode: str) -> HealthCheck | None:
    """`health-check = { interval, timeout, kind }` (None without it): a check that could
    outlast its interval would overlap the next one; a terminate Service's backend speaks
    no TLS to hand-shake with."""
    table = ctx.table(entry, sp, "health-check")
    if table is None:
        return None
    p = join(sp, "health-check")
    ctx.check_keys(table, p)
    interval = shared.positive(ctx, table, p, "interval")
    timeout = shared.positive(ctx, table, p, "timeout")
    if timeout > interval:
        raise ctx.error(join(p, "timeout"), f"must be at most interval ({interval:g} s); "
                                            f"got {timeout:g}")
    kind = ctx.setting(table, p, "kind")
    if kind == "tls" and tls_mode == "terminate":
        raise ctx.error(join(p, "kind"), '"tls" only with tls-mode = "passthrough" (a terminate '
                                         "Service's Local backend speaks plaintext); use \"tcp\"")
    return HealthCheck(interval, timeout, kind)


# ALPN names a Service may not list: the Client answers acme-tls/1 validations itself (RFC 8737),
# and h2c is HTTP/2 without TLS, never agreed in a handshake (RFC 9113 3.1).
_ALPN_REFUSED = {"acme-tls/1": "the Client answers ACME TLS-ALPN-01 validations itself",
                 "h2c": 'h2c is HTTP/2 without TLS; list "h2" (the backend then gets HTTP/2 with prior knowledge)'}


def _terminate_only(ctx: Context, key: str, tls_mode: str, backend_does: str) -> None:
    """A Service key about the Visitor's TLS, which the Client sees only in terminate mode."""
    if tls_mode != "terminate":
        raise ctx.error(key, f'only allowed with tls-mode = "terminate" (in passthrough the Local backend '
                             f"{backend_does})")


def _alpn(ctx: Context, entry: dict, sp: str, tls_mode: str) -> tuple[str, ...] | None:
    """The Service's ALPN protocol names, or None (the terminate default, or passthrough).

    Any RFC 7301 name the Visitor and the Local backend agree on is allowed, not only h2 and
    http/1.1; names are kept to printable ASCII without spaces, as every registered one is.
    """
    names = ctx.string_list(entry, sp, "alpn")
    key = join(sp, "alpn")
    if names is None:
        return None
    _terminate_only(ctx, key, tls_mode, "agrees ALPN with the Visitor")
    for i, name in enumerate(names):
        if not (1 <= len(name) <= 255 and all("!" <= c <= "~" for c in name)):
            raise ctx.error(join(key, i), f"{name!r} is not an ALPN protocol name "
                                          "(1-255 printable ASCII characters, no spaces)")
        if name in _ALPN_REFUSED:
            raise ctx.error(join(key, i), f"{name!r} is not allowed: {_ALPN_REFUSED[name]}")
        if name in names[:i]:
            raise ctx.error(join(key, i), f"{name!r} is listed twice")
    return tuple(names)


def _visitor_ca_file(ctx: Context, entry: dict, sp: str, tls_mode: str) -> Path | None:
    """The CA a terminate Service's Visitors need a certificate from, checked now so a
    typo fails the start or the reload instead of every handshake."""
    path = ctx.path(entry, sp, "visitor-ca-file")
    key = join(sp, "visitor-ca-file")
    if path is None:
        return None
    _terminate_only(ctx, key, tls_mode, "completes the Visitor's handshake")
    return shared.ca_file(ctx, path, key, "runewarp client visitor-ca init")


def _no_acme_wildcards(ctx: Context, services: tuple[ServiceConfig, ...]) -> None:
    """ACME here is TLS-ALPN-01, which cannot issue wildcard certificates (RFC 8737)."""
    for i, service in enumerate(services):
        for j, host in enumerate(service.public_hostnames):
            if service.tls_mode == "terminate" and is_wildcard(host):
                raise ctx.error(
                    join(join(join(join("client", "services"), i), "public-hostnames"), j),
                    f"{host!r}: [client.acme] uses TLS-ALPN-01, which cannot issue wildcard certificates; "
                    "use a public-cert-dir instead of [client.acme] and make the certificate with "
                    f"runewarp client public-cert init --hostname '{host}', or list the names one by one")
