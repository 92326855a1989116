"""Which worker this process is, when a supervisor runs several (`workers = N`).

The supervisor (runewarp/supervisor.py) sets RUNEWARP_WORKER="INDEX/COUNT" in each
worker's environment, and RUNEWARP_WORKER_METRICS (a private folder) when it serves a
metrics listener: each worker then answers on its own Unix socket there instead.  A
process started any other way is worker 0 of 1, so everything below behaves as one
process always did.
"""

import os
from typing import NamedTuple

WORKER_ENV = "RUNEWARP_WORKER"
METRICS_ENV = "RUNEWARP_WORKER_METRICS"


class Worker(NamedTuple):
    index: int
    count: int

    def log_fields(self):
        """What every log line of this process carries: `worker=INDEX` under a supervisor."""
        return {"worker": self.index} if self.count > 1 else {}

    @property
    def upkeeper(self):
        """Whether this process renews certificates: one worker does, so a renewal never
        runs N times at once (the supervisor ran the start's pass before any worker)."""
        return self.index == 0


def this_worker(environ=None) -> Worker:
    """This process's place among its supervisor's workers; Worker(0, 1) without one."""
    text = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    index, _, count = text.partition("/")
    if index.isdigit() and count.isdigit() and 0 <= int(index) < int(count):
        return Worker(int(index), int(count))
    return Worker(0, 1)


def metrics_socket(folder, index):
    """The Unix socket worker `index` serves its metrics on, in the supervisor's `folder`."""
    return os.path.join(folder, f"worker-{index}.sock")


def worker_metrics_socket(environ=None):
    """This worker's metrics socket path, or None (not a worker, or no metrics listener)."""
    folder = (os.environ if environ is None else environ).get(METRICS_ENV)
    worker = this_worker(environ)
    return metrics_socket(folder, worker.index) if folder and worker.count > 1 else None
