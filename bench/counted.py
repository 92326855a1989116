"""Run a Runewarp role with a greenlet switch counter: `python -m bench.counted server -c F`.

bench/profile.py needs the greenlet switches per proxied connection, which only the
process itself can count.  This wrapper installs `greenlet.settrace` (one integer
increment per switch, and a mark on each greenlet the first time it runs, to count the
greenlets created), then calls `runewarp.entry.main` as `python -m runewarp` would.

SIGWINCH (which Runewarp leaves alone) writes `switches greenlets` to the file
`$RUNEWARP_COUNT_DIR/counts-PID`, so the caller reads counts before and after a workload.
"""

import os
import signal
import sys

import greenlet

SNAPSHOT = signal.SIGWINCH
counts = [0, 0]  # switches, greenlets that ran at least once


def _trace(event, args):
    counts[0] += 1
    target = args[1]
    if event == "switch" and "_counted" not in target.__dict__:
        target._counted = True
        counts[1] += 1


def _snapshot(_signum, _frame):
    path = os.path.join(os.environ["RUNEWARP_COUNT_DIR"], f"counts-{os.getpid()}")
    with open(path + ".tmp", "w") as out:
        out.write(f"{counts[0]} {counts[1]}\n")
    os.replace(path + ".tmp", path)


def main():
    signal.signal(SNAPSHOT, _snapshot)  # before gevent patches signal: a plain C-level handler
    greenlet.settrace(_trace)
    from runewarp.entry import main as runewarp_main

    return runewarp_main()


if __name__ == "__main__":
    sys.exit(main())
