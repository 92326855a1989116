"""Running in the background: the pid file, and a detach whose parent waits for the verdict.

`fork()` splits the process with a pipe between the two.  The child (`Starting`)
leaves the terminal (own session, stdin and stdout/stderr from and to /dev/null
until the log file is open) and, until it serves, repeats what it prints on stderr
into the pipe: the error line of a failed start reaches the parent as it reaches a
foreground operator.  Readiness is one NUL byte.  The parent (`wait_ready`) reads
until that byte (ready) or the end of the pipe (the child exited: its exit status),
so a detached start is never fire-and-forget.  A hand-over's new process
(runewarp/handover.py) reports its readiness on a pipe of the same protocol.

The fork is the unpatched `os.fork`, followed by `gevent.reinit()` in the child: the
CLI forks before the hub has served anything, and the parent keeps no child watcher.
"""

import os
import sys
import time
from pathlib import Path

import gevent
from gevent.monkey import get_original

READY = b"\0"
READY_TIMEOUT = 90.0  # systemd's default TimeoutStartSec

# The originals: gevent's fork adds a child watcher, and its close waits for the hub to run,
# which never happens in a parent that blocks in select until its child reports.
_fork, _close, _waitpid = get_original("os", ("fork", "close", "waitpid"))
_select = get_original("select", "select")


# -- the pid file --

def parse_pid(text):
    """The pid a pid file holds, or None for anything but one positive number."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def names_runewarp(cmdline, role):
    """Whether a /proc/PID/cmdline (NUL-separated bytes, None for no such process) is a
    Runewarp process of `role`: `runewarp` as the command, as the script an interpreter
    runs, or after `-m`, with the role among the words after it.  A zombie's cmdline is
    empty: not running."""
    if not cmdline:
        return False
    words = cmdline.decode("utf-8", "replace").split("\0")
    for i, word in enumerate(words[:4]):
        if os.path.basename(word) == "runewarp" and (i < 2 or words[i - 1] == "-m"):
            return role in words[i + 1:]
    return False


def cmdline(pid):
    """/proc/PID/cmdline as bytes; None when there is no such process or it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


class PidFile:
    """The pid file of one role: who runs, written atomically, removed only by its writer."""

    def __init__(self, path, role):
        self.path = Path(path)
        self.role = role

    def read(self):
        """The pid in the file; None when there is no file or no number in it."""
        try:
            return parse_pid(self.path.read_text(errors="replace"))
        except FileNotFoundError:
            return None

    def running(self, pid):
        return pid != os.getpid() and names_runewarp(cmdline(pid), self.role)

    def live_pid(self):
        """The pid of the Runewarp process the file names, or None (no file, or stale: no
        such process, or another program now has that pid)."""
        pid = self.read()
        return pid if pid is not None and self.running(pid) else None

    def write(self):
        """Write this process's pid: a temporary file renamed over the path, mode 0644."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            with open(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.chmod(temporary, 0o644)  # whatever the umask
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def remove(self):
        """Remove the file if it still names this process (a newer start may have replaced it)."""
        try:
            if self.read() == os.getpid():
                self.path.unlink()
        except OSError:
            pass


def wait_gone(pid, role, timeout, poll=0.1):
    """Whether the Runewarp `role` process `pid` ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while names_runewarp(cmdline(pid), role):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


# -- the detach --

def fork():
    """(child pid, read end) in the parent; (0, write end) in the child."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = _fork()
    if pid:
        _close(write_end)
        return pid, read_end
    _close(read_end)
    gevent.reinit()  # a no-op unless something created the hub before the fork
    return 0, write_end


class Starting:
    """The child until it serves: detached from the terminal, its stderr copied to the parent.

    It stands in for `sys.stderr` (print and tracebacks look it up there) until `ready()`.
    """

    def __init__(self, channel):
        os.setsid()  # own session: no controlling terminal, no SIGHUP when it closes
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        _close(devnull)
        self.channel = channel
        self.stderr = sys.stderr
        sys.stderr = self

    def write(self, text):
        self.stderr.write(text)
        if self.channel is not None:
            try:
                os.write(self.channel, text.encode("utf-8", "backslashreplace"))
            except OSError:  # the parent is gone (interrupted): nobody to tell
                self._hang_up()
        return len(text)

    def flush(self):
        self.stderr.flush()

    def __getattr__(self, name):
        return getattr(self.stderr, name)

    def ready(self):
        """Tell the parent the process serves; stderr is the log file's alone from now on."""
        if self.channel is not None:
            report_ready(self.channel)
            self.channel = None
        sys.stderr = self.stderr

    def _hang_up(self):
        _close(self.channel)
        self.channel = None


def report_ready(channel):
    """Write READY on `channel` and close it; a reader that is gone is nobody to tell."""
    try:
        os.write(channel, READY)
    except OSError:
        pass
    _close(channel)


def read_verdict(channel, deadline, select=_select):
    """What the writer of `channel` said before READY, and whether it came: (bytes, True)
    for READY, (bytes, False) for the end of the pipe, (bytes, None) at `deadline`.
    `select`: gevent's in a process whose hub serves meanwhile (a hand-over)."""
    said = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(said), None
        if not select([channel], [], [], remaining)[0]:
            continue
        data = os.read(channel, 65536)
        if READY in data:
            return bytes(said + data.split(READY, 1)[0]), True
        if not data:
            return bytes(said), False
        said += data


def wait_ready(pid, channel, timeout=READY_TIMEOUT):
    """What the child said on stderr and how its start ended: (text, status), status 0 when
    it serves, its exit status when it ended first, None when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    try:
        said, ready = read_verdict(channel, deadline)
    finally:
        _close(channel)
    text = said.decode("utf-8", "replace")
    if ready is None:
        return text, None
    return text, 0 if ready else exit_status(pid, deadline)


def exit_status(pid, deadline):
    """The exit status of the child `pid`, which closed its end of the pipe (1 when a signal
    ended it or it was reaped elsewhere; None when it still runs at `deadline`)."""
    while True:
        try:
            ended, status = _waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 1
        if ended:
            code = os.waitstatus_to_exitcode(status)
            return code if code > 0 else 1
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
