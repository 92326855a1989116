"""The validated, frozen configuration objects the runtime reads."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runewarp.proto.routes import RoutingSnapshot, TunnelRoute

from .schema import BY_PATH, KEYS, RESTART, default

DEFAULT_ACME_DIRECTORY = default("server.acme.directory-url")


def _limit(name: str):
    return default(f"server.limits.{name}")


@dataclass(frozen=True)
class Limits:
    """Resource bounds (security.md, Limits and abuse); the Client uses the stream keys only.

    A timeout of 0 disables it.  `active_streams_per_tunnel` 0 means: all of
    `active_streams` with one Tunnel, half of it with several.
    """

    intake_connections: int = _limit("intake-connections")
    intake_per_source: int = _limit("intake-per-source")
    intake_ipv4_prefix: int = _limit("intake-ipv4-prefix")
    intake_ipv6_prefix: int = _limit("intake-ipv6-prefix")
    tunnel_handshakes: int = _limit("tunnel-handshakes")
    tunnel_handshakes_per_source: int = _limit("tunnel-handshakes-per-source")
    active_streams: int = _limit("active-streams")
    active_streams_per_tunnel: int = _limit("active-streams-per-tunnel")
    pool_connections: int = _limit("pool-connections")
    stream_buffer_budget: int = _limit("stream-buffer-budget")
    stream_idle_timeout: float = _limit("stream-idle-timeout")
    stream_half_closed_timeout: float = _limit("stream-half-closed-timeout")
    stream_first_byte_timeout: float = _limit("stream-first-byte-timeout")
    member_wait: float = _limit("member-wait")
    retries: int = _limit("retries")
    retry_buffer: int = _limit("retry-buffer")

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
class MetricsConfig:
    """`[<role>.metrics]`: where the metrics listener binds (None: no listener) and StatsD."""

    bind_address: tuple[str, int] | None = None
    statsd_address: tuple[str, int] | None = None
    statsd_prefix: str = default("server.metrics.statsd-prefix")
    statsd_interval: float = default("server.metrics.statsd-interval")


@dataclass(frozen=True)
class ServerTimeouts:
    """`[server.timeouts]` in seconds; read as each connection starts, so a reload
    applies to new connections (docs/timeouts.md)."""

    client_hello: float = default("server.timeouts.client-hello")
    tunnel_handshake: float = default("server.timeouts.tunnel-handshake")
    control_hello: float = default("server.timeouts.control-hello")
    keepalive_interval: float = default("server.timeouts.keepalive-interval")
    dead_peer: float = default("server.timeouts.dead-peer")


@dataclass(frozen=True)
class ClientTimeouts:
    """`[client.timeouts]` in seconds; as ServerTimeouts, for the Client."""

    tunnel_handshake: float = default("client.timeouts.tunnel-handshake")
    backend_connect: float = default("client.timeouts.backend-connect")
    keepalive_interval: float = default("client.timeouts.keepalive-interval")
    dead_peer: float = default("client.timeouts.dead-peer")


@dataclass(frozen=True)
class ManagedServerConfig:
    """`[server.managed]`: Tunnel connections need a certificate from `client_ca_file`
    (self-signed ones too, with `accept_self_signed`); docs/managed.md."""

    client_ca_file: Path
    accept_self_signed: bool = default("server.managed.accept-self-signed")


@dataclass(frozen=True)
class ManagedClientConfig:
    """`[client.managed]`: the control-plane-issued certificate presented with the identity key."""

    cert_file: Path


@dataclass(frozen=True)
class TunnelConfig:
    """One `[[server.tunnels]]` entry, hostnames normalized."""

    name: str
    public_hostnames: tuple[str, ...]
    client_identities: tuple[str, ...]
    public_ports: tuple[int, ...] | None = None  # None: every public listener's port


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """`[server.api]`: the configuration API's listener (None: none) and where API Tunnels are
    kept: `state_file`, or etcd when `etcd_endpoints` is not empty."""

    bind_address: tuple[str, int] | None = None
    client_ca_file: Path | None = None
    state_file: Path
    etcd_endpoints: tuple[str, ...] = default("server.api.etcd-endpoints")
    etcd_prefix: str = default("server.api.etcd-prefix")
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `runewarp server` needs; `source` is the file it came from."""

    hostname: str
    public_bind_addresses: tuple[tuple[str, int], ...] = (default("server.public-bind-address"),)
    tunnel_bind_address: tuple[str, int] | None = None
    trusted_proxies: tuple[str, ...] = default("server.trusted-proxies")
    cert_dir: Path
    public_quic: bool = default("server.public-quic")
    quic_idle_timeout: float = default("server.quic-idle-timeout")
    acme: AcmeConfig | None = None
    graceful_shutdown_duration: float = default("server.graceful-shutdown-duration")
    workers: int = default("server.workers")
    strict_permissions: bool = default("server.strict-permissions")
    pid_file: Path | None = None
    log_file: Path | None = None
    tunnels: tuple[TunnelConfig, ...]
    limits: Limits = Limits()
    metrics: MetricsConfig | None = None
    timeouts: ServerTimeouts = ServerTimeouts()
    api: ApiConfig | None = None
    access_log: bool = default("server.access-log")
    watch_config: bool = default("server.watch-config")
    managed: ManagedServerConfig | None = None
    log_level: str = default("log-level")
    log_format: str = default("log-format")
    source: Path | None = None

    def routing_snapshot(self) -> RoutingSnapshot:
        """The immutable hostname/identity index the Server routes from."""
        return RoutingSnapshot.build(
            self.hostname,
            (TunnelRoute(t.name, frozenset(t.public_hostnames), frozenset(t.client_identities),
                         None if t.public_ports is None else frozenset(t.public_ports)) for t in self.tunnels),
        )


@dataclass(frozen=True)
class HealthCheck:
    """A Service's active check of its Local backend (`health-check`)."""

    interval: float = default("client.services[].health-check.interval")
    timeout: float = default("client.services[].health-check.timeout")
    kind: str = default("client.services[].health-check.kind")


@dataclass(frozen=True)
class ServiceConfig:
    """One `[[client.services]]` entry; no hostnames means Catch-all."""

    public_hostnames: tuple[str, ...]
    backend_address: tuple[str, int]
    tls_mode: str = default("client.services[].tls-mode")
    proxy_protocol: str | None = None  # "v1" or "v2": the header the Local backend reads first
    alpn: tuple[str, ...] | None = None  # terminate only; None there means the key table's default
    visitor_ca_file: Path | None = None  # terminate only: Visitors need a certificate from this CA
    health_check: HealthCheck | None = None  # None: passive health only
    quic_backend_address: tuple[str, int] | None = None  # None: the Service takes no QUIC

    def __post_init__(self):
        if self.alpn is None and self.tls_mode == "terminate":
            object.__setattr__(self, "alpn", default("client.services[].alpn"))

    @property
    def is_catch_all(self) -> bool:
        return not self.public_hostnames


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything `runewarp client` needs; Tunnel connections to every address of every
    Server address (io/serverlinks.py)."""

    server_addresses: tuple[tuple[str, int], ...]
    server_name: str | None = None  # None: the host of each server address
    connections_per_server: int = default("client.connections-per-server")
    resolve_interval: float = default("client.resolve-interval")
    unhealthy_after: int = default("client.unhealthy-after")
    quic_idle_timeout: float = default("client.quic-idle-timeout")
    server_trust: str = default("client.server-trust")
    server_ca_file: Path | None = None
    identity_dir: Path
    public_cert_dir: Path | None = None
    acme: AcmeConfig | None = None
    services: tuple[ServiceConfig, ...]
    limits: Limits = Limits()
    metrics: MetricsConfig | None = None
    timeouts: ClientTimeouts = ClientTimeouts()
    access_log: bool = default("client.access-log")
    watch_config: bool = default("client.watch-config")
    managed: ManagedClientConfig | None = None
    log_level: str = default("log-level")
    log_format: str = default("log-format")
    graceful_shutdown_duration: float = default("client.graceful-shutdown-duration")
    workers: int = default("client.workers")
    strict_permissions: bool = default("client.strict-permissions")
    pid_file: Path | None = None
    log_file: Path | None = None
    source: Path | None = None

    def tls_name(self, address: tuple[str, int]) -> str:
        """The name the Client checks the Server certificate for (and sends as SNI)."""
        return self.server_name or address[0]

    @property
    def terminate_hostnames(self) -> list[str]:
        """The Public hostnames whose TLS this Client terminates (material and ACME need them)."""
        return [h for s in self.services if s.tls_mode == "terminate" for h in s.public_hostnames]


# Keys whose config field is named otherwise.
_FIELDS = {"client.server-address": "server_addresses"}


def restart_only(role: str) -> tuple[str, ...]:
    """The config fields (dotted inside a table: `limits.stream_buffer_budget`) a reload of
    `role` keeps, from the key table's `reload`: a restart-only table is kept whole."""
    fields = []
    for key in KEYS:
        if key.reload != RESTART or not key.path.startswith(f"{role}."):
            continue
        parent = key.path.rpartition(".")[0]
        if parent != role and BY_PATH[parent].reload == RESTART:
            continue  # its table is kept whole
        fields.append(_FIELDS.get(key.path, key.path[len(role) + 1:].replace("-", "_")))
    return tuple(fields)


def _get(config, field):
    for name in field.split("."):
        config = getattr(config, name)
    return config


def _put(config, field, value):
    name, _, rest = field.partition(".")
    return dataclasses.replace(config, **{name: _put(getattr(config, name), rest, value)
                                          if rest else value})


def keep_running(new, running, fields):
    """`new` with the values of `fields` (restart_only) taken from `running`, and the
    fields that differed: what a reload cannot change keeps its running value until a
    restart."""
    changed = [field for field in fields if _get(new, field) != _get(running, field)]
    for field in changed:
        new = _put(new, field, _get(running, field))
    return new, changed


@dataclass(frozen=True, kw_only=True)
class ForwardConfig:
    """One `[[proxy.forwards]]` (or the command-line forward): `listen` None means stdio.
    `label` names it in logs and errors, `listen_key` is the key a failed bind names."""

    hostname: str
    server: tuple[str, int]
    listen: tuple[str, int] | None = None
    ca_file: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    label: str = "proxy"
    listen_key: str = "--listen"


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    """`runewarp proxy`: its forwards, served by one process."""

    forwards: tuple[ForwardConfig, ...]
    log_level: str = default("log-level")
    log_format: str = default("log-format")
    source: Path | None = None
