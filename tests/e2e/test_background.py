"""`runewarp server|client -d`, `stop`, `status`, the pid file and SIGUSR1, as a black box:
real detached processes on loopback, curl as the Visitor, every started pid killed after."""

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from runewarp import daemon, harness

from ..conftest import ROOT, SERVER_HOSTNAME, free_port, run_cli
from .helpers import curl
from .peers import APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class Background:
    """Configs for a detached Server and Client, with XDG folders of their own, and every
    pid a test started, killed by pid when the test ends."""

    def __init__(self, deployment, backend):
        self.deployment, self.backend = deployment, backend
        self.dir = deployment.dir
        self.env = dict(deployment.env, XDG_RUNTIME_DIR=str(self.dir / "run"),
                        XDG_STATE_HOME=str(self.dir / "state"))
        self.identity = deployment.identity("client-a")
        self.public_port, self.metrics_port = free_port(), free_port()
        self.pids = []

    def server_config(self, extra="", port=None, name="server.toml"):
        text = harness.config_text("server", {
            "hostname": SERVER_HOSTNAME, "public-bind-address": f"127.0.0.1:{port or self.public_port}",
            "cert-dir": "server-cert", "graceful-shutdown-duration": 3,
        }, [{"name": "apps", "public-hostnames": [APP], "client-identities": [self.identity]}],
            log_level="debug", extra=extra)
        path = self.dir / name
        path.write_text(text.replace("[[server.tunnels]]", f"[server.metrics]\nbind-address = "
                                     f'"127.0.0.1:{self.metrics_port}"\n\n[[server.tunnels]]', 1))
        return path

    def client_config(self):
        return self.deployment.client_config("client-a", [([APP], self.backend.address)],
                                             port=self.public_port)

    def cli(self, *args, timeout=60):
        proc = subprocess.run(harness.runewarp_cmd(*args), capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=self.dir)
        if proc.returncode == 0 and "-d" in args:
            self.pids.append(int(proc.stdout))
        return proc

    def start(self, role, path):
        proc = self.cli(role, "-d", "-c", path)
        assert proc.returncode == 0, proc.stderr
        assert re.fullmatch(r"\d+\n", proc.stdout), proc.stdout
        return int(proc.stdout)

    def default_pid_file(self, role):
        return self.dir / "run/runewarp" / f"{role}.pid"

    def default_log_file(self, role):
        return self.dir / "state/runewarp" / f"{role}.log"

    def kill_all(self):
        for pid in self.pids:
            if daemon.names_runewarp(daemon.cmdline(pid), "server") or \
                    daemon.names_runewarp(daemon.cmdline(pid), "client"):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bg(deployment, backend):
    started = Background(deployment, backend)
    try:
        yield started
    finally:
        started.kill_all()


def wait_for_line(path, pattern, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} in {path}:\n{text}"
        time.sleep(0.1)


def running(pid, role):
    return daemon.names_runewarp(daemon.cmdline(pid), role)


def test_detached_pair_serves_reports_status_and_stops(bg):
    server_toml, client_toml = bg.server_config(), bg.client_config()
    server = bg.start("server", server_toml)
    client = bg.start("client", client_toml)
    assert bg.default_pid_file("server").read_text() == f"{server}\n"
    assert bg.default_pid_file("client").read_text() == f"{client}\n"
    assert oct(bg.default_pid_file("server").stat().st_mode & 0o777) == "0o644"
    # No controlling terminal, own session; stdin is /dev/null, stdout and stderr the log file.
    fields = open(f"/proc/{server}/stat").read().rsplit(")", 1)[1].split()
    assert int(fields[3]) == server and int(fields[4]) == 0  # session id, tty_nr
    assert os.readlink(f"/proc/{server}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{server}/fd/2") == str(bg.default_log_file("server"))
    wait_for_line(bg.default_log_file("client"), "tunnel-connection-established")
    assert "server-ready" in bg.default_log_file("server").read_text()

    visit = curl(bg.public_port, APP, bg.backend.ca)
    assert visit.returncode == 0 and visit.stdout == b"backend=app\n", visit.stderr
    wait_for_line(bg.default_log_file("server"), "visitor-closed")

    status = bg.cli("server", "status", "-c", server_toml)
    assert status.returncode == 0 and "apps" in status.stdout, status.stderr
    os.kill(server, signal.SIGHUP)  # a detached process reloads like any other
    wait_for_line(bg.default_log_file("server"), "server-reloaded")

    for role, pid, path in (("client", client, client_toml), ("server", server, server_toml)):
        stop = bg.cli(role, "stop", "-c", path)
        assert (stop.returncode, stop.stdout, stop.stderr) == (0, "", "")
        assert not running(pid, role)
        assert not bg.default_pid_file(role).exists()
    assert "shutdown-complete" in bg.default_log_file("server").read_text()

    status = bg.cli("server", "status", "-c", server_toml)
    assert status.returncode == 1
    assert status.stderr.splitlines()[0] == (
        f"error: the server is not running: nothing answers at 127.0.0.1:{bg.metrics_port} "
        f"(server.metrics.bind-address in {server_toml}) and there is no pid file at "
        f"{bg.default_pid_file('server')}")


def test_a_bad_config_fails_the_detached_start_at_once(bg):
    path = bg.server_config(extra="hostname-typo = 1")
    proc = bg.cli("server", "-d", "-c", path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[0].startswith(f"error: {path}: server.hostname-typo: unknown key")
    assert not bg.default_pid_file("server").exists()


def test_a_bind_failure_in_the_detached_child_comes_back_with_exit_1(bg):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        path = bg.server_config(port=taken.getsockname()[1])
        proc = bg.cli("server", "-d", "-c", path)
    assert proc.returncode == 1 and proc.stdout == ""
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}: server.public-bind-address") and \
        "in use" in first, proc.stderr
    assert not bg.default_pid_file("server").exists()
    assert first in bg.default_log_file("server").read_text()


@pytest.mark.parametrize("key, reason", [
    ("log-file", "{path}: file exists"),  # in the detached child, while it starts
    ("pid-file", "not a directory"),  # in the parent, checking for a running process
])
def test_a_file_the_detached_start_cannot_open_names_its_key(bg, key, reason):
    path = bg.server_config(extra=f'{key} = "server.toml/x"')  # under a file: no folder there
    reason = reason.format(path=path)
    proc = bg.cli("server", "-d", "-c", path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"error: {path}: server.{key}: cannot open {path}/x ({reason})")


def test_a_stale_pid_file_is_replaced(bg):
    pid_file = bg.default_pid_file("server")
    pid_file.parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    sleeper = subprocess.Popen(["sleep", "60"])  # alive, but no Runewarp
    try:
        path = bg.server_config()
        for stale in (dead.pid, sleeper.pid):
            pid_file.write_text(f"{stale}\n")
            pid = bg.start("server", path)
            assert pid_file.read_text() == f"{pid}\n"
            assert bg.cli("server", "stop", "-c", path).returncode == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_live_pid_file_refuses_a_second_start(bg):
    path = bg.server_config()
    pid = bg.start("server", path)
    again = bg.cli("server", "-d", "-c", path)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.splitlines()[0] == (
        f"error: the server is already running as pid {pid} (pid file "
        f"{bg.default_pid_file('server')}); 'runewarp server stop' stops it")
    assert bg.default_pid_file("server").read_text() == f"{pid}\n" and running(pid, "server")


def test_sigusr1_reopens_the_log_file_after_logrotate_moved_it(bg):
    log_file = bg.dir / "logs/server.log"
    path = bg.server_config(extra='log-file = "logs/server.log"\npid-file = "server.pid"')
    pid = bg.start("server", path)
    assert (bg.dir / "server.pid").read_text() == f"{pid}\n"
    wait_for_line(log_file, "server-ready")
    rotated = log_file.rename(bg.dir / "logs/server.log.1")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not log_file.exists():
        assert time.monotonic() < deadline, "SIGUSR1 opened no new log file"
        time.sleep(0.05)
    assert oct(log_file.stat().st_mode & 0o777) == "0o640"
    before = rotated.read_text()
    assert curl(bg.public_port, "unknown.example.com", bg.backend.ca).returncode != 0
    wait_for_line(log_file, "visitor-rejected")
    assert rotated.read_text() == before
    assert os.readlink(f"/proc/{pid}/fd/2") == str(log_file)


def test_stop_without_a_pid_file_says_it_is_not_running(bg):
    path = bg.server_config()
    proc = bg.cli("server", "stop", "-c", path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", f"error: the server is not running (no pid file at "
               f"{bg.default_pid_file('server')})\n")


def test_an_explicit_pid_file_is_written_in_the_foreground_too(bg, deployment):
    path = bg.server_config(extra='pid-file = "fg.pid"')
    proc = harness.Process(harness.runewarp_cmd("server", "-c", path), env=bg.env, cwd=bg.dir)
    deployment.processes.append(proc)
    proc.wait_for("server-ready")
    assert (bg.dir / "fg.pid").read_text() == f"{proc.pid}\n"
    assert run_cli("server", "stop", "-c", path, env=bg.env).returncode == 0
    assert proc.popen.wait(10) == 0 and not (bg.dir / "fg.pid").exists()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed")
def test_the_shipped_logrotate_file_rotates_a_detached_server(bg):
    """conf/runewarp.logrotate as `make install` writes it, its folders moved under the
    test's: logrotate moves the log and its postrotate sends USR1 through the pid file."""
    state = bg.dir / "var"
    user = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    text = (ROOT / "conf/runewarp.logrotate").read_text()
    conf = bg.dir / "runewarp.logrotate"
    conf.write_text(text.replace("/var/lib/runewarp", str(state))
                    .replace("su @USER@ @USER@", "su {} {}".format(*user)))
    path = bg.server_config(extra=f'log-file = "{state}/log/server.log"\n'
                                  f'pid-file = "{state}/run/server.pid"')
    pid = bg.start("server", path)
    log_file = state / "log/server.log"
    wait_for_line(log_file, "server-ready")
    rotate = subprocess.run(["logrotate", "-f", "-s", str(bg.dir / "logrotate.state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert rotate.returncode == 0, rotate.stderr
    assert "server-ready" in (state / "log/server.log.1").read_text()
    assert curl(bg.public_port, "unknown.example.com", bg.backend.ca).returncode != 0
    assert "server-ready" not in wait_for_line(log_file, "visitor-rejected")
    assert os.readlink(f"/proc/{pid}/fd/2") == str(log_file)
