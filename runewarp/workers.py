"""Which worker this process is, when a supervisor runs several (`workers = N`).

The supervisor sets RUNEWARP_WORKER="INDEX/COUNT" in each worker's environment; a
process started any other way is worker 0 of 1, so everything below behaves as one
process always did.
"""

import os
from typing import NamedTuple

WORKER_ENV = "RUNEWARP_WORKER"


class Worker(NamedTuple):
    index: int
    count: int


def this_worker(environ=None) -> Worker:
    """This process's place among its supervisor's workers; Worker(0, 1) without one."""
    text = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    index, _, count = text.partition("/")
    if index.isdigit() and count.isdigit() and 0 <= int(index) < int(count):
        return Worker(int(index), int(count))
    return Worker(0, 1)
