"""host:port rules: bind addresses (literal IPs), Server addresses (DNS names), backend addresses."""

import ipaddress

from runewarp.proto import hostname as _hostname

from .schema import DEFAULT_SERVER_PORT
from .reader import Context, join


def normalize_hostname(ctx: Context, key: str, value: str, wildcard: bool = False) -> str:
    try:
        return _hostname.normalize(value, wildcard)
    except _hostname.HostnameError as e:
        raise ctx.error(key, str(e)) from None


def unique_hostnames(ctx: Context, key: str, raw: list[str], seen: dict[str, str],
                     server_hostname: str | None = None) -> tuple[str, ...]:
    """Normalized Public hostnames and wildcards, each listed once across all entries
    (`seen`: hostname -> key path); none of them may take the Server hostname."""
    hosts = []
    for j, value in enumerate(raw):
        item = join(key, j)
        host = normalize_hostname(ctx, item, value, wildcard=True)
        if host == server_hostname:
            raise ctx.error(item, f"{host!r} is the Server hostname (server.hostname); it cannot be a Public hostname")
        if server_hostname is not None and _hostname.covers(host, server_hostname):
            raise ctx.error(item, f"{host!r} covers the Server hostname {server_hostname!r} (server.hostname); "
                                  "Tunnel connections could be routed as Visitors: use a Server hostname the "
                                  "wildcard does not cover (another domain, or one label deeper)")
        if host in seen:
            raise ctx.error(item, f"{host!r} is already listed at {seen[host]}")
        seen[host] = item
        hosts.append(host)
    return tuple(hosts)


def _parse_port(ctx: Context, key: str, text: str, *, minimum: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise ctx.error(key, f"port {text!r} is not a number")
    port = int(text)
    if not minimum <= port <= 65535:
        raise ctx.error(key, f"port {port} is out of range {minimum}-65535")
    return port


def _split_host_port(ctx: Context, key: str, value: str, *, port_required: bool) -> tuple[str, str | None, bool]:
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


def shares_port(a: tuple[str, int] | None, b: tuple[str, int] | None) -> bool:
    """Whether listeners bound to `a` and `b` would take each other's connections: the same
    port (not 0) on the same IP (`::ffff:192.0.2.1` is 192.0.2.1), or on any IP of the
    family a wildcard covers: 0.0.0.0 every IPv4 address, `::` every address (dual-stack)."""
    if not a or not b or not a[1] or a[1] != b[1]:
        return False
    ip_a, ip_b = _as_bound(a[0]), _as_bound(b[0])
    return ip_a == ip_b or _covers(ip_a, ip_b) or _covers(ip_b, ip_a)


def _as_bound(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host)
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _covers(wildcard, other) -> bool:
    return wildcard.is_unspecified and (wildcard.version == 6 or other.version == 4)


def bind_address(ctx: Context, key: str, value: str) -> tuple[str, int]:
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=True)
    ip = _ip(host)
    if ip is None:
        raise ctx.error(key, f"{value!r}: host must be a literal IP address, e.g. 0.0.0.0:443 or [::]:443")
    if isinstance(ip, ipaddress.IPv6Address) and not bracketed:
        raise ctx.error(key, f"{value!r}: write IPv6 addresses in brackets, e.g. [::]:443")
    if isinstance(ip, ipaddress.IPv4Address) and bracketed:
        raise ctx.error(key, f"{value!r}: only IPv6 addresses go in brackets")
    return str(ip), _parse_port(ctx, key, port, minimum=0)


def server_address(ctx: Context, key: str, value: str, *, ip_allowed: bool = False) -> tuple[str, int]:
    """`ip_allowed`: the TLS name comes from client.server-name, so the host may be an IP."""
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=False)
    ip = _ip(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise ctx.error(key, f"{value!r}: only IPv6 addresses go in brackets")
    if ip is not None and not ip_allowed:
        raise ctx.error(key, f"{value!r}: host must be a DNS name, not an IP address (it is the Server "
                             "hostname), unless client.server-name names the Server")
    if ip is not None and isinstance(ip, ipaddress.IPv6Address) and not bracketed:
        raise ctx.error(key, f"{value!r}: write IPv6 addresses in brackets, e.g. [::1]:443")
    name = str(ip) if ip is not None else normalize_hostname(ctx, key, host)
    return name, DEFAULT_SERVER_PORT if port is None else _parse_port(ctx, key, port, minimum=1)


def backend_address(ctx: Context, key: str, value: str) -> tuple[str, int]:
    host, port, bracketed = _split_host_port(ctx, key, value, port_required=True)
    ip = _ip(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise ctx.error(key, f"{value!r}: only IPv6 addresses go in brackets")
    name = str(ip) if ip is not None else normalize_hostname(ctx, key, host)
    return name, _parse_port(ctx, key, port, minimum=1)
