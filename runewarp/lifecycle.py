"""Process lifecycle in the arbiter style: signal handlers only enqueue, one small method each.

TERM/INT: graceful (stop accepting, go away, drain for at most the grace
period, close, exit 0); a second TERM/INT forces.  HUP: reload, keeping the old
config when the new one is invalid.  With watch-config, the runtime's file watch
asks for the same reload (FILE_CHANGED) when a watched file changes.  USR1: reopen
the log file (logrotate).  USR2: hand the listeners over to a new process
(`hand_over`, set for a Server: runewarp/handover.py); once it serves, this one stops as
TERM stops it, silent to systemd (the service is the new process's); a failed hand-over
keeps this one serving.  `on_ready`, when set, is called once the runtime serves (a
detached start, a hand-over's new process report it); `successor` makes READY=1 carry
MAINPID, so systemd follows the new process.
"""

import os
import signal

import gevent
from gevent.queue import Queue

from . import systemd
from .errors import RunewarpError


def run_logged(log, body):
    """`body()` under the event loop, its log lines joined per loop turn and all written
    before the CLI prints anything after it (the supervisor's loop too)."""
    log.defer_writes(gevent.get_hub().loop.run_callback)
    try:
        return body()
    finally:
        log.flush()


class Lifecycle:
    def __init__(self, runtime, load_config, grace, log):
        self.runtime = runtime
        self.load_config = load_config
        self.grace = grace
        self.log = log
        self.queue = Queue()
        self.draining = None
        self.changed = []  # the files whose change asked for a reload, in order
        self.on_ready = None
        self.hand_over = None  # () -> the new process's pid once it serves; HandoverFailed
        self.successor = False
        self.handing_over = None
        self.handover_result = None

    def run(self):
        return run_logged(self.log, self._run)

    def _run(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                       signal.SIGUSR2):
            gevent.signal_handler(signum, self.queue.put, signal.Signals(signum).name)
        self.runtime.on_file_change = self._file_changed
        self.runtime.start()
        systemd.ready("serving", main_pid=os.getpid() if self.successor else None)
        if self.on_ready is not None:
            self.on_ready()
        watchdog = systemd.start_watchdog()
        while True:
            name = self.queue.get()
            handler = getattr(self, "handle_" + name.lower())
            if handler(name):
                break
        if watchdog is not None:
            watchdog.kill(block=False)
        if self.handing_over is not None:
            self.handing_over.kill()  # a new process that is not ready yet is killed
        self.runtime.close_all()
        # One turn of the loop lets the greenlets close_all killed run their last lines; nothing
        # here waits on a timer, so the process exits right after shutdown-complete.
        gevent.sleep(0)
        systemd.stopping("shutdown complete")
        self.log.info("shutdown-complete")
        return 0

    def handle_sigterm(self, name):
        if self.draining is not None:
            self.log.info("shutdown-forced", signal=name,
                          cut_streams=self.runtime.unfinished_streams())
            self.draining.kill(block=False)
            return True
        if self.handing_over is not None:
            self.handing_over.kill()  # a new process that is not ready yet is killed with it
            self.handing_over = None
            if self.handover_result is None:
                self.log.warn("handover-failed", reason=f"{name} during the hand-over",
                              kept="shutting down")
        self._stop_gracefully(signal=name)
        return False

    handle_sigint = handle_sigterm

    def _stop_gracefully(self, handed_over=False, **why):
        self.log.info("shutdown-started", **why, mode="graceful",
                      graceful_shutdown_duration=float(self.grace))
        systemd.stopping(f"draining for at most {self.grace:g}s")
        if handed_over:
            self.runtime.stop_accepting(handed_over=True)
        else:
            self.runtime.stop_accepting()
        self.draining = gevent.spawn(self._drain)

    def _drain(self):
        finished = bool(self.runtime.drain(self.grace))
        # What the close that follows cuts: streams still spliced, handlers still running.
        self.log.info("shutdown-drained", complete=finished,
                      cut_streams=None if finished else self.runtime.unfinished_streams())
        self.queue.put("DRAINED")

    def handle_drained(self, _name):
        return True

    def handle_sigusr1(self, _name):
        self.log.reopen()
        return False

    def handle_sigusr2(self, name):
        if self.hand_over is None:
            self.log.warn("handover-unsupported", signal=name,
                          reason="only a Server hands its listeners over")
        elif self.handing_over is not None or self.draining is not None:
            self.log.warn("handover-ignored", signal=name,
                          reason="a hand-over is running" if self.draining is None
                          else "shutting down")
        else:
            self.log.info("handover-started", signal=name)
            self.handover_result = None
            self.handing_over = gevent.spawn(self._hand_over)
        return False

    def _hand_over(self):
        try:
            self.handover_result = self.hand_over()
        except RunewarpError as exc:
            self.handover_result = exc
        except Exception as exc:  # noqa: BLE001 - a bug in a hand-over never ends the process
            self.handover_result = RunewarpError(f"unexpected {exc.__class__.__name__}: {exc}")
        self.queue.put("HANDOVER_ENDED")

    def handle_handover_ended(self, _name):
        self.handing_over, result = None, self.handover_result
        if isinstance(result, RunewarpError):
            self.log.error("handover-failed", reason=str(result),
                           kept="serving" if self.draining is None else "shutting down")
            return False
        self.log.info("handover-complete", new_pid=result)
        os.environ.pop("NOTIFY_SOCKET", None)  # the service is the new process's: no STOPPING=1
        if self.draining is None:  # else a TERM came first: this process drains already
            self._stop_gracefully(handed_over=True, signal="SIGUSR2", new_pid=result)
        return False

    def _file_changed(self, path):
        self.changed.append(path)
        self.queue.put("FILE_CHANGED")

    def handle_file_changed(self, _name):
        return self._reload(trigger="file-change", file=self.changed.pop(0))

    def handle_sighup(self, name):
        return self._reload(trigger="signal", signal=name)

    def _reload(self, **trigger):
        if self.draining is not None:
            return False
        self.log.info("reload-started", **trigger)
        systemd.reloading("reloading")
        try:
            config = self.load_config()
            self.runtime.reload(config)
        except RunewarpError as exc:
            self.runtime.metrics.reloads["failure"].inc()
            self.log.error("reload-failed", reason=str(exc), kept="previous configuration")
            systemd.ready("serving; the last reload failed, previous configuration kept")
            return False
        except Exception as exc:  # noqa: BLE001 - a bug in a reload never ends the process
            self.runtime.metrics.reloads["failure"].inc()
            self.log.error("reload-failed", reason=f"unexpected {exc.__class__.__name__}: {exc}",
                           kept="previous configuration")
            systemd.ready("serving; the last reload failed, previous configuration kept")
            return False
        self.runtime.metrics.reloads["success"].inc()
        self.grace = self.runtime.config.graceful_shutdown_duration
        systemd.ready("serving")
        return False
