"""`runewarp doctor`: check a config, its material and its network, one line per check."""

import sys

from .. import doctor
from .common import CONFIG, HELP, required_config, selected_role

DOCTOR = f"""Check the selected config, its certificates and keys, and the network around
it: one line per check, ok / warn / fail with the reason and a fix. The role
defaults to the only role table in the file.

Usage:
  runewarp doctor [server | client] [-c FILE] [--json]

Options:
{CONFIG}
  --json                   Print a list of {{check, status, detail, fix}} objects.
{HELP}

Exit status: 0 when no check failed (warnings allowed), 1 when one failed,
2 when there is no config file or the role is not clear.
"""


def run_doctor(args):
    path = required_config(args)
    return doctor.run(selected_role(args, path), path, args["--json"], sys.stdout)


COMMANDS = ((("doctor",), DOCTOR, run_doctor),)
