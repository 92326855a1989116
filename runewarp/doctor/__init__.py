"""`runewarp doctor`: check a Server's or a Client's config, material and network, one
line per check.

It reads files and probes peers with short deadlines; it never binds a listener,
writes a file or renews anything (the daemon does that).  It expects the
gevent-patched process the CLI runs in.
"""

import datetime as dt

from ..config import load_client_config, load_server_config
from ..errors import ConfigError
from . import client, server
from .checks import as_json, exit_status, fail, line, ok


def run(role, path, as_json_output, out) -> int:
    """Run every check of `role` ("server" or "client") on the config at `path`; print
    them to `out`, as they finish (text) or at the end (JSON).  0 unless one failed."""
    results = []
    for result in _checks(role, path):
        results.append(result)
        if not as_json_output:
            print(line(result), file=out, flush=True)
    if as_json_output:
        print(as_json(results), file=out)
    return exit_status(results)


def _checks(role, path):
    loader = load_server_config if role == "server" else load_client_config
    try:
        cfg = loader(path)
    except ConfigError as exc:
        yield fail("config", str(exc), "correct the key the error names")
        return
    yield ok("config", f"{cfg.source}: [{role}] is valid")
    now = dt.datetime.now(dt.UTC)
    yield from (server if role == "server" else client).checks(cfg, now)
