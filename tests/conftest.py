"""Shared fixtures: real Runewarp processes on 127.0.0.1 with material made by our own CLI."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_HOSTNAME = "tunnel.example.com"


def runewarp_cmd(*args):
    return [sys.executable, "-m", "runewarp", *map(str, args)]


def run_cli(*args, env=None, check=True, timeout=60):
    proc = subprocess.run(runewarp_cmd(*args), capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"runewarp {' '.join(map(str, args))} failed "
                             f"({proc.returncode}): {proc.stderr}")
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A Runewarp process whose stderr is collected line by line in the background.

    Lines are split on b"\\n" only and decoded with backslashreplace, so a raw CR or
    other control character a log line should never hold stays visible to tests.
    """

    def __init__(self, args, env=None):
        self.args = args
        self.lines = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(runewarp_cmd(*args), stderr=subprocess.PIPE,
                                      env=env, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.popen.stderr:
            with self._cond:
                self.lines.append(raw.rstrip(b"\n").decode("utf-8", "backslashreplace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern, timeout=20, start=0):
        """Wait for a stderr line matching `pattern` at or after index `start`; the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + self.log())
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

    def stop(self, timeout=15):
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


class Deployment:
    """Material and configs for one Server and any number of Clients, in a tmp folder."""

    def __init__(self, tmp_path, processes):
        self.dir = tmp_path
        self.processes = processes
        self.cert_dir = tmp_path / "server-cert"
        run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", self.cert_dir)
        self.ca_file = self.cert_dir / "server-ca.crt"
        self.public_port = None
        self.env = dict(os.environ, RUNEWARP_RESOLVE=f"{SERVER_HOSTNAME}=127.0.0.1")

    def identity(self, name):
        proc = run_cli("client", "identity", "init", "--dir", self.dir / name)
        return proc.stdout.strip()

    def server_config(self, tunnels, extra=""):
        lines = [f"""
            log-level = "debug"
            [server]
            hostname = "{SERVER_HOSTNAME}"
            public-bind-address = "127.0.0.1:0"
            cert-dir = "server-cert"
            graceful-shutdown-duration = 3
            {extra}
        """]
        for name, hostnames, identities in tunnels:
            quoted = ", ".join(f'"{h}"' for h in hostnames)
            ids = ", ".join(f'"{i}"' for i in identities)
            lines.append(f"""
            [[server.tunnels]]
            name = "{name}"
            public-hostnames = [{quoted}]
            client-identities = [{ids}]
            """)
        path = self.dir / "server.toml"
        path.write_text(textwrap.dedent("".join(lines)))
        return path

    def start_server(self, tunnels, extra=""):
        path = self.server_config(tunnels, extra)
        proc = Proc(["server", "-c", path], env=self.env)
        self.processes.append(proc)
        match = proc.wait_for(r"server-ready .*public-bind-address=127\.0\.0\.1:(\d+)")
        self.public_port = int(match.group(1))
        return proc

    def client_config(self, name, services, port=None, public_cert_dir=None):
        """`services`: (hostnames, backend) or (hostnames, backend, tls_mode) tuples."""
        lines = [f"""
            log-level = "debug"
            [client]
            server-address = "{SERVER_HOSTNAME}:{port or self.public_port}"
            server-trust = "ca-file"
            server-ca-file = "server-cert/server-ca.crt"
            identity-dir = "{name}"
            graceful-shutdown-duration = 3
        """]
        if public_cert_dir:
            lines.append(f'public-cert-dir = "{public_cert_dir}"\n')
        for hostnames, backend, *mode in services:
            lines.append("\n[[client.services]]\n")
            if hostnames:
                lines.append("public-hostnames = [" + ", ".join(f'"{h}"' for h in hostnames)
                             + "]\n")
            lines.append(f'backend-address = "{backend}"\n')
            if mode:
                lines.append(f'tls-mode = "{mode[0]}"\n')
        path = self.dir / f"{name}.toml"
        path.write_text(textwrap.dedent(lines[0]) + "".join(lines[1:]))
        return path

    def start_client(self, name, services, wait=True):
        path = self.client_config(name, services)
        proc = Proc(["client", "-c", path], env=self.env)
        self.processes.append(proc)
        if wait:
            proc.wait_for("tunnel-connection-established")
        return proc


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path, processes):
    return Deployment(tmp_path, processes)


@pytest.fixture
def backend(tmp_path):
    """tests/backend.py serving app.example.com over TLS (see tests/e2e/helpers.Backend)."""
    from .e2e.helpers import Backend  # helpers imports this module: import at use
    from .e2e.peers import APP

    started = Backend(tmp_path, "app", [APP])
    yield started
    started.stop()


@pytest.fixture
def plain_backend(tmp_path):
    """`python -m http.server`: a plaintext Local backend nobody here wrote."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("plaintext backend\n")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split(" port ")[1].split()[0])
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
