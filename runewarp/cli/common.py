"""What the commands share: the option texts of their usage docs, the selected config
file and role, the checks a start makes before it binds, and the error line."""

import os
import sys
from pathlib import Path

from .. import config as configuration, material
from ..errors import ConfigError, MaterialError
from ..io.servercert import check_usable
from ..io.upkeep import utcnow
from ..logs import log

# Option descriptions, written once and placed in each command's usage doc.
CONFIG = ("  -c FILE, --config FILE   Config file (default: $XDG_CONFIG_HOME/runewarp/config.toml\n"
          "                           when it exists).")
DIR = "  --dir D                  Material folder; overrides the config and the XDG default."
JSON = "  --json                   Print JSON instead of text."
HELP = "  -h, --help               Show this help."
ROLES = ("server", "client")


def fail(message, status):
    print(f"error: {message}", file=sys.stderr)
    return status


def selected_config(args):
    """Explicit -c must exist; otherwise the default path, when it exists."""
    if args["--config"]:
        path = Path(args["--config"]).expanduser()
        if not path.exists():
            raise ConfigError("config file does not exist", file=path)
        return path
    default = configuration.default_config_path()
    return default if default.exists() else None


def required_config(args):
    """The selected config file; a command that needs one and has none is a config error."""
    path = selected_config(args)
    if path is None:
        raise ConfigError("no config file: pass -c FILE or create "
                          f"{configuration.default_config_path()}", file="command line")
    return path


def selected_role(args, path):
    """The role the command names, else the only role table of the file (both: ask)."""
    for role in ROLES:
        if args.get(role):
            return role
    present = [role for role in ROLES if configuration.peek(path, role) is not None]
    if len(present) == 1:
        return present[0]
    if not present:
        raise ConfigError("no [server] or [client] table", file=path)
    raise ConfigError("the file has both [server] and [client]: name the role "
                      "(server or client) on the command line", file=path)


def load(role, path, **kwargs):
    loader = configuration.load_server_config if role == "server" else \
        configuration.load_client_config
    return loader(path, **kwargs)


def folder(args, path, key, default):
    """--dir, else the key in a config that may be incomplete, else the XDG default."""
    if args["--dir"]:
        return Path(args["--dir"]).expanduser().resolve()
    return configuration.peek(path, key) or default


def own_folder(args, default):
    """--dir, else the XDG default: for the commands that read no config (the small CAs)."""
    return Path(args["--dir"]).expanduser().resolve() if args["--dir"] else default


def print_ca(result, what):
    """What `... ca init` prints: the CA certificate's path (a kept CA said on stderr)."""
    if not result.created:
        print(f"{what} already exists in {result.cert_path.parent}", file=sys.stderr)
    print(result.cert_path)
    return 0


def check_key_permissions(paths, cfg, role):
    """Warn about a private key others can read; with strict-permissions, refuse to start."""
    for problem in material.key_permission_problems(paths):
        if cfg.strict_permissions:
            raise ConfigError(problem, file=cfg.source or "command line",
                              key=f"{role}.strict-permissions")
        log.warn("key-permissions", reason=problem)


def check_material(check, source):
    """Unusable material at start is a configuration error (exit 2), naming the key to
    blame when the check knows it (a certificate refused for `server.hostname`)."""
    try:
        check()
    except MaterialError as exc:
        raise ConfigError(str(exc), file=source or "command line",
                          key=getattr(exc, "key", None)) from None


def check_before_start(role, cfg, server=None):
    """Everything a start checks before it binds or dials: material, identities, the Server
    certificate and its hostname, key permissions.  The daemon passes its `server`, which
    renews a due Server certificate it issued; `config check` passes none and writes nothing."""
    if role == "server":
        if cfg.acme is not None:
            return  # certbot's material: the Server waits for it and serves when it exists
        # Permissions first: a start refused by strict-permissions writes nothing.
        check_key_permissions(material.server_key_files(cfg.cert_dir), cfg, "server")
        if server is None:
            check_material(lambda: check_usable(cfg, utcnow()), cfg.source)
        else:
            # Renews a due certificate the Server issued itself; refuses one that does not
            # name server.hostname, or cannot serve and cannot be renewed (exit 2).
            check_material(server.check_certificate, cfg.source)
            check_material(lambda: server.certificate.current(), cfg.source)
        return
    check_material(lambda: material.show_identity(cfg.identity_dir), cfg.source)
    if cfg.managed is not None:  # current or not: the Client starts, and waits for a renewal
        try:
            material.check_managed_cert(cfg.managed.cert_file, cfg.identity_dir)
        except MaterialError as exc:
            raise ConfigError(str(exc), file=cfg.source or "command line",
                              key="client.managed.cert-file") from None
    if cfg.server_trust == "ca-file" and not os.access(cfg.server_ca_file, os.R_OK):
        raise ConfigError(f"cannot read the Server CA bundle {cfg.server_ca_file}; copy the "
                          "Server's server-ca.crt there or set server-ca-file",
                          file=cfg.source or "command line", key="client.server-ca-file")
    public = (cfg.public_cert_dir, cfg.terminate_hostnames) if cfg.acme is None and \
        cfg.public_cert_dir is not None else (None, None)
    check_key_permissions(material.client_key_files(cfg.identity_dir, *public), cfg, "client")
