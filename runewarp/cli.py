"""Runewarp — publish TLS services from behind NAT; the public edge never sees plaintext.

Usage:
  runewarp server [-c FILE]
  runewarp server cert init [--hostname H] [--dir D] [-c FILE]
  runewarp server cert renew [--dir D] [-c FILE]
  runewarp server cert rotate-ca [--hostname H] [--dir D] [-c FILE]
  runewarp server cert renew-acme [-c FILE]
  runewarp server status [-c FILE] [--json]
  runewarp client [-c FILE] [--server-address A] [--backend-address B]
                  [--server-ca-file F] [--identity-dir D]
  runewarp client identity (init | renew | rotate | show) [--dir D] [-c FILE]
  runewarp client public-cert (init | renew) [--hostname H]... [--dir D] [-c FILE]
  runewarp client public-cert rotate-ca [--dir D] [-c FILE]
  runewarp client public-cert renew-acme [-c FILE]
  runewarp client status [-c FILE] [--json]
  runewarp demo [--keep]
  runewarp (-h | --help)
  runewarp --version

Options:
  -c FILE, --config FILE   Config file (default: $XDG_CONFIG_HOME/runewarp/config.toml
                           when it exists).
  --dir D                  Material folder; overrides the config and the XDG default.
  --hostname H             Server hostname / Public hostname for the certificate.
  --server-address A       Server address HOST[:PORT] (Client without a config file).
  --backend-address B      Local backend HOST:PORT: one Catch-all passthrough Service.
  --server-ca-file F       Trust exactly this CA bundle for the Server certificate.
  --identity-dir D         Client identity folder.
  --keep                   Leave the demo running and print a curl command.
  --json                   status: print the /status document as JSON.
  -h, --help               Show this help.
  --version                Show the version.

renew-acme runs one certbot renewal for the ACME certificates of the selected
config (for cron or a systemd timer); the running Server/Client answers the
challenges and picks the new certificate up without a restart.

status asks the running Server/Client of the selected config for its state, at
the metrics listener ([server.metrics] / [client.metrics] bind-address).

Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

from docopt import DocoptExit, docopt

from . import __version__, config as configuration, material
from .errors import ConfigError, MaterialError
from .io.listener import BindError
from .logs import log
from .proto.address import format_address
from .proto.hostname import HostnameError, normalize
from .systemd import ActivationError


def _fail(message, status):
    print(f"error: {message}", file=sys.stderr)
    return status


def _selected_config(args):
    """Explicit -c must exist; otherwise the default path, when it exists."""
    if args["--config"]:
        path = Path(args["--config"]).expanduser()
        if not path.exists():
            raise ConfigError("config file does not exist", file=path)
        return path
    default = configuration.default_config_path()
    return default if default.exists() else None


def _folder(args, path, key, default):
    """--dir, else the key in a config that may be incomplete, else the XDG default."""
    if args["--dir"]:
        return Path(args["--dir"]).expanduser().resolve()
    return configuration.peek(path, key) or default


# -- verbs --

def renew_acme(args, role):
    from . import acme

    path = _selected_config(args)
    if role == "server":
        cfg = configuration.load_server_config(path)
        hostnames = [cfg.hostname]
    else:
        cfg = configuration.load_client_config(path)
        hostnames = cfg.terminate_hostnames
    if cfg.acme is None:
        raise ConfigError(f"no [{role}.acme] table: nothing to renew", file=cfg.source,
                          key=f"{role}.acme")
    log.configure(cfg.log_level, cfg.log_format)
    return acme.renew_once(cfg.acme, hostnames, log, role)


def server_cert(args):
    path = _selected_config(args)
    cert_dir = _folder(args, path, "server.cert-dir", configuration.default_server_cert_dir())
    given = args["--hostname"]  # a list: docopt shares the option with public-cert
    if len(given) > 1:
        raise ConfigError("the Server has one hostname", file="command line", key="--hostname")
    hostname = given[0] if given else configuration.peek(path, "server.hostname")
    if hostname is not None:
        try:
            hostname = normalize(str(hostname))
        except HostnameError as exc:
            raise ConfigError(str(exc), file="command line" if given else path,
                              key="--hostname" if given else "server.hostname")
    if args["init"]:
        if hostname is None:
            raise ConfigError("no Server hostname: pass --hostname or set server.hostname",
                              file="command line", key="--hostname")
        result = material.init_server_cert(cert_dir, hostname)
        if not result.created:
            print(f"Server certificate material already complete in {cert_dir}", file=sys.stderr)
    elif args["renew"]:
        result = material.renew_server_cert(cert_dir, hostname=hostname)
    else:
        result = material.rotate_server_ca(cert_dir, hostname=hostname)
        print("warning: new Server CA created; every Client must now trust the new "
              f"{cert_dir / 'server-ca.crt'} (server-ca-file) before it can reconnect",
              file=sys.stderr)
    print(cert_dir / "server-ca.crt")
    return 0


def client_identity(args):
    path = _selected_config(args)
    identity_dir = _folder(args, path, "client.identity-dir", configuration.default_client_identity_dir())
    if args["show"]:
        print(material.show_identity(identity_dir))
        return 0
    if args["init"]:
        result = material.init_identity(identity_dir)
        if not result.created:
            print(f"Client identity already exists in {identity_dir}", file=sys.stderr)
    elif args["renew"]:
        result = material.renew_identity(identity_dir)
    else:
        result = material.rotate_identity(identity_dir)
        print("warning: the Client identity changed; list the new identity in the Server's "
              "Tunnel (client-identity) before this Client can connect", file=sys.stderr)
    print(result.identity)
    return 0


def client_public_cert(args):
    path = _selected_config(args)
    cert_dir = _folder(args, path, "client.public-cert-dir",
                       configuration.default_client_public_cert_dir())
    hostnames = args["--hostname"]
    if not hostnames and not args["rotate-ca"]:
        hostnames = _terminate_hostnames(path)
    if args["init"]:
        result = material.init_public_certs(cert_dir, hostnames)
    elif args["renew"]:
        result = material.renew_public_certs(cert_dir, hostnames)
    else:
        result = material.rotate_public_ca(cert_dir)
        print("warning: new Public hostname CA; Visitors that pinned the old public-ca.crt "
              "must get the new one", file=sys.stderr)
    for leaf in result.leaves:
        print(leaf.cert_path)
    return 0


def _terminate_hostnames(path):
    services = configuration.peek(path, "client.services")
    names = [h for s in services if isinstance(s, dict) and s.get("tls-mode") == "terminate"
             for h in s.get("public-hostnames", [])] if isinstance(services, list) else []
    if not names:
        raise ConfigError("no hostname: pass --hostname or select a config with a terminate "
                          "Service", file=path or "command line", key="--hostname")
    return names


def run_server(args):
    from .io.server import Server
    from .lifecycle import Lifecycle

    path = _selected_config(args)
    if path is None:
        raise ConfigError("no config file: pass -c FILE or create "
                          f"{configuration.default_config_path()}", file="command line")
    cfg = configuration.load_server_config(path)
    log.configure(cfg.log_level, cfg.log_format)
    server = Server(cfg, log)
    if cfg.acme is None:
        # Permissions first: a start refused by strict-permissions writes nothing.
        _check_key_permissions(material.server_key_files(cfg.cert_dir), cfg, "server")
        # Renews a due certificate the Server issued itself; refuses one that does not
        # name server.hostname, or cannot serve and cannot be renewed (exit 2).
        _check_material(server.check_certificate, cfg.source)
        _check_material(lambda: server.certificate.current(), cfg.source)
    return Lifecycle(server, lambda: configuration.load_server_config(path),
                     cfg.graceful_shutdown_duration, log).run()


def run_client(args):
    from .io.client import Client
    from .lifecycle import Lifecycle

    path = None if args["--server-address"] and args["--backend-address"] and not \
        args["--config"] else _selected_config(args)
    overrides = {k.lstrip("-"): args[k] for k in ("--server-address", "--backend-address",
                                                  "--server-ca-file", "--identity-dir")
                 if args[k]}
    if path is None and not overrides:
        raise ConfigError("no config file: pass -c FILE, or --server-address and "
                          "--backend-address", file="command line")

    def load():
        return configuration.load_client_config(path, overrides=overrides)

    cfg = load()
    log.configure(cfg.log_level, cfg.log_format)
    _check_material(lambda: material.show_identity(cfg.identity_dir), cfg.source)
    if cfg.server_trust == "ca-file" and not os.access(cfg.server_ca_file, os.R_OK):
        raise ConfigError(f"cannot read the Server CA bundle {cfg.server_ca_file}; copy the "
                          "Server's server-ca.crt there or set server-ca-file",
                          file=cfg.source or "command line", key="client.server-ca-file")
    public = (cfg.public_cert_dir, cfg.terminate_hostnames) if cfg.acme is None and \
        cfg.public_cert_dir is not None else (None, None)
    _check_key_permissions(material.client_key_files(cfg.identity_dir, *public), cfg, "client")
    return Lifecycle(Client(cfg, log), load, cfg.graceful_shutdown_duration, log).run()


def _check_key_permissions(paths, cfg, role):
    """Warn about a private key others can read; with strict-permissions, refuse to start."""
    for problem in material.key_permission_problems(paths):
        if cfg.strict_permissions:
            raise ConfigError(problem, file=cfg.source or "command line",
                              key=f"{role}.strict-permissions")
        log.warn("key-permissions", reason=problem)


def _check_material(check, source):
    """Unusable material at start is a configuration error (exit 2), naming the key to
    blame when the check knows it (a certificate refused for `server.hostname`)."""
    try:
        check()
    except MaterialError as exc:
        raise ConfigError(str(exc), file=source or "command line",
                          key=getattr(exc, "key", None)) from None


STATUS_TIMEOUT = 3.0


def show_status(args, role):
    """GET /status from the metrics listener of the selected config; exit 1 when no process
    answers there, or when the config enables no listener (naming the key that does)."""
    from . import status

    path = _selected_config(args)
    if path is None:
        raise ConfigError(f"no config file: pass -c FILE or create "
                          f"{configuration.default_config_path()}", file="command line")
    load = configuration.load_server_config if role == "server" else \
        configuration.load_client_config
    cfg = load(path)
    key = f"{role}.metrics.bind-address"
    if cfg.metrics is None or cfg.metrics.bind_address is None:
        return _fail(f"{path}: the metrics listener is not enabled; set bind-address in "
                     f"[{role}.metrics] ({key}, e.g. \"127.0.0.1:9464\") and restart the "
                     f"{role}", 1)
    host, port = cfg.metrics.bind_address
    if port == 0:
        return _fail(f"{path}: {key} has port 0 (any free port): status needs a fixed port", 1)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    address = format_address((host, port))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(f"http://{address}/status", timeout=STATUS_TIMEOUT) as response:
            body = response.read(8 * 1024 * 1024).decode()
        document = json.loads(body)
    except urllib.error.HTTPError as exc:
        return _fail(f"the {role} at {address} ({key} in {path}) answered /status with "
                     f"HTTP {exc.code}", 1)
    except (OSError, ValueError) as exc:  # refused, timed out, not HTTP, not JSON
        reason = getattr(exc, "reason", None) or exc
        return _fail(f"the {role} is not running or not reachable at {address} ({key} in "
                     f"{path}): {reason}", 1)
    if args["--json"]:
        print(body.rstrip("\n"))
    else:
        print(status.render(document, time.time()), end="")
    return 0


def run_demo(args):
    from .demo import demo

    return demo(keep=args["--keep"])


# The first entry whose command words are all given runs; more specific entries come first.
VERBS = (
    (("server", "renew-acme"), partial(renew_acme, role="server")),
    (("server", "status"), partial(show_status, role="server")),
    (("server", "cert"), server_cert),
    (("server",), run_server),
    (("client", "identity"), client_identity),
    (("client", "renew-acme"), partial(renew_acme, role="client")),
    (("client", "status"), partial(show_status, role="client")),
    (("client", "public-cert"), client_public_cert),
    (("client",), run_client),
    (("demo",), run_demo),
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = docopt(__doc__, argv, version=f"runewarp {__version__}")
    except DocoptExit as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        for words, verb in VERBS:
            if all(args[word] for word in words):
                return verb(args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except MaterialError as exc:
        return _fail(str(exc), 1)
    except (BindError, ActivationError) as exc:  # a runtime failure (exit 1), told by file
        source = Path(args["--config"]).expanduser() if args["--config"] else \
            configuration.default_config_path()
        return _fail(f"{source}: {exc}", 1)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)
    except KeyboardInterrupt:
        return 130
    return 2
