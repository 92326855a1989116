"""`runewarp server|client -d` around the lifecycle, `stop`, and where the pid and log files are.

The defaults of `pid-file` and `log-file` apply with -d; a value set in the config
applies in the foreground too.  `stop` and `status` find the pid file with `peek`, so
a config edited into invalid values since the start still stops its process.

A hand-over's new process (runewarp/handover.py) runs with the same arguments: it
does not detach again, takes the pid file over from the old process that started it,
and writes it only once it serves, just before it tells the old one.
"""

import math
import os
import signal
import sys
from functools import partial

from .. import config as configuration, daemon, handover
from ..config.paths import default_log_file, default_pid_file
from ..config.schema import default
from ..errors import ConfigError
from ..logs import log
from ..workers import this_worker
from .common import CONFIG, HELP, ROLES, fail, selected_config

STOP_MARGIN = 10.0  # seconds past graceful-shutdown-duration before stop gives up

STOP = """Stop the {role} started with 'runewarp {role} -d': SIGTERM to the pid in its
pid file ([{role}] pid-file), then wait until the graceful drain is over.

Usage:
  runewarp {role} stop [-c FILE]

Options:
{config}
{help}

Exit status: 0 once the process is gone; 1 when it was not running (no pid file,
or one naming no Runewarp {role}) or still runs graceful-shutdown-duration plus
{margin:g} s after SIGTERM.
"""


def run(args, role, cfg, lifecycle):
    """Run `lifecycle` in the foreground, or with -d in a detached child whose start the
    parent waits for; writes the pid file and opens the log file around it."""
    detach = bool(args.get("--detach"))
    log_path = cfg.log_file or (default_log_file(os.environ, role) if detach else None)
    if this_worker().count > 1:
        return _run_worker(cfg, role, lifecycle, log_path, detach)
    pid_path = cfg.pid_file or (default_pid_file(os.environ, role) if detach else None)
    pid_file = daemon.PidFile(pid_path, role) if pid_path is not None else None
    successor = handover.Successor.from_environ()
    if pid_file is not None:
        live = _opening(cfg, role, "pid-file", pid_path, pid_file.live_pid)
        if live is not None and (successor is None or live != successor.parent):
            return fail(f"the {role} is already running as pid {live} (pid file {pid_path}); "
                        f"'runewarp {role} stop' stops it", 1)
    if successor is not None:
        lifecycle.successor = True
        lifecycle.on_ready = partial(_take_over, cfg, role, pid_file, successor)
    elif detach:
        pid, channel = daemon.fork()
        if pid:
            return _report_start(role, pid, channel, log_path)
        lifecycle.on_ready = daemon.Starting(channel).ready
    if log_path is not None:
        _opening(cfg, role, "log-file", log_path, lambda: log.open_file(log_path, std=detach))
    if pid_file is not None and successor is None:
        _opening(cfg, role, "pid-file", pid_path, pid_file.write)
    try:
        return lifecycle.run()
    finally:
        if pid_file is not None:
            pid_file.remove()


def _run_worker(cfg, role, lifecycle, log_path, detach):
    """A supervisor's worker (runewarp/supervisor.py): it tells the supervisor when it
    serves, on the pipe it was given; the pid file, the detach and systemd are the
    supervisor's.  It opens the log file itself, so SIGUSR1 reopens it here too."""
    started = handover.Successor.from_environ()
    if started is not None:
        lifecycle.on_ready = started.ready
    if log_path is not None:
        _opening(cfg, role, "log-file", log_path, lambda: log.open_file(log_path, std=detach))
    return lifecycle.run()


def _take_over(cfg, role, pid_file, successor):
    """A hand-over's new process serves: the pid file names it, then the old one hears it."""
    if pid_file is not None:
        _opening(cfg, role, "pid-file", pid_file.path, pid_file.write)
    successor.ready()


def _opening(cfg, role, key, path, action):
    """`action()`, which opens `path`, the file of `key`; a file it cannot open is a config
    error naming the key, whether the path is the key's or its default."""
    try:
        return action()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        if exc.filename is not None and str(exc.filename) != str(path):
            reason = f"{exc.filename}: {reason}"
        raise ConfigError(f"cannot open {path} ({reason})", file=cfg.source or "command line",
                          key=f"{role}.{key}") from None


def _report_start(role, pid, channel, log_path):
    """The parent of -d: the pid on stdout once the child serves, else what it said and its
    exit status."""
    said, status = daemon.wait_ready(pid, channel)
    if said:
        sys.stderr.write(said if said.endswith("\n") else said + "\n")
    if status == 0:
        print(pid)
        return 0
    if status is None:
        return fail(f"the {role} (pid {pid}) did not report ready within "
                    f"{daemon.READY_TIMEOUT:g}s; see {log_path}", 1)
    if not said:
        fail(f"the {role} (pid {pid}) ended during its start; see {log_path}", status)
    return status


def pid_path(role, config_path):
    """The pid file of `role`: the config's pid-file, else the default of -d."""
    explicit = configuration.peek(config_path, f"{role}.pid-file")
    return explicit if explicit is not None else default_pid_file(os.environ, role)


def not_running(role, config_path):
    """Why the pid file shows no running `role` (no file, stale), or None when it does."""
    path = pid_path(role, config_path)
    pid_file = daemon.PidFile(path, role)
    pid = pid_file.read()
    if pid is None:
        return f"no pid file at {path}" if not path.exists() else f"no pid in the pid file {path}"
    if not pid_file.running(pid):
        return f"a stale pid file at {path} (pid {pid} is no runewarp {role})"
    return None


def _grace(role, config_path):
    """graceful-shutdown-duration as the file says it, else its default (stop must work on
    a file that no longer loads)."""
    value = configuration.peek(config_path, f"{role}.graceful-shutdown-duration")
    valid = isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value) and value >= 0
    return float(value) if valid else default(f"{role}.graceful-shutdown-duration")


def stop(args, role):
    path = selected_config(args)
    reason = not_running(role, path)
    if reason is not None:
        return fail(f"the {role} is not running ({reason})", 1)
    pid = daemon.PidFile(pid_path(role, path), role).read()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    wait = _grace(role, path) + STOP_MARGIN
    if daemon.wait_gone(pid, role, wait):
        return 0
    return fail(f"the {role} (pid {pid}) still runs {wait:g}s after SIGTERM; a second "
                "SIGTERM cuts its open streams at once", 1)


COMMANDS = tuple(((role, "stop"), STOP.format(role=role, config=CONFIG, help=HELP,
                                              margin=STOP_MARGIN),
                  partial(stop, role=role)) for role in ROLES)
