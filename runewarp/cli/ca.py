"""`runewarp ca`: the control-plane CA of managed mode, and the short-lived Client
certificates it issues (docs/managed.md)."""

import re
import sys
from pathlib import Path

from .. import material
from ..config.paths import default_control_plane_ca_dir
from ..errors import ConfigError, MaterialError
from ..proto.identity import is_identity
from .common import HELP, own_folder, print_ca

_DIR = "  --dir D                  Control-plane CA folder (default: $XDG_DATA_HOME/runewarp/ca)."

CA_INIT = f"""Create the control-plane CA: Servers whose [server.managed] client-ca-file names
its certificate admit Tunnel connections only with a Client certificate it issued.

Usage:
  runewarp ca init [--dir D]

Prints the path of the CA certificate to set as client-ca-file.  An existing CA is kept.
The key (state/control-plane-ca.key, mode 0600) stays with the control plane.

Options:
{_DIR}
{HELP}
"""

CA_ISSUE = f"""Issue a short-lived Client certificate for a Client identity key.

Usage:
  runewarp ca issue --identity HEX (--public-key PEM_FILE | --csr FILE) [--ttl DURATION] [--dir D]

Writes the PEM certificate to stdout: the Client's [client.managed] cert-file.  The key
(from a PEM public key, or a CSR made by 'runewarp client identity csr', whose signature
is checked) must be the one whose Client identity is HEX; the certificate names it in a
URI SAN runewarp:identity:HEX.  It is valid from 5 minutes ago (clock skew) for the TTL.

Options:
  --identity HEX           The Client identity (64 lowercase hex characters).
  --public-key PEM_FILE    The identity's public key (PEM, SubjectPublicKeyInfo).
  --csr FILE               A PEM CSR signed by the identity key.
  --ttl DURATION           Lifetime: 90s, 15m, 1h or plain seconds; at most 24h [default: 1h].
{_DIR}
{HELP}
"""

_DURATION = re.compile(r"(\d+)([smh]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text):
    """Seconds of `90s`, `15m`, `1h` or `3600`; ValueError for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    return int(match.group(1)) * _UNIT[match.group(2)]


def _ca_dir(args):
    return own_folder(args, default_control_plane_ca_dir())


def ca_init(args):
    return print_ca(material.init_control_plane_ca(_ca_dir(args)), "control-plane CA")


def ca_issue(args):
    identity = args["--identity"]
    if not is_identity(identity):
        raise ConfigError(f"{identity!r} is not a Client identity (64 lowercase hex characters)",
                          file="command line", key="--identity")
    try:
        ttl = parse_duration(args["--ttl"])
    except ValueError:
        ttl = 0
    if not 1 <= ttl <= material.MAX_TTL:
        raise ConfigError(f"{args['--ttl']!r}: expected a duration from 1s to 24h (90s, 15m, 1h "
                          "or seconds)", file="command line", key="--ttl")
    option = "--csr" if args["--csr"] else "--public-key"
    try:
        key = material.read_public_input(Path(args[option]).expanduser(), csr=option == "--csr")
    except MaterialError as exc:
        raise ConfigError(str(exc), file="command line", key=option) from None
    try:
        material.check_attests(key, identity)
    except MaterialError as exc:
        raise ConfigError(str(exc), file="command line", key="--identity") from None
    # A missing or broken CA folder stays a MaterialError: exit 1, naming 'runewarp ca init'.
    sys.stdout.write(material.issue_managed_cert(_ca_dir(args), identity, key, ttl).decode())
    return 0


COMMANDS = (
    (("ca", "init"), CA_INIT, ca_init),
    (("ca", "issue"), CA_ISSUE, ca_issue),
)
