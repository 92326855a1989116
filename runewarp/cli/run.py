"""`runewarp server` and `runewarp client`: load and check the config, then hand the
runtime to the lifecycle."""

from functools import partial

from ..errors import ConfigError
from ..logs import log
from ..workers import this_worker
from . import background
from .common import CONFIG, HELP, check_before_start, load, required_config, selected_config

DETACH = ("  -d, --detach             Run in the background: the pid goes to pid-file, log lines\n"
          "                           to log-file; returns once it serves, printing its pid.")

SERVER = f"""Run the Server: route each Visitor by the SNI of its ClientHello to a Tunnel
connection, without decrypting it.

Usage:
  runewarp server [-c FILE] [-d]

Options:
{CONFIG}
{DETACH}
{HELP}

Signals: TERM/INT drain gracefully, HUP reloads the config (a bad one is refused
and the running one kept), USR1 reopens the log file, USR2 hands the listening
sockets over to a new Server process started with the same command line, then
drains (a new process that fails to start leaves this one serving).
"""

CLIENT = f"""Run the Client: keep Tunnel connections to the Server and hand each stream to
its Service's Local backend.

Usage:
  runewarp client [-c FILE] [-d] [--server-address A] [--backend-address B]
                  [--server-ca-file F] [--identity-dir D]

Options:
{CONFIG}
{DETACH}
  --server-address A       Server address HOST[:PORT] (Client without a config file).
  --backend-address B      Local backend HOST:PORT: one Catch-all passthrough Service.
  --server-ca-file F       Trust exactly this CA bundle for the Server certificate.
  --identity-dir D         Client identity folder.
{HELP}

Signals: TERM/INT drain gracefully, HUP reloads the config (a bad one is refused
and the running one kept), USR1 reopens the log file; USR2 (a Server's hand-over)
is ignored with a warning.
"""


def run_server(args):
    from .. import handover
    from ..io.listener import bind_for_workers
    from ..io.server import Server
    from ..lifecycle import Lifecycle

    path = required_config(args)
    cfg = load("server", path)
    log.configure(cfg.log_level, cfg.log_format)
    worker = this_worker()
    log.context.update(worker.log_fields())
    server = Server(cfg, log)
    check_before_start("server", cfg, server)  # renews a due Server certificate: once, here
    if _supervises(cfg, worker):
        return background.run(args, "server", cfg, _supervisor(
            "server", cfg, lambda: load("server", path), bind=partial(bind_for_workers, cfg),
            hand_over=True))
    lifecycle = Lifecycle(server, lambda: load("server", path), cfg.graceful_shutdown_duration, log)
    if worker.count == 1:  # a worker's sockets are its supervisor's to hand over
        lifecycle.hand_over = lambda: handover.start_successor(server.handover_sockets())
    return background.run(args, "server", cfg, lifecycle)


def _supervises(cfg, worker):
    """Whether this process is the supervisor of `workers = N` (not one of its workers)."""
    return cfg.workers > 1 and worker.count == 1


def _supervisor(role, cfg, reload, **kwargs):
    from ..supervisor import Supervisor

    return Supervisor(role, cfg, reload, log, **kwargs)


def client_overrides(args):
    return {k.lstrip("-"): args[k] for k in ("--server-address", "--backend-address",
                                             "--server-ca-file", "--identity-dir")
            if args.get(k)}


def run_client(args):
    from ..io.client import Client
    from ..lifecycle import Lifecycle

    path = None if args["--server-address"] and args["--backend-address"] and not \
        args["--config"] else selected_config(args)
    overrides = client_overrides(args)
    if path is None and not overrides:
        raise ConfigError("no config file: pass -c FILE, or --server-address and "
                          "--backend-address", file="command line")

    def reload():
        return load("client", path, overrides=overrides)

    cfg = reload()
    log.configure(cfg.log_level, cfg.log_format)
    worker = this_worker()
    log.context.update(worker.log_fields())
    check_before_start("client", cfg)
    client = Client(cfg, log)
    if _supervises(cfg, worker):
        client.public_certs.upkeep(cfg.terminate_hostnames)  # a due renewal: once, here
        return background.run(args, "client", cfg, _supervisor("client", cfg, reload))
    return background.run(args, "client", cfg,
                          Lifecycle(client, reload, cfg.graceful_shutdown_duration, log))


COMMANDS = (
    (("server",), SERVER, run_server),
    (("client",), CLIENT, run_client),
)
