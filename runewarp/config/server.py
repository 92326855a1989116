"""The [server] side: bind addresses, Tunnels, Client identities, limits, ACME."""

import dataclasses
import re
from pathlib import Path

from runewarp.proto.identity import is_identity
from runewarp.proto.proxyheader import networks
from runewarp.proto.routes import RoutingConflict

from . import shared
from .api import parse_api
from .addresses import bind_address, normalize_hostname, shares_port, unique_hostnames
from .model import ManagedServerConfig, ServerConfig, TunnelConfig
from .paths import default_server_cert_dir
from .reader import Context, join, type_name
from .schema import default

_IDENTITY_ANY_CASE = re.compile(r"[0-9a-fA-F]{64}")
_TUNNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
QUIC_IDLE_BOUNDS = (1.0, 3600.0)  # below a QUIC endpoint's own idle timeout ends flows early


def parse_server(ctx: Context, doc: dict, source: Path) -> ServerConfig:
    log_level, log_format = shared.logging(ctx, doc)
    p = "server"
    server = ctx.table(doc, None, p)
    ctx.check_keys(server, p)

    hostname = normalize_hostname(ctx, join(p, "hostname"), ctx.setting(server, p, "hostname"))
    public_bind_addresses = _public_bind_addresses(ctx, server)
    tunnel_bind = ctx.string(server, p, "tunnel-bind-address")
    tunnel_bind_address = bind_address(ctx, join(p, "tunnel-bind-address"), tunnel_bind) if tunnel_bind else None
    public_key = "public-bind-addresses" if "public-bind-addresses" in server else "public-bind-address"
    if any(shares_port(tunnel_bind_address, a) for a in public_bind_addresses):
        raise ctx.error(join(p, "tunnel-bind-address"), f"shares a port with {public_key} (omit it to share "
                                                        "the public listener)")
    trusted_proxies = _trusted_proxies(ctx, server)

    cert_dir = ctx.path(server, p, "cert-dir")
    quic_idle_timeout = ctx.setting(server, p, "quic-idle-timeout")
    if not QUIC_IDLE_BOUNDS[0] <= quic_idle_timeout <= QUIC_IDLE_BOUNDS[1]:
        raise ctx.error(join(p, "quic-idle-timeout"), "must be between {:g} and {:g} seconds; got {:g}".format(
            *QUIC_IDLE_BOUNDS, quic_idle_timeout))
    acme = shared.acme(ctx, server, p, "cert-dir", cert_dir)

    grace = ctx.setting(server, p, "graceful-shutdown-duration")
    api_only = "api" in server and "tunnels" not in server  # the API may add every Tunnel
    tunnels = () if api_only else _parse_tunnels(ctx, server, hostname, {port for _, port in public_bind_addresses})
    limits = shared.limits(ctx, server, p)
    metrics = shared.metrics(ctx, server, p)
    if metrics is not None and any(shares_port(metrics.bind_address, a)
                                   for a in (*public_bind_addresses, tunnel_bind_address)):
        raise ctx.error(join(join(p, "metrics"), "bind-address"), "shares a port with a public or Tunnel listener; "
                                                            "metrics need a listener of their own")
    taken = {join(p, "public-bind-address"): a for a in public_bind_addresses}
    taken[join(p, "tunnel-bind-address")] = tunnel_bind_address
    taken[join(join(p, "metrics"), "bind-address")] = metrics and metrics.bind_address

    managed = _managed(ctx, server)
    api = parse_api(ctx, server, taken)
    if api is not None and managed is not None and api.client_ca_file is not None:
        _not_the_control_plane_ca(ctx, api.client_ca_file, managed.client_ca_file)

    config = ServerConfig(
        hostname=hostname,
        public_bind_addresses=public_bind_addresses,
        tunnel_bind_address=tunnel_bind_address,
        trusted_proxies=trusted_proxies,
        cert_dir=cert_dir or default_server_cert_dir(ctx.env),
        public_quic=ctx.setting(server, p, "public-quic"),
        quic_idle_timeout=quic_idle_timeout,
        acme=acme,
        graceful_shutdown_duration=grace,
        workers=shared.workers(ctx, server, p, acme, api, ctx.setting(server, p, "public-quic")),
        strict_permissions=ctx.setting(server, p, "strict-permissions"),
        pid_file=ctx.setting(server, p, "pid-file"),
        log_file=ctx.setting(server, p, "log-file"),
        tunnels=tunnels,
        limits=limits,
        metrics=metrics,
        timeouts=shared.timeouts(ctx, server, p),
        api=api,
        access_log=ctx.setting(server, p, "access-log"),
        watch_config=ctx.setting(server, p, "watch-config"),
        managed=managed,
        log_level=log_level,
        log_format=log_format,
        source=source,
    )
    try:
        config.routing_snapshot()
    except RoutingConflict as e:
        raise ctx.error(join(p, "tunnels"), str(e)) from None
    return config


def _managed(ctx: Context, server: dict) -> ManagedServerConfig | None:
    """`[server.managed]` (None without the table: self-hosted trust, exactly as before)."""
    table, p = shared.subtable(ctx, server, "server", "managed")
    if table is None:
        return None
    ca_file = ctx.setting(table, p, "client-ca-file")
    return ManagedServerConfig(shared.ca_file(ctx, ca_file, join(p, "client-ca-file"), "runewarp ca init"),
                               ctx.setting(table, p, "accept-self-signed"))


def _not_the_control_plane_ca(ctx: Context, api_ca: Path, managed_ca: Path) -> None:
    """The API's callers and the Clients must not share a CA: with one, every Client the
    control plane issued a certificate to could rewrite the routing table."""
    if shared.certificates_of(api_ca) & shared.certificates_of(managed_ca):
        raise ctx.error("server.api.client-ca-file", f"{api_ca} holds the control-plane CA of "
                        "server.managed.client-ca-file: every managed Client could call the API; "
                        "give the API a CA of its own")


def _public_bind_addresses(ctx: Context, server: dict) -> tuple[tuple[str, int], ...]:
    """`public-bind-addresses`, or the `public-bind-address` shorthand, or the default."""
    p = "server"
    one, many = "public-bind-address" in server, "public-bind-addresses" in server
    if one and many:
        raise ctx.error(join(p, "public-bind-addresses"),
                        "use either public-bind-address or public-bind-addresses, not both")
    if not many:
        value = ctx.string(server, p, "public-bind-address")
        return (bind_address(ctx, join(p, "public-bind-address"), value) if value
                else default("server.public-bind-address"),)
    key = join(p, "public-bind-addresses")
    seen: dict[tuple[str, int], str] = {}
    for i, value in enumerate(ctx.string_list(server, p, "public-bind-addresses")):
        address = bind_address(ctx, join(key, i), value)
        if address in seen:
            raise ctx.error(join(key, i), f"{value!r} is already listed at {seen[address]}")
        seen[address] = join(key, i)
    return tuple(seen)


def _trusted_proxies(ctx: Context, server: dict) -> tuple[str, ...]:
    """`trusted-proxies`: the load balancers allowed to send a PROXY header (may be empty)."""
    key = join("server", "trusted-proxies")
    value = server.get("trusted-proxies", [])
    if not isinstance(value, list):
        raise ctx.error(key, f"expected an array of CIDRs, got {type_name(value)}")
    result = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ctx.error(join(key, i), f"expected a CIDR string, got {type_name(item)}")
        try:
            result.append(str(networks((item,))[0]))  # canonical: 10.0.0.5/32, ::1/128
        except ValueError as exc:
            raise ctx.error(join(key, i), str(exc)) from None
    return tuple(result)


def _public_ports(ctx: Context, entry: dict, tp: str, listening: set[int]) -> tuple[int, ...] | None:
    """`public-ports`: ports of the public listeners, each once (None: every one)."""
    if "public-ports" not in entry:
        return None
    key, value = join(tp, "public-ports"), entry["public-ports"]
    if not isinstance(value, list) or not value:
        raise ctx.error(key, "expected a non-empty array of ports (omit it for every public port)")
    ports = []
    for i, port in enumerate(value):
        if isinstance(port, bool) or not isinstance(port, int):
            raise ctx.error(join(key, i), f"expected a port number, got {type_name(port)}")
        if port not in listening or not port:
            shown = ", ".join(str(p) for p in sorted(listening) if p) or "none"
            raise ctx.error(join(key, i), f"{port} is not the port of a public bind address (server."
                                          f"public-bind-addresses has {shown})")
        if port in ports:
            raise ctx.error(join(key, i), f"port {port} is listed twice")
        ports.append(port)
    return tuple(ports)


class _Tunnels:
    """The Tunnels read so far, with where each name, hostname and identity was listed: the
    file's `[[server.tunnels]]` and then the API Tunnels go through the same checks."""

    def __init__(self, server_hostname: str, listening: set[int]):
        self.server_hostname = server_hostname
        self.listening = listening
        self.names: dict[str, str] = {}
        self.hostnames: dict[str, list[tuple[str, tuple[int, ...] | None]]] = {}  # -> (key, ports) of each
        self.identities: dict[str, str] = {}
        self.tunnels: list[TunnelConfig] = []

    def add(self, ctx: Context, tp: str, entry: dict, name: str) -> TunnelConfig:
        public_ports = _public_ports(ctx, entry, tp, self.listening)
        raw_hosts = ctx.string_list(entry, tp, "public-hostnames")
        if raw_hosts is None:
            raise ctx.error(join(tp, "public-hostnames"), "required key is missing")
        own: dict[str, str] = {}
        public_hostnames = unique_hostnames(ctx, join(tp, "public-hostnames"), raw_hosts, own,
                                            self.server_hostname)
        for host, key in own.items():
            _not_shared(ctx, key, host, public_ports, self.hostnames.setdefault(host, []))
        client_identities = _tunnel_identities(ctx, entry, tp, self.identities)
        tunnel = TunnelConfig(name, public_hostnames, tuple(client_identities), public_ports)
        self.names[name] = tp
        self.tunnels.append(tunnel)
        return tunnel

    @classmethod
    def of(cls, config: ServerConfig) -> "_Tunnels":
        """The file's Tunnels of a loaded `config`, each at its key path."""
        seen = cls(config.hostname, {port for _, port in config.public_bind_addresses})
        for i, tunnel in enumerate(config.tunnels):
            tp = join(join("server", "tunnels"), i)
            seen.names[tunnel.name] = tp
            for j, host in enumerate(tunnel.public_hostnames):
                seen.hostnames.setdefault(host, []).append((join(join(tp, "public-hostnames"), j),
                                                            tunnel.public_ports))
            for j, identity in enumerate(tunnel.client_identities):
                seen.identities[identity] = join(join(tp, "client-identities"), j)
            seen.tunnels.append(tunnel)
        return seen


def _parse_tunnels(ctx: Context, server: dict, server_hostname: str,
                   listening: set[int]) -> tuple[TunnelConfig, ...]:
    seen = _Tunnels(server_hostname, listening)
    for i, (tp, entry) in enumerate(ctx.array_of_tables(server, "server", "tunnels")):
        name = ctx.string(entry, tp, "name")
        name_key = join(tp, "name")
        if name is None:
            name = f"tunnel-{i + 1}"
            if name in seen.names:
                raise ctx.error(name_key, f"default name {name!r} is already used by {seen.names[name]}; set a name")
        else:
            _check_name(ctx, name_key, name, seen.names)
        seen.add(ctx, tp, entry, name)
    return tuple(seen.tunnels)


def _check_name(ctx: Context, key: str, name: str, names: dict[str, str]) -> None:
    if not _TUNNEL_NAME.fullmatch(name):
        raise ctx.error(key, f"{name!r}: use 1-63 characters of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    if name in names:
        raise ctx.error(key, f"{name!r} is already the name of {names[name]}")


API_TUNNELS = "api-tunnels"  # the key path of an API Tunnel: api-tunnels.NAME.public-hostnames[0]


def with_api_tunnels(config: ServerConfig, table: dict[str, dict], label: str) -> ServerConfig:
    """`config` (the file's) with the API Tunnels of `table` (name -> record, in name order)
    after its own, checked by the file's rules: a broken one raises the one-line ConfigError
    the config check prints, with `label` (where API Tunnels are kept) as the file and
    `api-tunnels.NAME...` as the key."""
    ctx = Context(label, Path("/"), {})
    seen = _Tunnels.of(config)
    for name in sorted(table):
        tp = join(API_TUNNELS, name)
        _check_name(ctx, tp, name, seen.names)
        entry = table[name]
        if not isinstance(entry, dict):
            raise ctx.error(tp, f"expected a table, got {type_name(entry)}")
        unknown = sorted(set(entry) - {"public-hostnames", "client-identities"})
        if unknown:
            raise ctx.error(join(tp, unknown[0]), "unknown key; an API Tunnel has public-hostnames and "
                                                  "client-identities")
        if "client-identities" not in entry:
            raise ctx.error(join(tp, "client-identities"), "required key is missing")
        seen.add(ctx, tp, entry, name)
    merged = dataclasses.replace(config, tunnels=tuple(seen.tunnels))
    try:
        merged.routing_snapshot()
    except RoutingConflict as e:
        raise ctx.error(API_TUNNELS, str(e)) from None
    return merged


def _not_shared(ctx: Context, key: str, host: str, ports: tuple[int, ...] | None,
                earlier: list[tuple[str, tuple[int, ...] | None]]) -> None:
    """A hostname may be in two Tunnels only on disjoint public-ports: (port, hostname)
    must name one Tunnel.  `earlier` gets this listing."""
    for other_key, other_ports in earlier:
        if ports is None or other_ports is None:
            raise ctx.error(key, f"{host!r} is already listed at {other_key}; the same hostname in two Tunnels "
                                 "needs public-ports on both, with no port in common")
        common = sorted(set(ports) & set(other_ports))
        if common:
            raise ctx.error(key, f"{host!r} is already listed at {other_key} for port "
                                 f"{', '.join(map(str, common))}; give the two Tunnels disjoint public-ports")
    earlier.append((key, ports))


def _tunnel_identities(ctx: Context, entry: dict, tp: str, seen: dict[str, str]) -> list[str]:
    one, many = "client-identity" in entry, "client-identities" in entry
    if one and many:
        raise ctx.error(join(tp, "client-identities"), "use either client-identity or client-identities, not both")
    if not one and not many:
        raise ctx.error(join(tp, "client-identity"), "required key is missing (or client-identities for several)")
    if one:
        items = [(join(tp, "client-identity"), ctx.string(entry, tp, "client-identity"))]
    else:
        raw = ctx.string_list(entry, tp, "client-identities")
        items = [(join(join(tp, "client-identities"), j), v) for j, v in enumerate(raw)]
    result = []
    for key, value in items:
        if not is_identity(value):
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
