"""`runewarp proxy`: a Visitor's plain TCP (ssh, a database) to a terminate Service, in TLS."""

from pathlib import Path

from .. import config as configuration
from ..errors import ConfigError
from ..io.listener import BindError
from ..logs import log
from .common import HELP, fail

PROXY = f"""Connect plain TCP to a terminate Service: each connection is wrapped in TLS to
the Server, with --hostname as SNI and as the name its certificate must carry.

Usage:
  runewarp proxy --hostname H [--server ADDR] (--listen ADDR | --stdio)
                 [--ca-file F | --system-trust] [--cert F --key F]
  runewarp proxy -c FILE

Options:
  --hostname H             Public hostname of the terminate Service.
  --server ADDR            Server HOST[:PORT] to dial (default: the hostname, port 443).
  --listen ADDR            Accept local TCP connections on [IP:]PORT (IP default
                           127.0.0.1), one TLS connection to the Server each.
  --stdio                  One connection over stdin/stdout (ssh ProxyCommand).
  --ca-file F              Trust exactly this CA bundle (e.g. the Public hostname CA).
  --system-trust           Trust the system store (the default).
  --cert F                 Client certificate to present (PEM), with --key.
  --key F                  Private key of --cert.
  -c FILE, --config FILE   Serve every [[proxy.forwards]] of this config file.
{HELP}

Errors are one line each: on stderr with exit 1 for --stdio, logged per connection
for --listen.  TERM/INT close the listeners and let connections end; a second one
aborts them.
"""

_KEYS = ("hostname", "server", "listen", "ca-file", "cert", "key")


def run_proxy(args):
    from ..io.visitorproxy import VisitorError, serve, stdio

    if args["--config"]:
        path = Path(args["--config"]).expanduser()
        if not path.exists():
            raise ConfigError("config file does not exist", file=path)
        cfg = configuration.load_proxy_config(path)
        log.configure(cfg.log_level, cfg.log_format)
        return serve(cfg.forwards, log)
    forward = configuration.command_line_forward({key: args[f"--{key}"] for key in _KEYS},
                                                 stdio=args["--stdio"])
    if forward.listen is not None:
        try:
            return serve((forward,), log)
        except BindError as exc:  # told by its flag, not by a config file
            return fail(f"command line: {exc}", 1)
    try:
        return stdio(forward, log)
    except VisitorError as exc:
        return fail(str(exc), 1)


COMMANDS = (
    (("proxy",), PROXY, run_proxy),
)
