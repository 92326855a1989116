"""What the commands share: the option texts of their usage docs, the selected config
file and role, material checks that turn into config errors, and the error line."""

import sys
from pathlib import Path

from .. import config as configuration, material
from ..errors import ConfigError, MaterialError
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
