"""`runewarp server|client status`: ask the running process at its metrics listener."""

import json
import time
import urllib.error
import urllib.request
from functools import partial

from ..proto.address import format_address
from .background import not_running
from .common import CONFIG, HELP, fail, load, required_config

STATUS = """Print the state of the running {role} of the selected config: Tunnels,
Tunnel connections, streams, certificates. It asks the process at its metrics
listener ([{role}.metrics] bind-address).

Usage:
  runewarp {role} status [-c FILE] [--json]

Options:
{config}
  --json                   Print the /status document as JSON.
{help}
"""

STATUS_TIMEOUT = 3.0


def show_status(args, role):
    """GET /status from the metrics listener of the selected config; exit 1 when no process
    answers there, or when the config enables no listener (naming the key that does)."""
    from .. import status

    path = required_config(args)
    cfg = load(role, path)
    key = f"{role}.metrics.bind-address"
    if cfg.metrics is None or cfg.metrics.bind_address is None:
        return fail(f"{path}: the metrics listener is not enabled; set bind-address in "
                    f"[{role}.metrics] ({key}, e.g. \"127.0.0.1:9464\") and restart the "
                    f"{role}", 1)
    host, port = cfg.metrics.bind_address
    if port == 0:
        return fail(f"{path}: {key} has port 0 (any free port): status needs a fixed port", 1)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    address = format_address((host, port))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(f"http://{address}/status", timeout=STATUS_TIMEOUT) as response:
            body = response.read(8 * 1024 * 1024).decode()
        document = json.loads(body)
    except urllib.error.HTTPError as exc:
        return fail(f"the {role} at {address} ({key} in {path}) answered /status with "
                    f"HTTP {exc.code}", 1)
    except (OSError, ValueError) as exc:  # refused, timed out, not HTTP, not JSON
        absent = not_running(role, path)
        if absent is not None:
            return fail(f"the {role} is not running: nothing answers at {address} ({key} in "
                        f"{path}) and there is {absent}", 1)
        reason = getattr(exc, "reason", None) or exc
        return fail(f"the {role} is not running or not reachable at {address} ({key} in "
                    f"{path}): {reason}", 1)
    if args["--json"]:
        print(body.rstrip("\n"))
    else:
        print(status.render(document, time.time()), end="")
    return 0


COMMANDS = tuple(((role, "status"), STATUS.format(role=role, config=CONFIG, help=HELP),
                  partial(show_status, role=role)) for role in ("server", "client"))
