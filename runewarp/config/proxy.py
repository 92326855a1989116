"""The [proxy] side: `[[proxy.forwards]]`, or the one forward the command line gives.

Both go through `parse_forward`, so a bad value reads the same either way:
`FILE: proxy.forwards[0].listen: …` or `command line: --listen: …`.
"""

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from . import shared
from .addresses import bind_address, normalize_hostname, server_address
from .model import ForwardConfig, ProxyConfig
from .reader import COMMAND_LINE, Context, join, read_toml
from .schema import DEFAULT_SERVER_PORT

LOOPBACK = "127.0.0.1"


def load_proxy_config(path: Path, *, env: Mapping[str, str] = os.environ) -> ProxyConfig:
    """Read and validate the `[proxy]` table of `path`."""
    source = Path(path)
    doc = read_toml(source)
    ctx = Context(str(source), source.absolute().parent, env)
    # [proxy] belongs to a Visitor's file, not to the Server's or Client's: only this loader
    # takes it, and the other top-level keys are checked as everywhere.
    ctx.check_keys({k: v for k, v in doc.items() if k != "proxy"}, None)
    if "proxy" not in doc:
        raise ctx.error("proxy", "missing [proxy] table")
    log_level, log_format = shared.logging(ctx, doc)
    proxy = ctx.table(doc, None, "proxy")
    ctx.check_keys(proxy, "proxy")
    forwards, listens = [], {}
    for prefix, entry in ctx.array_of_tables(proxy, "proxy", "forwards"):
        forward = parse_forward(ctx, entry, lambda key, prefix=prefix: join(prefix, key),
                                label=prefix, stdio=False)
        if forward.listen[1] and forward.listen in listens:
            raise ctx.error(join(prefix, "listen"), f"{entry['listen']!r} is already used by "
                                                    f"{listens[forward.listen]}")
        listens[forward.listen] = join(prefix, "listen")
        forwards.append(forward)
    return ProxyConfig(forwards=tuple(forwards), log_level=log_level, log_format=log_format,
                       source=source.absolute())


def command_line_forward(values: Mapping[str, object], stdio: bool,
                         env: Mapping[str, str] = os.environ) -> ForwardConfig:
    """The forward of `--hostname`, `--listen`, … (`values` by key name, None: not given)."""
    ctx = Context(COMMAND_LINE, Path.cwd(), env)
    entry = {key: value for key, value in values.items() if value is not None}
    return parse_forward(ctx, entry, lambda key: f"--{key}", label="proxy", stdio=stdio)


def parse_forward(ctx: Context, entry: dict, name: Callable[[str], str], *, label: str,
                  stdio: bool) -> ForwardConfig:
    """One forward from `entry`; `name(key)` is how an error names a key."""
    def string(key):
        value = entry.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ctx.error(name(key), f"expected a string, got {type(value).__name__}")
        if not value:
            raise ctx.error(name(key), "must not be empty")
        return value

    def readable(key):
        value = string(key)
        if value is None:
            return None
        path = ctx.resolve(value)
        if not os.access(path, os.R_OK):
            raise ctx.error(name(key), f"cannot read {path}")
        return path

    text = string("hostname")
    if text is None:
        raise ctx.error(name("hostname"), "required key is missing (the Public hostname)")
    hostname = normalize_hostname(ctx, name("hostname"), text)
    listen = None
    if not stdio:
        text = string("listen")
        if text is None:
            raise ctx.error(name("listen"), "required key is missing ([IP:]PORT)")
        listen = bind_address(ctx, name("listen"), f"{LOOPBACK}:{text}" if text.isdigit() else text)
    text = string("server")
    server = (hostname, DEFAULT_SERVER_PORT) if text is None else \
        server_address(ctx, name("server"), text, ip_allowed=True)
    ca_file = readable("ca-file")
    cert, key = readable("cert"), readable("key")
    if (cert is None) != (key is None):
        have, missing = ("cert", "key") if key is None else ("key", "cert")
        raise ctx.error(name(have), f"needs {name(missing)} as well (a client certificate and "
                                    "its key)")
    return ForwardConfig(hostname=hostname, server=server, listen=listen, ca_file=ca_file,
                         cert=cert, key=key, label=label, listen_key=name("listen"))
