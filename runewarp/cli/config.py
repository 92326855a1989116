"""`runewarp config show|init|edit|check`: see, start, change and check a config file
without starting (or disturbing) the daemon."""

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from .. import config as configuration
from ..config.render import render, toml_string
from ..errors import ConfigError
from ..logs import log
from ..material import ensure_dir
from ..proto.hostname import HostnameError, normalize
from .common import CONFIG, HELP, ROLES, check_before_start, fail, load, required_config, \
    selected_role

ROLE_NOTE = """The role (server or client) may be left out when the file has only one of the
[server] and [client] tables."""

SHOW = f"""Print the effective config of one role as TOML: every key with its value after
defaults and path resolution; a key without a value is a comment (`# key = unset`).

Usage:
  runewarp config show [server | client] [-c FILE]

{ROLE_NOTE}

Options:
{CONFIG}
{HELP}
"""

INIT = f"""Write a minimal, commented config for the Server or the Client: to -c FILE, else
to $XDG_CONFIG_HOME/runewarp/config.toml.  Never overwrites a file; creates the
folder; the file gets mode 0640.

Usage:
  runewarp config init (server | client) [-c FILE] [--hostname H]

Options:
{CONFIG}
  --hostname H             server: the Server hostname; client: the Public hostname
                           of the first Service.
{HELP}
"""

EDIT = f"""Open the config in $VISUAL, else $EDITOR, else vi; then check it as 'runewarp
config check' does (every role table in the file) and print the result.  The file
stays as edited either way; the exit status is 2 when it is not valid.

Usage:
  runewarp config edit [-c FILE]

Options:
{CONFIG}
{HELP}
"""

CHECK = f"""Check a config as the daemon does before it binds: syntax, keys, rules, material,
identities, key permissions, the Server certificate and its hostname.  Binds,
dials, renews and writes nothing, so it is safe while the daemon runs.  Prints
'ok: FILE', or one error line naming file and key (exit 2).

Usage:
  runewarp config check [server | client] [-c FILE]

{ROLE_NOTE}

Options:
{CONFIG}
{HELP}
"""

CONFIG_MODE = 0o640
FOLDER_MODE = 0o750
PLACEHOLDER_IDENTITY = "0" * 64

SERVER_TEMPLATE = """\
# Runewarp Server config, written by 'runewarp config init server'.
# Every key, its default and rule: docs/configuration.md.  See the effective
# values with 'runewarp config show server -c {path}', and check the file (safe
# while the Server runs) with 'runewarp config check server -c {path}'.
#
# The Server certificate lives in the default folder
# ($XDG_DATA_HOME/runewarp/server/cert; set cert-dir to move it).  Create it with
#   runewarp server cert init -c {path}
# and give each Client the server-ca.crt it prints (the Client's server-ca-file).

[server]
# The name Clients dial and check the Server certificate against; never a Public hostname.
hostname = {hostname}

# The public listener, for Visitors and Tunnel connections (port 443 needs privileges).
# public-bind-address = "0.0.0.0:443"

# One table per Tunnel: the Public hostnames it owns and the Client that serves them.
[[server.tunnels]]
public-hostnames = ["app.example.com"]
# The Server refuses this placeholder: paste the identity that
# 'runewarp client identity init' (later: 'runewarp client identity show') prints on the Client.
client-identity = "{identity}"
"""

CLIENT_TEMPLATE = """\
# Runewarp Client config, written by 'runewarp config init client'.
# Every key, its default and rule: docs/configuration.md.  See the effective
# values with 'runewarp config show client -c {path}', and check the file (safe
# while the Client runs) with 'runewarp config check client -c {path}'.
#
# The Client identity lives in the default folder
# ($XDG_DATA_HOME/runewarp/client/identity; set identity-dir to move it).  Create it with
#   runewarp client identity init -c {path}
# and list the identity it prints in the Server's Tunnel (client-identity).

[client]
# The Server: hostname[:port], port 443 by default.
server-address = "tunnel.example.com"

# Trust exactly the Server's own CA (the server-ca.crt 'runewarp server cert init'
# printed on the Server), copied to server-ca-file, by default
# $XDG_DATA_HOME/runewarp/client/server-ca.crt.  "system": the system's CAs.
server-trust = "ca-file"

# One table per Service: the Public hostnames it takes and its Local backend.
[[client.services]]
public-hostnames = [{hostname}]
backend-address = "127.0.0.1:8443"
# passthrough: the Local backend terminates the Visitor's TLS.  terminate: the Client
# does, with certificates from 'runewarp client public-cert init -c {path}'.
tls-mode = "passthrough"
"""


def named_file(args):
    """-c FILE, else the default path, whether it exists or not."""
    return Path(args["--config"]).expanduser() if args["--config"] else \
        configuration.default_config_path()


def config_file(args):
    """The named file; one that is not there gets the init hint."""
    path = named_file(args)
    if not path.exists():
        raise ConfigError(f"no config file at {path}; create one with 'runewarp config init'",
                          file="command line")
    return path


def show(args):
    path = required_config(args)
    role = selected_role(args, path)
    print(render(role, load(role, path)), end="")
    return 0


def check_file(path, roles):
    """Load and check each of `roles` in `path` as a start would, writing nothing."""
    for role in roles:
        cfg = load(role, path)
        log.configure(cfg.log_level, cfg.log_format)
        check_before_start(role, cfg)


def check(args):
    path = required_config(args)
    check_file(path, [selected_role(args, path)])
    print(f"ok: {path}")
    return 0


def edit(args):
    path = config_file(args)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        status = subprocess.run([*shlex.split(editor), str(path)]).returncode
    except (OSError, ValueError) as exc:
        return fail(f"cannot run the editor {editor!r}: {getattr(exc, 'strerror', None) or exc}", 1)
    if status != 0:
        return fail(f"the editor {editor!r} exited with status {status}; {path} was not checked", 1)
    roles = [role for role in ROLES if configuration.peek(path, role) is not None]
    if not roles:
        raise ConfigError("no [server] or [client] table", file=path)
    check_file(path, roles)
    print(f"ok: {path}")
    return 0


def init(args):
    path = named_file(args)
    exists = f"{path} already exists; change it with 'runewarp config edit -c {shlex.quote(str(path))}'"
    role = "server" if args["server"] else "client"
    try:
        # The client's --hostname is a Service's Public hostname, which may be a wildcard.
        hostname = normalize(args["--hostname"] or
                             ("tunnel.example.com" if role == "server" else "app.example.com"),
                             wildcard=role == "client")
    except HostnameError as exc:
        raise ConfigError(str(exc), file="command line", key="--hostname") from None
    if os.path.lexists(path):
        return fail(exists, 1)
    template = SERVER_TEMPLATE if role == "server" else CLIENT_TEMPLATE
    text = template.format(path=shlex.quote(str(path)), hostname=toml_string(hostname),
                           identity=PLACEHOLDER_IDENTITY)
    if not write_new(path, text):
        return fail(exists, 1)
    print(path)
    return 0


def write_new(path, text):
    """Write `text` to a new file `path` (mode 0640, whatever the umask): complete or not
    at all, and never over an existing file (False then)."""
    ensure_dir(path.parent, FOLDER_MODE)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), CONFIG_MODE)
            os.fsync(f.fileno())
        os.link(tmp, path)  # unlike a rename, fails when `path` exists
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


COMMANDS = (
    (("config", "show"), SHOW, show),
    (("config", "init"), INIT, init),
    (("config", "edit"), EDIT, edit),
    (("config", "check"), CHECK, check),
)
