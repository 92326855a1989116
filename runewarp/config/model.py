"""The validated, frozen configuration objects the runtime reads."""

from dataclasses import dataclass
from pathlib import Path

from runewarp.proto.routes import RoutingSnapshot, TunnelRoute

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
TLS_MODES = ("passthrough", "terminate")
SERVER_TRUSTS = ("system", "ca-file")
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_SERVER_PORT = 443


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
