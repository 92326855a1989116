"""`runewarp demo`."""

from .common import HELP

DEMO = f"""Run the whole path on loopback with real processes: a Visitor, the Server, a
Client and a Local backend; the Visitor checks that the Server never decrypted.

Usage:
  runewarp demo [--keep]

Options:
  --keep                   Leave the demo running and print a curl command.
{HELP}
"""


def run_demo(args):
    from ..demo import demo

    return demo(keep=args["--keep"])


COMMANDS = ((("demo",), DEMO, run_demo),)
