"""systemd's notify protocol (sd_notify(3)) for Type=notify and Type=notify-reload units.

Readiness, reload and stop are reported with a STATUS= line; RELOADING=1 carries
MONOTONIC_USEC, which notify-reload requires.  When the unit sets WatchdogSec=,
a greenlet pings every half interval, so a hub that stops running is restarted.
Every call is a no-op outside systemd.
"""

import os
import socket
import time

import gevent


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
