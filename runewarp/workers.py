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


RESTART_WINDOWS = (1, 2, 4, 8, 16, 30)
"""Seconds before a dead worker is started again, for its 1st, 2nd, … quick exit in a row."""


def restart_delay(lived, quick_exits):
    """(seconds before starting a dead worker again, its quick exits in a row now).  A
    worker that ran `lived` ≥ 30 s died once: started again at once.  One that keeps dying
    sooner waits 1, 2, 4 … 30 s, so a crash loop costs little CPU and floods no log."""
    if lived >= RESTART_WINDOWS[-1]:
        return 0.0, 0
    return float(RESTART_WINDOWS[min(quick_exits, len(RESTART_WINDOWS) - 1)]), quick_exits + 1
