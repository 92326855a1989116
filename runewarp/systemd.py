"""systemd's notify protocol (sd_notify(3)) and socket activation (sd_listen_fds(3)).

Readiness, reload and stop are reported with a STATUS= line; RELOADING=1 carries
MONOTONIC_USEC, which notify-reload requires.  When the unit sets WatchdogSec=,
a greenlet pings every half interval, so a hub that stops running is restarted.
A socket unit's listening sockets arrive as fds 3, 4 ... (`listen_fds()`).
Every call is a no-op outside systemd.

A hand-over (runewarp/handover.py) passes its listening sockets the same way, with
variables of its own: RUNEWARP_LISTEN_FDS lists the fds (they keep their numbers,
so they do not start at 3), RUNEWARP_LISTEN_FDNAMES names them as LISTEN_FDNAMES
does, RUNEWARP_LISTEN_UNIT lists those a socket unit passed first (its address stays
the unit's), and RUNEWARP_LISTEN_PPID holds the old process's pid: the variables are
meant for the process whose parent it is, as LISTEN_PID is for the process it names.
"""

import fcntl
import os
import socket
import time

import gevent

from .errors import TransportError

LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_HANDOVER_VARIABLES = ("RUNEWARP_LISTEN_PPID", "RUNEWARP_LISTEN_FDS", "RUNEWARP_LISTEN_FDNAMES",
                       "RUNEWARP_LISTEN_UNIT")


class ActivationError(TransportError):
    """LISTEN_FDS / LISTEN_FDNAMES meant for this process that cannot be read, or an
    inherited socket that no bind address claims (exit 1, one line)."""


def notify(*fields):
    """Send `fields` ("READY=1", "STATUS=...") as one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto("\n".join(fields).encode(), path)
        except OSError:
            pass


def ready(status, main_pid=None):
    """READY=1; `main_pid` (a hand-over's new process) tells systemd to follow that pid."""
    notify("READY=1", *([f"MAINPID={main_pid}"] if main_pid is not None else ()),
           f"STATUS={status}")


def reloading(status):
    notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={status}")


def stopping(status):
    notify("STOPPING=1", f"STATUS={status}")


def monotonic_usec():
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares a reload against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ=None):
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when systemd
    set no watchdog for this process."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


def start_watchdog():
    """Ping the watchdog from the hub until killed; None when there is no watchdog."""
    interval = watchdog_interval()
    if interval is None:
        return None

    def ping():
        while True:
            notify("WATCHDOG=1")
            gevent.sleep(interval)

    return gevent.spawn(ping)


def parse_listen_fds(environ, pid, ppid=None):
    """[(fd, name or None)] passed to process `pid` (child of `ppid`): systemd's when
    LISTEN_PID is `pid`, a hand-over's when RUNEWARP_LISTEN_PPID is `ppid`; none when the
    variables name another process (inherited by mistake); ActivationError when they are
    meant for this process but unreadable."""
    if environ.get("LISTEN_PID", "").strip() == str(pid):
        count = environ.get("LISTEN_FDS", "")
        if not (count.isascii() and count.isdigit()):
            raise ActivationError(f"LISTEN_FDS={count!r}: not a number of file descriptors")
        return _named(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)),
                      environ.get("LISTEN_FDNAMES"), "LISTEN_FDNAMES", f"LISTEN_FDS={count}")
    if ppid is not None and environ.get("RUNEWARP_LISTEN_PPID", "").strip() == str(ppid):
        listed = environ.get("RUNEWARP_LISTEN_FDS", "")
        fds = listed.split(",") if listed else []
        if not all(fd.isascii() and fd.isdigit() for fd in fds):
            raise ActivationError(f"RUNEWARP_LISTEN_FDS={listed!r}: not a list of file "
                                  "descriptors")
        return _named([int(fd) for fd in fds], environ.get("RUNEWARP_LISTEN_FDNAMES"),
                      "RUNEWARP_LISTEN_FDNAMES", f"RUNEWARP_LISTEN_FDS={listed}")
    return []


def _named(fds, names, variable, counted):
    if names is None or not fds:
        return [(fd, None) for fd in fds]
    names = names.split(":")
    if len(names) != len(fds):
        raise ActivationError(f"{variable}={':'.join(names)!r}: {len(names)} names for {counted}")
    return [(fd, name or None) for fd, name in zip(fds, names, strict=True)]


def handover_environ(sockets, pid=None):
    """The variables that pass `sockets` ([(socket, name, unit_owned)]) to a child of
    process `pid` (default: this one), which keeps their fd numbers (subprocess's pass_fds)."""
    return {"RUNEWARP_LISTEN_PPID": str(os.getpid() if pid is None else pid),
            "RUNEWARP_LISTEN_FDS": ",".join(str(sock.fileno()) for sock, _, _ in sockets),
            "RUNEWARP_LISTEN_FDNAMES": ":".join(name or "" for _, name, _ in sockets),
            "RUNEWARP_LISTEN_UNIT": ",".join(str(sock.fileno()) for sock, _, unit in sockets
                                             if unit)}


def listen_fds(environ=None):
    """The sockets systemd or a hand-over passed to this process: [(socket.socket, name or
    None, unit_owned)], `unit_owned` when a socket unit passed it (to this process or to
    the one that handed it over): the unit owns its address.

    The variables are removed first, whatever they hold, so a child process (certbot, the
    next hand-over) never takes them for its own; each fd gets FD_CLOEXEC for the same
    reason.
    """
    environ = os.environ if environ is None else environ
    values = {key: environ.pop(key) for key in _LISTEN_VARIABLES + _HANDOVER_VARIABLES
              if key in environ}
    inherited = []
    by_systemd = values.get("LISTEN_PID", "").strip() == str(os.getpid())
    unit = values.get("RUNEWARP_LISTEN_UNIT", "").split(",")
    for fd, name in parse_listen_fds(values, os.getpid(), os.getppid()):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            inherited.append((socket.socket(fileno=fd), name, by_systemd or str(fd) in unit))
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd}: {(exc.strerror or str(exc)).lower()}") \
                from None
    return inherited
