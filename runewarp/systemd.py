"""systemd's notify protocol (sd_notify(3)) and socket activation (sd_listen_fds(3)).

Readiness, reload and stop are reported with a STATUS= line; RELOADING=1 carries
MONOTONIC_USEC, which notify-reload requires.  When the unit sets WatchdogSec=,
a greenlet pings every half interval, so a hub that stops running is restarted.
A socket unit's listening sockets arrive as fds 3, 4 ... (`listen_fds()`).
Every call is a no-op outside systemd.
"""

import fcntl
import os
import socket
import time

import gevent

from .errors import TransportError

LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


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


def ready(status):
    notify("READY=1", f"STATUS={status}")


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


def parse_listen_fds(environ, pid):
    """[(fd, name or None)] that LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES pass to process
    `pid`: none when LISTEN_PID is unset or names another process (the variables were
    inherited by mistake); ActivationError when they are meant for `pid` but unreadable."""
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return []
    count = environ.get("LISTEN_FDS", "")
    if not (count.isascii() and count.isdigit()):
        raise ActivationError(f"LISTEN_FDS={count!r}: not a number of file descriptors")
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    names = environ.get("LISTEN_FDNAMES")
    if names is None:
        return [(fd, None) for fd in fds]
    names = names.split(":")
    if len(names) != len(fds):
        raise ActivationError(f"LISTEN_FDNAMES={environ['LISTEN_FDNAMES']!r}: {len(names)} "
                              f"names for LISTEN_FDS={count}")
    return [(fd, name or None) for fd, name in zip(fds, names, strict=True)]


def listen_fds(environ=None):
    """The sockets systemd passed to this process: [(socket.socket, name or None)].

    The LISTEN_* variables are removed first, whatever they hold, so a child process
    (certbot) never takes them for its own; each fd gets FD_CLOEXEC for the same reason.
    """
    environ = os.environ if environ is None else environ
    values = {key: environ.pop(key) for key in _LISTEN_VARIABLES if key in environ}
    inherited = []
    for fd, name in parse_listen_fds(values, os.getpid()):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            inherited.append((socket.socket(fileno=fd), name))
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd}: {(exc.strerror or str(exc)).lower()}") \
                from None
    return inherited
