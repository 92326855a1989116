"""`[server.api]`: the Server configuration API's listener and where API Tunnels are kept
(docs/api.md).  API Tunnels themselves are checked by server.with_api_tunnels, the file's
Tunnel rules."""

from pathlib import Path
from urllib.parse import urlsplit

from .addresses import bind_address, shares_port
from .model import ApiConfig
from .paths import xdg_state_home
from .reader import Context, join
from .shared import ca_file


def default_state_file(env) -> Path:
    return xdg_state_home(env) / "runewarp" / "server" / "api-tunnels.json"


def parse_api(ctx: Context, server: dict, taken: dict[str, tuple[str, int]]) -> ApiConfig | None:
    """`[server.api]` (None without the table); `taken`: key -> every other bind address of the
    Server, which the API must not share (never on the public port)."""
    p = "server.api"
    table = ctx.table(server, "server", "api")
    if table is None:
        return None
    ctx.check_keys(table, p)
    bind = ctx.string(table, p, "bind-address")
    address = bind_address(ctx, join(p, "bind-address"), bind) if bind else None
    for other_key, other in taken.items():
        if shares_port(address, other):
            raise ctx.error(join(p, "bind-address"), f"shares a port with {other_key}; the API never "
                                                     "shares a listener")
    client_ca = ctx.path(table, p, "client-ca-file")
    if client_ca is not None:
        client_ca = ca_file(ctx, client_ca, join(p, "client-ca-file"),
                            "'runewarp client visitor-ca init', kept for the API alone")
    if address is not None and client_ca is None:
        raise ctx.error(join(p, "client-ca-file"), "required with bind-address: the CA whose client "
                                                   "certificates may call the API")
    cert, key = _readable(ctx, table, p, "etcd-cert-file"), _readable(ctx, table, p, "etcd-key-file")
    if (cert is None) != (key is None):
        missing = "etcd-key-file" if key is None else "etcd-cert-file"
        raise ctx.error(join(p, missing), "etcd-cert-file and etcd-key-file go together")
    prefix = ctx.setting(table, p, "etcd-prefix")
    if not prefix.startswith("/") or not prefix.endswith("/") or len(prefix) < 2:
        raise ctx.error(join(p, "etcd-prefix"), f"{prefix!r}: must start and end with / (e.g. "
                                                "/runewarp/tunnels/)")
    return ApiConfig(
        bind_address=address,
        client_ca_file=client_ca,
        state_file=ctx.path(table, p, "state-file") or default_state_file(ctx.env),
        etcd_endpoints=_endpoints(ctx, table, p),
        etcd_prefix=prefix,
        etcd_ca_file=_readable(ctx, table, p, "etcd-ca-file"),
        etcd_cert_file=cert,
        etcd_key_file=key,
    )


def _endpoints(ctx: Context, table: dict, p: str) -> tuple[str, ...]:
    if "etcd-endpoints" not in table:
        return ()
    key = join(p, "etcd-endpoints")
    if table["etcd-endpoints"] == []:
        return ()
    urls = ctx.string_list(table, p, "etcd-endpoints")
    for i, url in enumerate(urls):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ctx.error(join(key, i), f"{url!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ctx.error(join(key, i), f"{url!r}: must be an http:// or https:// URL with a host "
                                          "and no path, e.g. http://127.0.0.1:2379")
        if url in urls[:i]:
            raise ctx.error(join(key, i), f"{url!r} is listed twice")
    return tuple(urls)


def _readable(ctx: Context, table: dict, p: str, name: str):
    """A path key whose file must be readable now, so a typo fails the start, not each use."""
    path = ctx.path(table, p, name)
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ctx.error(join(p, name), f"cannot read {path}: {e.strerror or e}") from None
    return path
