"""The entry point monkey-patches with one scan of the installed distributions' entry points
(gevent asks for its plugins on each of ~25 patch events; each plain ask reads every
distribution's metadata, 0.4 s of CPU on every start), and leaves importlib as it was."""

import subprocess
import sys

PROBE = """
from importlib import metadata
import socket
calls = []
original = metadata.distributions
metadata.distributions = lambda **kw: calls.append(1) or original(**kw)
scan = metadata.entry_points
from runewarp import entry
entry._patch_all()
from gevent import monkey
assert monkey.is_module_patched("socket") and monkey.is_module_patched("ssl")
assert metadata.entry_points is scan
print(len(calls))
"""


def test_patching_reads_the_distributions_once():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
