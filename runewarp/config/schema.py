"""The key table: every config key once, with its type, default, rule and what it is for.

Defaults live here and nowhere else: the dataclasses in model.py and the
parsers take them from `default()`, the allowed keys of each table come from
`names()`, and tests/test_config_docs.py checks docs/configuration.md against
this table. Rules that relate several keys (a hostname in two Tunnels, ACME
with cert-dir) stay in server.py and client.py; `rule` only says them in words.
"""

from dataclasses import dataclass, replace
from typing import Any

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
TLS_MODES = ("passthrough", "terminate")
PROXY_PROTOCOLS = ("v1", "v2")
SERVER_TRUSTS = ("system", "ca-file")
HEALTH_CHECK_KINDS = ("tcp", "tls")
DEFAULT_SERVER_PORT = 443
MIB = 1024 * 1024
# What a reload does with a changed key (docs/configuration.md, "What a reload changes").
RELOAD = "reload"  # applied at once
NEW_CONNECTIONS = "new connections"  # applied to connections and streams that start afterwards
RESTART = "restart"  # kept until a restart, with a `reload-needs-restart` warning
RELOAD_EFFECTS = (RELOAD, NEW_CONNECTIONS, RESTART)


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Key:
    """One key. `path` writes an array of tables as `[]` (`server.tunnels[].name`).

    `default` is the value used when the key is omitted (None: unset or
    computed at load time, then `shown` says how the docs write it).  `reload`
    is what a reload does with a change (RELOAD_EFFECTS); a table's keys share
    its effect unless they say otherwise.
    """

    path: str
    type: str
    default: Any
    rule: str
    doc: str
    shown: str | None = None
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int | None] | None = None
    reload: str = RELOAD


def _both(path: str, *args: Any, **kwargs: Any) -> tuple[Key, Key]:
    """A key with the same meaning and default in `[server]` and `[client]`."""
    return Key(f"server.{path}", *args, **kwargs), Key(f"client.{path}", *args, **kwargs)


def _acme(role: str) -> tuple[Key, ...]:
    p = f"{role}.acme"
    return (
        Key(f"{p}.email", "string", REQUIRED, "local@domain, no whitespace", "the ACME account contact",
            reload=RESTART),
        Key(f"{p}.state-dir", "path", None, "a folder; validation never creates it", "certbot's state",
            shown=f"$XDG_STATE_HOME/runewarp/{role}/acme", reload=RESTART),
        Key(f"{p}.directory-url", "string", "https://acme-v02.api.letsencrypt.org/directory",
            "an https:// URL with a host", "the ACME CA", reload=RESTART),
    )


def _metrics(role: str) -> tuple[Key, ...]:
    p = f"{role}.metrics"
    return (
        Key(f"{p}.bind-address", "address", None, "literal IP:port or [IPv6]:port, port 0-65535",
            "plain-HTTP listener for /metrics, /healthz, /readyz and /status", shown="unset (no listener)",
            reload=RESTART),
        Key(f"{p}.statsd-address", "address", None, "host:port, port 1-65535 (UDP)",
            "push the same figures to StatsD", shown="unset (no push)", reload=RESTART),
        Key(f"{p}.statsd-prefix", "string", "runewarp", "1-64 of A-Z a-z 0-9 . _ -", "prefix of every StatsD name",
            reload=RESTART),
        Key(f"{p}.statsd-interval", "seconds", 10.0, "seconds > 0", "how often StatsD gets the figures",
            reload=RESTART),
    )


def _api() -> tuple[Key, ...]:
    """`[server.api]`: the Server configuration API (docs/api.md); every key needs a restart."""
    p = "server.api"
    return tuple(replace(key, reload=RESTART) for key in (
        Key(f"{p}.bind-address", "address", None, "literal IP:port; differs from every public, Tunnel "
            "and metrics bind address", "the API's HTTPS listener (mutual TLS)", shown="unset (no listener)"),
        Key(f"{p}.client-ca-file", "path", None, "required with bind-address; a readable PEM CA bundle",
            "the CA whose client certificates may call the API", shown="—"),
        Key(f"{p}.state-file", "path", None, "a file path; its folder is created",
            "where API Tunnels are kept (without etcd-endpoints)",
            shown="$XDG_STATE_HOME/runewarp/server/api-tunnels.json"),
        Key(f"{p}.etcd-endpoints", "strings", (), "http:// or https:// URLs, each once",
            "keep API Tunnels in this etcd cluster instead of state-file", shown="[] (the state file)"),
        Key(f"{p}.etcd-prefix", "string", "/runewarp/tunnels/", "starts and ends with /",
            "the etcd key prefix of the API Tunnels"),
        Key(f"{p}.etcd-ca-file", "path", None, "a readable PEM CA bundle",
            "the CA of etcd's https:// endpoints", shown="the system store"),
        Key(f"{p}.etcd-cert-file", "path", None, "a readable PEM certificate; with etcd-key-file",
            "the client certificate etcd asks for", shown="unset (none)"),
        Key(f"{p}.etcd-key-file", "path", None, "a readable PEM private key; with etcd-cert-file",
            "the key of etcd-cert-file", shown="unset (none)"),
    ))


def _timeouts(role: str) -> tuple[Key, ...]:
    """`[<role>.timeouts]`: the connection timers an operator may tune (docs/timeouts.md)."""
    p, server = f"{role}.timeouts", role == "server"
    first = (
        Key(f"{p}.client-hello", "seconds", 5.0, "seconds > 0", "a Visitor's whole ClientHello, from accept"),
        Key(f"{p}.tunnel-handshake", "seconds", 5.0, "seconds > 0", "a Tunnel connection's TLS handshake"),
        Key(f"{p}.control-hello", "seconds", 10.0, "seconds > 0",
            "from a Tunnel connection's handshake to the Client's control hello"),
    ) if server else (
        Key(f"{p}.tunnel-handshake", "seconds", 10.0, "seconds > 0",
            "dialing the Server and the TLS handshake; again the wait for its welcome"),
        Key(f"{p}.backend-connect", "seconds", 5.0, "seconds > 0", "TCP connect to a Local backend"),
    )
    return tuple(replace(key, reload=NEW_CONNECTIONS) for key in (  # read as each connection starts
        *first,
        Key(f"{p}.keepalive-interval", "seconds", 20.0, "seconds > 0",
            "how often a Tunnel connection sends a keepalive ping"),
        Key(f"{p}.dead-peer", "seconds", 60.0, "seconds > keepalive-interval",
            "silence after which a Tunnel connection counts as dead and is closed"),
    ))


def _limit(name: str, default: int | float, doc: str, *, bounds: tuple[int, int | None] | None = (1, None),
           shown: str | None = None, reload: str = NEW_CONNECTIONS) -> Key:
    kind = "seconds" if name.endswith("-timeout") else "integer"
    rule = "seconds >= 0 (0: off)" if kind == "seconds" else "an integer >= 1"
    return Key(f"limits.{name}", kind, default, rule, doc, shown=shown, bounds=None if kind == "seconds" else bounds,
               reload=reload)


def _managed_server() -> tuple[Key, ...]:
    """`[server.managed]`: Tunnel connections need a certificate from a control-plane CA."""
    return (
        Key("server.managed", "table", None, "see the managed keys", "managed Client authentication "
            "(docs/managed.md)", shown="unset (self-signed identities, expiry not checked)",
            reload=NEW_CONNECTIONS),
        Key("server.managed.client-ca-file", "path", REQUIRED, "a readable PEM file with at least one "
            "CA certificate", "the control-plane CA a Client certificate must chain to; read again "
            "by the next Tunnel handshake once it changed", reload=NEW_CONNECTIONS),
        Key("server.managed.accept-self-signed", "boolean", False, "true or false",
            "also accept self-signed identity certificates, as without the table (migration)",
            reload=NEW_CONNECTIONS),
    )


_STREAM_LIMITS = (
    _limit("active-streams", 16384, "routed Visitor streams"),
    _limit("stream-buffer-budget", 64 * MIB, "flow-control window bytes beyond the first 256 KiB per stream",
           bounds=(MIB, None), reload=RESTART),
    _limit("stream-idle-timeout", 600.0, "seconds with no byte in either direction", reload=RELOAD),
    _limit("stream-half-closed-timeout", 30.0, "seconds with no byte once one direction has ended", reload=RELOAD),
)
_SERVER_LIMITS = (
    _limit("intake-connections", 4096, "Visitor connections reading their ClientHello"),
    _limit("intake-per-source", 64, "the same, from one source"),
    _limit("intake-ipv4-prefix", 32, "IPv4 prefix length that counts as one source", bounds=(1, 32)),
    _limit("intake-ipv6-prefix", 64, "IPv6 prefix length that counts as one source", bounds=(1, 128)),
    _limit("tunnel-handshakes", 256, "Tunnel TLS handshakes in progress"),
    _limit("tunnel-handshakes-per-source", 16, "the same, from one source"),
    _limit("active-streams-per-tunnel", 0, "routed Visitor streams of one Tunnel (0: all with one Tunnel, "
           "half with several)", shown="all of active-streams"),
    _limit("pool-connections", 256, "Tunnel connections in one Tunnel pool"),
    _limit("stream-first-byte-timeout", 30.0, "seconds from routing until the Client side answers", reload=RELOAD),
    Key("limits.member-wait", "seconds", 5.0, "seconds >= 0 (0: off)",
        "seconds a Visitor waits for a Tunnel connection that serves its hostname (at most client-hello)",
        reload=NEW_CONNECTIONS),
    Key("limits.retries", "integer", 2, "an integer 0-5 (0: off)",
        "times a Visitor whose stream failed before any backend byte is placed on another member",
        bounds=(0, 5), reload=NEW_CONNECTIONS),
    Key("limits.retry-buffer", "integer", 64 * 1024, "an integer 1024-131072 (bytes)",
        "Visitor bytes held for a retry until the first byte comes back; beyond it, no retry",
        bounds=(1024, 128 * 1024), reload=NEW_CONNECTIONS),
    *_STREAM_LIMITS,
)

KEYS: tuple[Key, ...] = (
    Key("log-level", "string", "info", "one of " + ", ".join(LOG_LEVELS), "log threshold", choices=LOG_LEVELS),
    Key("log-format", "string", "text", "text or json", "log line format", choices=LOG_FORMATS),
    Key("server", "table", None, "required by runewarp server", "the Server's settings", shown="—"),
    Key("client", "table", None, "required by runewarp client unless both address flags are given",
        "the Client's settings", shown="—"),
    # [server]
    Key("server.hostname", "string", REQUIRED, "a valid hostname, not also a Public hostname", "the Server hostname",
        reload=RESTART),
    Key("server.public-bind-address", "address", ("0.0.0.0", 443), "literal IP:port, port 0-65535",
        "the public listener (shorthand for a public-bind-addresses of one)"),
    Key("server.public-bind-addresses", "addresses", None, "array of bind addresses, each once; not with "
        "public-bind-address", "several public listeners (ports, address families)", shown="public-bind-address"),
    Key("server.tunnel-bind-address", "address", None, "same format; shares no port with public-bind-address",
        "a listener for Tunnel connections only", shown="unset"),
    Key("server.trusted-proxies", "array of CIDRs", (), "IPv4/IPv6 CIDRs or single addresses",
        "load balancers whose connections start with a PROXY v1/v2 header naming the real peer",
        shown="[] (none)", reload=NEW_CONNECTIONS),
    Key("server.cert-dir", "path", None, "not with [server.acme]", "Server certificate material",
        shown="XDG default"),
    Key("server.public-quic", "boolean", False, "true or false",
        "a UDP socket for QUIC (HTTP/3) on the address and port of each public listener", reload=RESTART),
    Key("server.quic-idle-timeout", "seconds", 30.0, "seconds 1-3600",
        "seconds without a datagram either way after which a QUIC flow ends", reload=NEW_CONNECTIONS),
    *_both("graceful-shutdown-duration", "seconds", 30.0, "finite, >= 0", "how long open streams may finish"),
    *_both("workers", "integer or \"auto\"", 1, "an integer 1-64, or \"auto\" (the number of CPUs)",
           "processes that serve under one supervisor, one core each", bounds=(1, 64), reload=RESTART),
    *_both("pid-file", "path", None, "a file path; its folder is created",
           "where the process writes its pid (with -d, or when set)",
           shown="with -d: $XDG_RUNTIME_DIR/runewarp/ROLE.pid", reload=RESTART),
    *_both("log-file", "path", None, "a file path; its folder is created",
           "where log lines go instead of stderr (with -d, or when set); SIGUSR1 reopens it",
           shown="with -d: $XDG_STATE_HOME/runewarp/ROLE.log", reload=RESTART),
    *_both("strict-permissions", "boolean", False, "true or false", "refuse keys others can read", reload=RESTART),
    *_both("acme", "table", None, "see the acme keys", "certificates from an ACME CA", shown="unset",
           reload=RESTART),
    *_both("limits", "table", None, "see the limits keys", "resource bounds", shown="defaults",
           reload=NEW_CONNECTIONS),
    *_both("metrics", "table", None, "see the metrics keys", "metrics, health and status listener; StatsD",
           shown="unset", reload=RESTART),
    *_both("timeouts", "table", None, "see the timeouts keys", "connection timers", shown="defaults",
           reload=NEW_CONNECTIONS),
    *_both("access-log", "boolean", True, "true or false",
           "one info line per Visitor connection (Server) or stream (Client) when it ends"),
    *_both("watch-config", "boolean", False, "true or false",
           "reload when the config file or a file it names changes"),
    Key("server.tunnels", "array of tables", REQUIRED, "at least one (none with [server.api])", "the Tunnels"),
    Key("server.api", "table", None, "see the api keys", "the Server configuration API", shown="unset (off)",
        reload=RESTART),
    *_api(),
    *(replace(k, path=f"server.{k.path}") for k in _SERVER_LIMITS),
    *_acme("server"),
    *_metrics("server"),
    *_timeouts("server"),
    *_managed_server(),
    Key("server.tunnels[].name", "string", None, "1-63 of A-Z a-z 0-9 . _ -, unique", "labels logs and pools",
        shown="tunnel-<n>"),
    Key("server.tunnels[].public-hostnames", "strings", REQUIRED, "valid hostnames or *.wildcards, each in one "
        "Tunnel; no wildcard over the Server hostname", "the Public hostnames routed to this Tunnel"),
    Key("server.tunnels[].public-ports", "integers", None, "ports of public-bind-addresses, each once",
        "the public listener ports whose Visitors route to this Tunnel", shown="every public port"),
    Key("server.tunnels[].client-identity", "string", None, "64 lowercase hex characters",
        "the Client identity allowed to serve this Tunnel", shown="—"),
    Key("server.tunnels[].client-identities", "strings", None, "Client identities, each in one Tunnel",
        "several Client identities (replicas, rotation)", shown="—"),
    # [client]
    Key("client.server-address", "address", REQUIRED, "hostname[:port] or an array of them",
        "the Server addresses; a hostname's every A and AAAA address gets its own Tunnel connections",
        reload=RESTART),
    Key("client.server-name", "string", None, "a valid hostname (not an IP address)",
        "the Server hostname for SNI and the certificate check, when server-address is an IP address "
        "or another name", shown="the host of each server-address", reload=NEW_CONNECTIONS),
    Key("client.connections-per-server", "integer", 1, "an integer 1-16",
        "Tunnel connections to each address of each server-address (capacity); a reload adds or "
        "drains connections", bounds=(1, 16)),
    Key("client.resolve-interval", "seconds", 60.0, "seconds > 0",
        "how often each server-address hostname is resolved again: a new address gets its "
        "Tunnel connections, a vanished one is drained"),
    Key("client.unhealthy-after", "integer", 3, "an integer >= 1",
        "consecutive Local backend connect failures after which a Service is unhealthy on this "
        "Client (the Server then places none of its streams here)", bounds=(1, None)),
    Key("client.quic-idle-timeout", "seconds", 30.0, "seconds > 0",
        "seconds without a datagram either way after which a QUIC flow ends and its Local backend "
        "socket is closed", reload=NEW_CONNECTIONS),
    Key("client.services[].health-check", "table", None, "see the health-check keys",
        "an active check of the Local backend", shown="unset (passive only)"),
    Key("client.services[].health-check.interval", "seconds", 5.0, "seconds > 0",
        "seconds between two checks"),
    Key("client.services[].health-check.timeout", "seconds", 2.0, "seconds > 0, at most interval",
        "how long one check may take"),
    Key("client.services[].health-check.kind", "string", "tcp", "tcp or tls",
        "a TCP connect, or a TLS handshake with the Service's first hostname as SNI",
        choices=HEALTH_CHECK_KINDS),
    Key("client.server-trust", "string", "system", "system or ca-file", "which CAs the Server certificate needs",
        choices=SERVER_TRUSTS, reload=NEW_CONNECTIONS),
    Key("client.server-ca-file", "path", None, "only with server-trust = ca-file; readable",
        "the Server CA bundle", shown="XDG default", reload=NEW_CONNECTIONS),
    Key("client.identity-dir", "path", None, "a writable folder", "the Client identity", shown="XDG default",
        reload=NEW_CONNECTIONS),
    Key("client.public-cert-dir", "path", None, "needs a terminate Service; not with [client.acme]",
        "Public hostname certificates", shown="XDG default"),
    Key("client.services", "array of tables", REQUIRED, "at least one", "the Services"),
    *(replace(k, path=f"client.{k.path}") for k in _STREAM_LIMITS),
    *_acme("client"),
    *_metrics("client"),
    *_timeouts("client"),
    Key("client.managed", "table", None, "see the managed keys", "present a control-plane-issued "
        "certificate (docs/managed.md)", shown="unset (the self-signed identity certificate)",
        reload=NEW_CONNECTIONS),
    Key("client.managed.cert-file", "path", REQUIRED, "a readable PEM certificate of the identity key",
        "the short-lived certificate a control plane issued for the Client identity; read again "
        "before each dial once it changed", reload=NEW_CONNECTIONS),
    Key("client.services[].public-hostnames", "strings", None, "valid hostnames or *.wildcards, each in one "
        "Service; omitted only by a sole Catch-all Service", "the Public hostnames this Service takes", shown="—"),
    Key("client.services[].backend-address", "address", REQUIRED, "host:port, port 1-65535",
        "the Local backend"),
    Key("client.services[].tls-mode", "string", "passthrough", "passthrough or terminate",
        "who terminates the Visitor's TLS", choices=TLS_MODES),
    Key("client.services[].quic-backend-address", "address", None, "host:port, port 1-65535; not with "
        "tls-mode = terminate", "the Local backend's UDP address for QUIC (HTTP/3) flows",
        shown="unset (no QUIC)"),
    Key("client.services[].proxy-protocol", "string", None, "v1 or v2",
        "a PROXY protocol header with the Visitor's address, written to the Local backend first",
        shown="unset (off)", choices=PROXY_PROTOCOLS),
    Key("client.services[].alpn", "strings", ("http/1.1",), "only with tls-mode = terminate; distinct ALPN "
        "protocol names, 1-255 printable ASCII characters each, not acme-tls/1 or h2c",
        "the protocols the Client may agree with a Visitor, preferred first; the Local backend must speak "
        "each of them in plaintext (h2: HTTP/2 with prior knowledge)", shown='["http/1.1"] with terminate'),
    Key("client.services[].visitor-ca-file", "path", None, "only with tls-mode = terminate; a readable PEM "
        "file with at least one CA certificate", "require each Visitor to present a client certificate "
        "issued by this CA (runewarp client visitor-ca init); read again when it changes",
        shown="unset (no client certificate asked)"),
    # [proxy]: read by `runewarp proxy -c FILE`, which has no reload (restart it)
    Key("proxy.forwards", "array of tables", REQUIRED, "at least one", "the forwards, one listener each",
        reload=RESTART),
    Key("proxy.forwards[].hostname", "string", REQUIRED, "a valid hostname",
        "the Public hostname of a terminate Service: SNI and the name its certificate must carry",
        reload=RESTART),
    Key("proxy.forwards[].listen", "address", REQUIRED, "[IP:]PORT, a literal IP, port 0-65535, each once",
        "where local TCP connections are accepted", shown="required (IP default 127.0.0.1)", reload=RESTART),
    Key("proxy.forwards[].server", "address", None, "host[:port], port 1-65535 (default 443)",
        "where the Server is dialled", shown="the hostname, port 443", reload=RESTART),
    Key("proxy.forwards[].ca-file", "path", None, "a readable PEM bundle",
        "trust exactly these CAs for the Service certificate", shown="unset (the system store)",
        reload=RESTART),
    Key("proxy.forwards[].cert", "path", None, "a readable PEM certificate (chain); needs key",
        "the client certificate presented to a Service with visitor-ca-file", shown="unset (none)",
        reload=RESTART),
    Key("proxy.forwards[].key", "path", None, "a readable PEM private key; needs cert",
        "the key of cert", shown="unset (none)", reload=RESTART),
)

BY_PATH: dict[str, Key] = {k.path: k for k in KEYS}


def pattern(path: str) -> str:
    """The table path of a key path: array indexes become `[]`."""
    out, depth = [], 0
    for c in path:
        if c == "[":
            depth += 1
            out.append("[]")
        elif c == "]":
            depth -= 1
        elif not depth:
            out.append(c)
    return "".join(out)


def key(path: str) -> Key:
    return BY_PATH[pattern(path)]


def default(path: str) -> Any:
    return BY_PATH[path].default


def names(prefix: str | None) -> tuple[str, ...]:
    """The keys allowed directly in the table at `prefix` (None: the top level)."""
    start = f"{pattern(prefix)}." if prefix else ""
    return tuple(k.path[len(start):] for k in KEYS
                 if k.path.startswith(start) and "." not in k.path[len(start):])
