"""Run Runewarp processes from outside: one harness for `runewarp demo`, tests/ and bench/.

Start a process, read its stderr in the background (so a chatty child never blocks on
a full pipe and a silent one never hangs the caller), wait for a log event with a
deadline, stop it by PID with a bounded wait.  Plus one way to write a deployment's
server.toml / client.toml and start the pair.  Stdlib only and never imports gevent:
tests and bench are not monkey-patched, and the demo's patched threads work the same.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from signal import SIGKILL, SIGTERM

RESOLVE_ENV = "RUNEWARP_RESOLVE"
SERVER_READY = r"server-ready .*public-bind-address={}:(\d+)"
CLIENT_READY = "tunnel-connection-established"


class NoMatch(AssertionError):
    """No log line matched before the deadline or the process's exit; says so with the log."""


def runewarp_cmd(*args, python=sys.executable):
    return [python, "-m", "runewarp", *map(str, args)]


class Process:
    """A child whose stderr is collected line by line in the background.

    Lines are split on b"\\n" only and decoded with backslashreplace, so a raw CR or
    another control character that a log line should never hold stays visible.
    """

    def __init__(self, cmd, *, env=None, cwd=None, name=None, stdout=subprocess.DEVNULL,
                 new_session=False, pass_fds=()):
        self.name = name or Path(str(cmd[0])).name
        self.lines = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen([str(c) for c in cmd], stdout=stdout,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd,
                                      start_new_session=new_session, pass_fds=pass_fds)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self):
        return self.popen.pid

    def _read(self):
        for raw in self.popen.stderr:
            with self._cond:
                self.lines.append(raw.rstrip(b"\n").decode("utf-8", "backslashreplace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _ended(self):
        return self.popen.poll() is not None and not self._reader.is_alive()

    def wait_for(self, pattern, timeout=20, start=0):
        """The match of the first stderr line at or after index `start` that matches
        `pattern`; NoMatch after `timeout` s or once the process ended without one."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended():
                    raise NoMatch(f"{self.name}: no line matching {pattern!r} in:\n" + self.log())
                self._cond.wait(min(remaining, 0.2))

    def wait_count(self, pattern, count, timeout=20):
        """Wait until at least `count` stderr lines match `pattern`; NoMatch otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for line in self.lines if regex.search(line)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended():
                    raise NoMatch(f"{self.name}: fewer than {count} lines matching {pattern!r} "
                                  "in:\n" + self.log())
                self._cond.wait(min(remaining, 0.2))

    def count(self, pattern):
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def log(self):
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, signum):
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, sig=SIGTERM, timeout=15):
        """Signal by PID and wait up to `timeout` s; the exit code.  Past the deadline the
        process is killed and TimeoutExpired raised: a stop that needed force is a finding."""
        self.signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._reader.join(2)
        return self.popen.returncode

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def stop_all(procs, timeout=10, signal_of=lambda proc: SIGTERM):
    """Stop `procs` newest first, each with `signal_of(proc)`; a failure to stop one never
    leaves the others running."""
    for proc in reversed(procs):
        try:
            proc.stop(signal_of(proc), timeout=timeout)
        except Exception as exc:  # keep going: the others must still be stopped
            print(f"warning: stopping {proc.name} pid {proc.pid}: {exc}", file=sys.stderr)


def resolve_env(hostname, address="127.0.0.1", base=None):
    """The environment that makes `hostname` resolve to `address` in Runewarp (no DNS)."""
    return dict(os.environ if base is None else base, **{RESOLVE_ENV: f"{hostname}={address}"})


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string for any path or text we write


def config_text(role, settings, entries=(), log_level=None, extra=""):
    """A server.toml / client.toml: `[role]` with `settings` (then the raw `extra` lines),
    and one `[[server.tunnels]]` / `[[client.services]]` table per dict in `entries`.
    None values are left out."""
    lines = [f"log-level = {_toml(log_level)}"] if log_level else []
    lines.append(f"[{role}]")
    lines += [f"{key} = {_toml(value)}" for key, value in settings.items() if value is not None]
    if extra.strip():
        lines += [line.strip() for line in extra.strip().splitlines()]
    table = "tunnels" if role == "server" else "services"
    for entry in entries:
        lines += ["", f"[[{role}.{table}]]"]
        lines += [f"{key} = {_toml(value)}" for key, value in entry.items() if value is not None]
    return "\n".join(lines) + "\n"


def start_server(config, env, bind_ip="127.0.0.1", timeout=20, runewarp=None, prefix=(),
                 **options):
    """The Server for `config`, once it logged server-ready: (Process, public port).
    `runewarp`: the command that runs Runewarp (default: this one); `prefix` goes before
    it (e.g. `ip netns exec NS`)."""
    cmd = [*prefix, *(runewarp or runewarp_cmd()), "server", "-c", config]
    proc = Process(cmd, env=env, **{"name": "runewarp-server", **options})
    match = _ready(proc, SERVER_READY.format(re.escape(bind_ip)), timeout)
    return proc, int(match.group(1))


def start_client(config, env, wait=True, timeout=20, runewarp=None, prefix=(), **options):
    """The Client for `config`, once its first Tunnel connection is up (unless not `wait`)."""
    cmd = [*prefix, *(runewarp or runewarp_cmd()), "client", "-c", config]
    proc = Process(cmd, env=env, **{"name": "runewarp-client", **options})
    if wait:
        _ready(proc, CLIENT_READY, timeout)
    return proc


def _ready(proc, pattern, timeout):
    """Wait for `pattern`; a process that never got ready is killed, never left behind."""
    try:
        return proc.wait_for(pattern, timeout=timeout)
    except NoMatch:
        proc.kill()
        raise


# -- processes that are not our children: a hand-over's successor (SIGUSR2) --

def read_pid_file(path):
    """The pid in `path`; None while it is missing, empty or half written."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def pid_alive(pid):
    """True while `pid` runs (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_pid_file(path, other_than=None, timeout=20):
    """The live pid `path` names once it is not `other_than`; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid_file(path)
        if pid and pid != other_than and pid_alive(pid):
            return pid
        time.sleep(0.05)
    raise TimeoutError(f"{path} still names {read_pid_file(path)} after {timeout}s")


def stop_pid(pid, sig=SIGTERM, timeout=15):
    """Signal `pid` and wait until it is gone, for a process started by another one (so
    never waited for here).  Past the deadline it is killed and TimeoutError raised."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, SIGKILL)
            except ProcessLookupError:
                return
            raise TimeoutError(f"pid {pid} still running {timeout}s after signal {sig}")
        time.sleep(0.05)


def listening_ports(pid):
    """The TCP ports `pid`'s network namespace listens on (any address; /proc/PID/net, so
    a process in another namespace is read in its own)."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        ports |= {int(row.split()[1].rsplit(":", 1)[1], 16) for row in rows if row.split()[3] == "0A"}
    return ports


def wait_listening(proc, ports, timeout=15):
    """Until something in `proc`'s namespace listens on every port of `ports`, without a
    probe connection (which a PROXY-protocol listener would log as a bad header)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.poll() is None:
        if set(ports) <= listening_ports(proc.pid):
            return
        time.sleep(0.05)
    raise NoMatch(f"{proc.name} is not listening on {sorted(ports)}:\n{proc.log()}")


def nginx_config(folder, http, *, connections=64, error_log="stderr warn", main=""):
    """An nginx.conf for a backend run by a test, the bench or a demo: in the foreground,
    every path (pid, temp folders) under `folder`, so it needs no root and leaves nothing
    behind; `http` is the inside of the http block, `main` extra top-level directives."""
    temp = "".join(f"    {name}_temp_path {folder}/{name};\n"
                   for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\n{main or 'master_process off;'}\npid {folder}/nginx.pid;\n"
            f"error_log {error_log};\nevents {{ worker_connections {connections}; }}\n"
            f"http {{\n{temp}{http}}}\n")
