"""`runewarp server` and `runewarp client`: load and check the config, then hand the
runtime to the lifecycle."""

import os

from .. import material
from ..errors import ConfigError
from ..logs import log
from .common import CONFIG, HELP, check_key_permissions, check_material, load, required_config, \
    selected_config

SERVER = f"""Run the Server: route each Visitor by the SNI of its ClientHello to a Tunnel
connection, without decrypting it.

Usage:
  runewarp server [-c FILE]

Options:
{CONFIG}
{HELP}

Signals: TERM/INT drain gracefully, HUP reloads the config (a bad one is refused
and the running one kept).
"""

CLIENT = f"""Run the Client: keep Tunnel connections to the Server and hand each stream to
its Service's Local backend.

Usage:
  runewarp client [-c FILE] [--server-address A] [--backend-address B]
                  [--server-ca-file F] [--identity-dir D]

Options:
{CONFIG}
  --server-address A       Server address HOST[:PORT] (Client without a config file).
  --backend-address B      Local backend HOST:PORT: one Catch-all passthrough Service.
  --server-ca-file F       Trust exactly this CA bundle for the Server certificate.
  --identity-dir D         Client identity folder.
{HELP}

Signals: TERM/INT drain gracefully, HUP reloads the config (a bad one is refused
and the running one kept).
"""


def run_server(args):
    from ..io.server import Server
    from ..lifecycle import Lifecycle

    path = required_config(args)
    cfg = load("server", path)
    log.configure(cfg.log_level, cfg.log_format)
    server = Server(cfg, log)
    if cfg.acme is None:
        # Permissions first: a start refused by strict-permissions writes nothing.
        check_key_permissions(material.server_key_files(cfg.cert_dir), cfg, "server")
        # Renews a due certificate the Server issued itself; refuses one that does not
        # name server.hostname, or cannot serve and cannot be renewed (exit 2).
        check_material(server.check_certificate, cfg.source)
        check_material(lambda: server.certificate.current(), cfg.source)
    return Lifecycle(server, lambda: load("server", path),
                     cfg.graceful_shutdown_duration, log).run()


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
    check_material(lambda: material.show_identity(cfg.identity_dir), cfg.source)
    if cfg.server_trust == "ca-file" and not os.access(cfg.server_ca_file, os.R_OK):
        raise ConfigError(f"cannot read the Server CA bundle {cfg.server_ca_file}; copy the "
                          "Server's server-ca.crt there or set server-ca-file",
                          file=cfg.source or "command line", key="client.server-ca-file")
    public = (cfg.public_cert_dir, cfg.terminate_hostnames) if cfg.acme is None and \
        cfg.public_cert_dir is not None else (None, None)
    check_key_permissions(material.client_key_files(cfg.identity_dir, *public), cfg, "client")
    return Lifecycle(Client(cfg, log), reload, cfg.graceful_shutdown_duration, log).run()


COMMANDS = (
    (("server",), SERVER, run_server),
    (("client",), CLIENT, run_client),
)
