"""Listener hand-over without a gap: SIGUSR2 makes a running Server start its successor.

The old process starts a copy of itself (the same interpreter and command line, so it
reads its config again) and passes it every listening socket by fd (systemd.py's
RUNEWARP_LISTEN_* variables) and the write end of a readiness pipe (daemon.py's
protocol: one READY byte).  The new process claims the sockets through the same path as
socket activation (io/inherited.py InheritedSockets): nothing is bound again, so the
kernel's accept queue never closes.  It reports READY only after its start (listeners
serving, certificate loaded) and after it wrote the pid file; the old process then stops
the way SIGTERM stops it.  If the new process exits first, or is not ready within
READY_TIMEOUT (daemon.py's, systemd's TimeoutStartSec default; it is then killed), the
old process keeps serving: `HandoverFailed` says why.

A new process under `-d` does not detach again: it is already in the old one's session,
with the log file as its stderr.
"""

import os
import signal
import subprocess
import sys
import time

import gevent
import gevent.select

from . import daemon, systemd
from .errors import RunewarpError

HANDOVER = "RUNEWARP_HANDOVER"  # "<old pid>:<fd of the readiness pipe>"
READY_TIMEOUT = daemon.READY_TIMEOUT


class HandoverFailed(RunewarpError):
    """The new process exited, or was not ready in time: the old one keeps serving."""


def command():
    """The command line that started this process, run by the same interpreter."""
    return [sys.executable, *sys.orig_argv[1:]]


def start_successor(sockets, argv=None, timeout=READY_TIMEOUT):
    """Start the successor with `sockets` ([(socket, name, unit_owned)]) and wait, cooperatively, until
    it is ready: its pid.  HandoverFailed when it exits or `timeout` passes first; a
    successor that is not ready is never left running (also when this greenlet is killed)."""
    proc, channel = spawn(sockets, {}, argv)
    wait_ready(proc, channel, timeout)
    return proc.pid


def spawn(sockets, variables, argv=None, **popen):
    """(process, read end of its readiness pipe): `argv` (default: our command line) started
    with `sockets` passed by fd, the hand-over variables naming this process, and `variables`
    (a value None removes the variable).  HandoverFailed when it cannot start."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, **systemd.handover_environ(sockets),
               **{HANDOVER: f"{os.getpid()}:{write_end}"})
    env.pop("WATCHDOG_PID", None)  # systemd's watchdog follows the new main pid
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    argv = argv or command()
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                pass_fds=[entry[0].fileno() for entry in sockets] + [write_end],
                                **popen)
    except OSError as exc:
        os.close(read_end)
        raise HandoverFailed(f"cannot start {argv[0]}: {(exc.strerror or str(exc)).lower()}")
    finally:
        os.close(write_end)
    return proc, read_end


def wait_ready(proc, channel, timeout=READY_TIMEOUT, what="the new process"):
    """Wait, cooperatively, until `proc` reports READY on `channel` (closed here).
    HandoverFailed when it exits or `timeout` passes first; a process that is not ready is
    never left running (also when this greenlet is killed)."""
    deadline = time.monotonic() + timeout
    ready = False
    try:
        _, ready = daemon.read_verdict(channel, deadline, select=gevent.select.select)
        if ready:
            return
        if ready is False:  # it closed the pipe: it exits
            try:
                status = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                ready = None
            else:
                raise HandoverFailed(f"{what} (pid {proc.pid}) {ended(status)} "
                                     "before it was ready")
        raise HandoverFailed(f"{what} (pid {proc.pid}) was not ready within "
                             f"{timeout:g}s; it was killed")
    finally:
        os.close(channel)
        if not ready and proc.poll() is None:
            proc.kill()
            proc.wait()


def ended(status):
    """How a process with exit `status` (Popen.returncode) ended, in words."""
    if status < 0:
        return f"was ended by {_signal_name(-status)}"
    return f"exited with status {status}"


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Successor:
    """The new process of a hand-over, from its environment: `parent` is the old process,
    `ready()` tells it this one serves."""

    def __init__(self, parent, channel):
        self.parent = parent
        self.channel = channel

    @classmethod
    def from_environ(cls, environ=None):
        """The hand-over this process was started by, or None.  The variable is removed
        whatever it holds (a child of ours must not take it for its own), and honoured only
        when the old process it names is our parent."""
        environ = os.environ if environ is None else environ
        parent, _, fd = environ.pop(HANDOVER, "").partition(":")
        if not (parent.isdigit() and fd.isdigit()) or int(parent) != os.getppid():
            return None
        os.set_inheritable(int(fd), False)
        return cls(int(parent), int(fd))

    def ready(self):
        daemon.report_ready(self.channel)
