"""Shared fixtures: real Runewarp processes on 127.0.0.1 with material made by our own CLI."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runewarp import harness

ROOT = Path(__file__).resolve().parent.parent
# `coverage run` with `patch = subprocess` (docs/testing.md) measures our child processes too.
MEASURING_COVERAGE = "COVERAGE_PROCESS_CONFIG" in os.environ
SERVER_HOSTNAME = "tunnel.example.com"


runewarp_cmd = harness.runewarp_cmd


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


class Proc(harness.Process):
    """`runewarp ARGS` run from the repository root (see runewarp/harness.py)."""

    def __init__(self, args, env=None, pass_fds=()):
        self.args = args
        super().__init__(runewarp_cmd(*args), env=env, cwd=ROOT, name=f"runewarp {args[0]}",
                         pass_fds=pass_fds)


_MATERIAL = {"root": None}  # made once per test process by the CLI, then copied


@pytest.fixture(scope="session", autouse=True)
def _material_root(tmp_path_factory):
    _MATERIAL["root"] = tmp_path_factory.mktemp("material")


def cli_material(dest, *args, copy_of=""):
    """`runewarp ARGS --dir DEST`, run by the CLI once per test process for each ARGS (and
    `copy_of`, to keep same-looking material apart) and copied after: each run is a Python
    start-up, and most tests need the same few kinds.  The CLI's stdout."""
    key = (*map(str, args), copy_of)
    if key not in _MATERIAL:
        folder = _MATERIAL["root"] / f"m{len(_MATERIAL)}"
        _MATERIAL[key] = folder, run_cli(*args, "--dir", folder).stdout
    folder, out = _MATERIAL[key]
    shutil.copytree(folder, dest, symlinks=True)
    return out


class Deployment:
    """Material and configs for one Server and any number of Clients, in a tmp folder."""

    def __init__(self, tmp_path, processes):
        self.dir = tmp_path
        self.processes = processes
        self.cert_dir = tmp_path / "server-cert"
        cli_material(self.cert_dir, "server", "cert", "init", "--hostname", SERVER_HOSTNAME)
        self.ca_file = self.cert_dir / "server-ca.crt"
        self.public_port = None
        self.env = harness.resolve_env(SERVER_HOSTNAME)

    def identity(self, name):
        return cli_material(self.dir / name, "client", "identity", "init", copy_of=name).strip()

    def server_config(self, tunnels, extra=""):
        """`tunnels`: (name, public hostnames, client identities) tuples."""
        text = harness.config_text("server", {
            "hostname": SERVER_HOSTNAME, "public-bind-address": "127.0.0.1:0",
            "cert-dir": "server-cert", "graceful-shutdown-duration": 3,
        }, [{"name": name, "public-hostnames": hostnames, "client-identities": identities}
            for name, hostnames, identities in tunnels], log_level="debug", extra=extra)
        path = self.dir / "server.toml"
        path.write_text(text)
        return path

    def start_server(self, tunnels, extra=""):
        path = self.server_config(tunnels, extra)
        proc = Proc(["server", "-c", path], env=self.env)
        self.processes.append(proc)
        match = proc.wait_for(harness.SERVER_READY.format(r"127\.0\.0\.1"))
        self.public_port = int(match.group(1))
        return proc

    def client_config(self, name, services, port=None, public_cert_dir=None, settings=None):
        """`services`: (hostnames, backend) or (hostnames, backend, tls_mode) tuples;
        `settings`: more [client] keys."""
        text = harness.config_text("client", {
            "server-address": f"{SERVER_HOSTNAME}:{port or self.public_port}",
            "server-trust": "ca-file", "server-ca-file": "server-cert/server-ca.crt",
            "identity-dir": name, "graceful-shutdown-duration": 3,
            "public-cert-dir": public_cert_dir, **(settings or {}),
        }, [{"public-hostnames": hostnames or None, "backend-address": backend,
             "tls-mode": mode[0] if mode else None} for hostnames, backend, *mode in services],
            log_level="debug")
        path = self.dir / f"{name}.toml"
        path.write_text(text)
        return path

    def start_client(self, name, services, wait=True, settings=None):
        path = self.client_config(name, services, settings=settings)
        proc = Proc(["client", "-c", path], env=self.env)
        self.processes.append(proc)
        if wait:
            proc.wait_for(harness.CLIENT_READY)
        return proc


# Tests whose assertions are timings or memory figures, and tests that build in the
# source tree: under `make test` (pytest-xdist,
# --dist loadgroup) each group runs on one worker, one test after another, so two of them
# never compete for the CPU.  Keys are nodeid prefixes under tests/ (folder, file, test).
XDIST_GROUPS = {
    "adversarial/": "timing",
    "e2e/test_bad_peers.py": "timing",
    "e2e/test_ha.py": "timing",
    "e2e/test_handover.py": "timing",
    "e2e/test_health.py": "timing",
    "e2e/test_lifecycle.py": "timing",
    "e2e/test_load_balancer.py": "timing",
    "e2e/test_placement.py": "timing",
    "e2e/test_metrics.py": "timing",
    "e2e/test_reload.py": "timing",
    "e2e/test_reload_keys.py": "timing",
    "e2e/test_retry.py": "timing",
    "e2e/test_rotation.py": "timing",
    "io/test_watch.py": "timing",
    "e2e/test_passthrough.py::test_stalled_backend": "timing",
    "e2e/test_passthrough.py::test_bad_visitors": "timing",
    "e2e/test_timeouts.py": "timing",
    "e2e/test_quic.py::test_500_flows": "timing",
    "e2e/test_quic.py::test_an_http3_visitor_gets_through_a_flood": "timing",
    "io/test_splice_timeouts.py": "timing",
    "io/test_tunnel_io.py": "timing",
    # `make install` and the wheel and venv builds run in the one source tree (build/,
    # *.egg-info): two at once would trip over each other's files.
    "test_install.py": "source-tree",
    "test_packaging.py": "source-tree",
    "test_image.py": "source-tree",
}


def xdist_group(nodeid):
    path = nodeid.removeprefix("tests/")
    return next((group for key, group in XDIST_GROUPS.items() if path.startswith(key)), None)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup with XDIST_GROUPS as the groups.  xdist's own xdist_group mark works
    by renaming nodeids, which pytest 9.2 no longer lets a plugin do, so the groups are
    given to the scheduler directly."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Grouped(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            return xdist_group(nodeid) or super()._split_scope(nodeid)

    return Grouped(config, log)


@pytest.fixture
def processes():
    started = []
    yield started
    for proc in started:
        if MEASURING_COVERAGE and proc.popen.poll() is None:
            try:  # a killed process would lose its coverage data: stop it instead
                proc.stop(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()


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
def echo_backend():
    """A plain TCP echo server on 127.0.0.1 (tests/e2e/helpers.EchoBackend)."""
    from .e2e.helpers import EchoBackend

    started = EchoBackend()
    yield started
    started.close()


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


# -- config tests: a HOME of their own and a config file to write --

@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home):
    return {"HOME": str(home)}


@pytest.fixture
def write(tmp_path):
    def write(text, name="config.toml"):
        path = tmp_path / "etc" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write
