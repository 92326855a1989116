"""`workers = N`: the supervisor, gunicorn's arbiter in spirit (docs/architecture.md,
"Every core").

It binds every listening socket once (or takes a socket unit's or a hand-over's) and
runs N workers: the same interpreter and command line, each with the sockets by fd
(systemd.py's hand-over variables), RUNEWARP_WORKER="INDEX/COUNT" (workers.py) and
the write end of a readiness pipe (daemon.py's protocol).  A worker is an ordinary
Server or Client that claims the sockets as a hand-over's new process does.  Workers
get their own process group (a terminal's Ctrl-C reaches the supervisor alone, which
relays it once) and SIGTERM when the supervisor dies.

The supervisor only starts, watches and relays; its signal handlers only enqueue
(lifecycle.py's style).  TERM/INT go to every worker; it exits once the last one has.
HUP and USR1 go to every worker (USR1 also reopens the supervisor's own log file).
USR2 hands the sockets to a new supervisor (handover.py), which reports ready once all
of its workers are; this one then stops its workers as TERM does.  A worker that dies
is started again (`worker-exited`, then `worker-started`): at once after a run of 30 s,
else later each time it dies soon after its start (workers.restart_delay).
READY (pid file, -d, systemd) comes when every worker is ready.  The metrics listener
is the supervisor's (io/workermonitor.py).
"""

import ctypes
import os
import shutil
import signal
import tempfile
import time

import gevent
from gevent.queue import Queue

from . import handover, systemd
from .errors import RunewarpError
from .io.inherited import InheritedSockets
from .io.workermonitor import SupervisorMonitor
from .io.workerpass import SOCKETS_ENV as PASS_SOCKETS_ENV
from .lifecycle import run_logged
from .workers import METRICS_ENV, WORKER_ENV, restart_delay

RESTART_INTERVAL = 1.0  # a worker is started at most once per this many seconds
_PR_SET_PDEATHSIG = 1
_RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _prctl():
    """libc's prctl, looked up in the supervisor: between fork and exec the worker may only
    call it (loading a library there can deadlock on a lock another thread held)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl):
    """The worker's preexec: SIGTERM when the supervisor dies (Linux), so a killed
    supervisor never leaves workers serving behind it."""
    if prctl is None:
        return lambda: None
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """`role`'s supervisor for `config.workers` workers.  `bind(inherited, log)` binds the
    sockets the workers share ([(socket, name, unit_owned)]); `hand_over`: whether USR2
    hands over (a Server's)."""

    def __init__(self, role, config, load_config, log, bind=None, hand_over=False):
        self.role = role
        self.config = config
        self.load_config = load_config
        self.log = log
        self.count = config.workers
        self.bind = bind
        self.can_hand_over = hand_over
        self.sockets = []
        self.procs = [None] * self.count
        self.started = [0.0] * self.count
        self.quick_exits = [0] * self.count  # in a row, per worker (workers.restart_delay)
        self.preexec = _die_with_parent(_prctl())
        self.ready_workers = set()  # indexes whose current process reported ready
        self.queue = Queue()
        self.stopping = False
        self.folder = None
        self.monitor = SupervisorMonitor(config.metrics, role, self, log)
        self.on_ready, self.successor = None, False  # background.py's, as for a Lifecycle
        self.handing_over = self.handover_result = None

    # -- running --
    def run(self):
        try:
            return run_logged(self.log, self._run)
        finally:
            self._close()

    def _run(self):
        for signum in _RELAYED:
            gevent.signal_handler(signum, self.queue.put, (signal.Signals(signum).name, None))
        inherited = InheritedSockets(systemd.listen_fds() if self.bind else ())
        self.monitor.bind(inherited)
        if self.bind is not None:
            self.sockets = self.bind(inherited, self.log)
        # Mode 0700: the workers' metrics sockets and the Server workers' pass sockets, which
        # no other user may bind first (an abstract name could be taken by anyone).
        self.folder = tempfile.mkdtemp(prefix=f"runewarp-{self.role}-")
        starts = [gevent.spawn(self._start, index) for index in range(self.count)]
        gevent.joinall(starts)
        failed = [job.exception or job.value for job in starts if job.exception or job.value]
        if failed:
            self.log.error("workers-start-failed", reason=str(failed[0]))
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            gevent.wait([gevent.spawn(proc.wait) for proc in self.procs if proc is not None],
                        timeout=self.config.graceful_shutdown_duration + 5)  # then killed
            return 1
        self.monitor.start()
        self.log.info("supervisor-ready", role=self.role, workers=self.count,
                      pids=",".join(str(proc.pid) for proc in self.procs))
        systemd.ready(f"serving with {self.count} workers",
                      main_pid=os.getpid() if self.successor else None)
        if self.on_ready is not None:
            self.on_ready()
        watchdog = systemd.start_watchdog()
        while True:
            name, arg = self.queue.get()
            if getattr(self, "handle_" + name.lower())(name, arg):
                break
        if watchdog is not None:
            watchdog.kill(block=False)
        systemd.stopping("shutdown complete")
        self.log.info("shutdown-complete", role=self.role, workers=self.count)
        return 0

    def _environ(self, index):
        """A worker's variables: its place, its metrics folder, every worker's pass socket in
        the private folder, and none of systemd's (the supervisor alone notifies and is
        watched)."""
        passes = ",".join(os.path.join(self.folder, f"pass-{i}.sock") for i in range(self.count))
        return {WORKER_ENV: f"{index}/{self.count}",
                METRICS_ENV: self.folder if self.monitor.sock is not None else None,
                PASS_SOCKETS_ENV: passes, "NOTIFY_SOCKET": None, "WATCHDOG_USEC": None}

    def _start(self, index):
        """Start worker `index` and wait until it is ready; None, else why it is not."""
        self.started[index] = time.monotonic()
        self.ready_workers.discard(index)
        proc, channel = handover.spawn(self.sockets, self._environ(index), process_group=0,
                                       preexec_fn=self.preexec)
        self.procs[index] = proc
        gevent.spawn(self._watch, index, proc)
        try:
            handover.wait_ready(proc, channel, what=f"worker {index}")
        except handover.HandoverFailed as exc:
            return exc
        self.ready_workers.add(index)
        self.log.info("worker-started", worker=index, pid=proc.pid)
        return None

    def _watch(self, index, proc):
        proc.wait()
        self.queue.put(("EXITED", (index, proc)))

    def _restart(self, index, delay):
        gevent.sleep(max(delay, self.started[index] + RESTART_INTERVAL - time.monotonic()))
        if self.stopping:
            return
        try:
            failed = self._start(index)
        except (handover.HandoverFailed, OSError) as exc:  # not even started: try again later
            failed = exc
            self.queue.put(("EXITED", (index, None)))
        if failed is not None:
            self.log.error("worker-start-failed", worker=index, reason=str(failed))

    def _signal_all(self, signum, ready_only=False):
        """`signum` to every running worker; `ready_only`: only to those that reported ready,
        since a worker still starting has no handler yet and SIGHUP's default kills it (it
        reads the file as it is anyway)."""
        for index, proc in enumerate(self.procs):
            if ready_only and index not in self.ready_workers:
                continue
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _running(self):
        return [proc for proc in self.procs if proc is not None and proc.poll() is None]

    def ready(self):
        """Not shutting down (the workers answer for themselves: io/workermonitor.py)."""
        return not self.stopping

    # -- events --
    def handle_exited(self, _name, arg):
        index, proc = arg
        if proc is not None:
            if proc is not self.procs[index]:
                return False  # a worker already replaced
            self.ready_workers.discard(index)
        if self.stopping:
            if proc is not None:
                self.log.info("worker-exited", worker=index, pid=proc.pid,
                              status=handover.ended(proc.returncode))
            return not self._running()
        now = time.monotonic()
        delay, self.quick_exits[index] = restart_delay(now - self.started[index], self.quick_exits[index])
        delay = max(delay, self.started[index] + RESTART_INTERVAL - now)
        if proc is not None:
            self.log.warn("worker-exited", worker=index, pid=proc.pid,
                          status=handover.ended(proc.returncode), restart_in=f"{delay:.1f}s")
        gevent.spawn(self._restart, index, delay)
        return False

    def handle_sigterm(self, name, _arg):
        if not self.stopping:
            self.stopping = True
            self.log.info("shutdown-started", signal=name, mode="graceful", workers=self.count)
            systemd.stopping("stopping the workers")
            if self.handing_over is not None:
                self.handing_over.kill()  # a new supervisor not ready yet is stopped with it
        else:
            self.log.info("shutdown-forced", signal=name)
        self._signal_all(signal.SIGTERM)
        return not self._running()

    handle_sigint = handle_sigterm

    def handle_sighup(self, name, _arg):
        """Each worker runs the validated reload; the supervisor takes the log settings."""
        if self.stopping:
            return False
        self.log.info("reload-relayed", signal=name, workers=self.count)
        systemd.reloading("reloading the workers")
        try:
            config = self.load_config()
        except RunewarpError:
            pass  # every worker refuses it and says why
        else:
            self.log.configure(config.log_level, config.log_format)
        self._signal_all(signal.SIGHUP, ready_only=True)
        systemd.ready(f"serving with {self.count} workers")
        return False

    def handle_sigusr1(self, _name, _arg):
        self.log.reopen()
        self._signal_all(signal.SIGUSR1, ready_only=True)
        return False

    def handle_sigusr2(self, name, _arg):
        if not self.can_hand_over:
            self.log.warn("handover-unsupported", signal=name,
                          reason="only a Server hands its listeners over")
        elif self.handing_over is not None or self.stopping:
            self.log.warn("handover-ignored", signal=name,
                          reason="shutting down" if self.stopping else "a hand-over is running")
        else:
            self.log.info("handover-started", signal=name)
            self.handing_over = gevent.spawn(self._hand_over)
        return False

    def _hand_over(self):
        sockets = list(self.sockets)
        if self.monitor.sock is not None:
            sockets.append((self.monitor.sock, "metrics", self.monitor.unit_owned))
        try:
            self.handover_result = handover.start_successor(sockets)
        except RunewarpError as exc:
            self.handover_result = exc
        self.queue.put(("HANDOVER_ENDED", None))

    def handle_handover_ended(self, _name, _arg):
        self.handing_over, result = None, self.handover_result
        if isinstance(result, RunewarpError):
            self.log.error("handover-failed", reason=str(result), kept="serving")
            return False
        self.log.info("handover-complete", new_pid=result)
        os.environ.pop("NOTIFY_SOCKET", None)  # the service is the new supervisor's
        self.monitor.stop()  # the new supervisor answers on the metrics listener
        self.stopping = True
        self.log.info("shutdown-started", signal="SIGUSR2", new_pid=result, mode="graceful",
                      workers=self.count)
        self._signal_all(signal.SIGTERM)
        return not self._running()

    def _close(self):
        """At exit: no worker outlives its supervisor, no socket file its folder."""
        for proc in self._running():
            proc.kill()
        if self.handing_over is not None:
            self.handing_over.kill()
        self.monitor.stop()
        for sock, _, _ in self.sockets:
            sock.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
