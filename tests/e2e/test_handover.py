"""Listener hand-over without a gap (SIGUSR2): real Server, Client and TLS backend processes,
Visitors as stdlib TLS clients.  The new Server process writes to the old one's stderr, so
both processes' lines arrive in the one `Proc` the test started."""

import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from runewarp import daemon

from ..conftest import Proc, free_port
from .helpers import ECHO, NotifySocket, body_of, echo_visitor, get, round_trip, tls_visit
from .peers import APP
from .test_background import bg, running, wait_for_line  # noqa: F401 - bg is a fixture
from .test_systemd import needs_activate, socket_activated_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class Node:
    """A Server on fixed ports (a hand-over keeps them), with a pid file and a metrics
    listener; the processes that took over from it are stopped at the end."""

    def __init__(self, deployment, backend, env=None):
        self.deployment = deployment
        self.public_port, self.metrics_port = free_port(), free_port()
        self.pid_path = deployment.dir / "server.pid"
        identity = deployment.identity("client-a")
        self.config = deployment.server_config([("apps", [APP], [identity])], extra=(
            f'pid-file = "{self.pid_path}"\n[server.metrics]\n'
            f'bind-address = "127.0.0.1:{self.metrics_port}"'))
        self.text = self.config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{self.public_port}"')
        self.config.write_text(self.text)
        deployment.public_port = self.public_port
        self.server = Proc(["server", "-c", self.config], env=env or deployment.env)
        deployment.processes.append(self.server)
        self.server.wait_for("server-ready")
        client_env = dict(deployment.env, RUNEWARP_RECONNECT_WINDOWS="0.1,0.2")
        path = deployment.client_config("client-a", [([APP], backend.address)])
        self.client = Proc(["client", "-c", path], env=client_env)
        deployment.processes.append(self.client)
        self.client.wait_for("tunnel-connection-established")
        self.backend = backend

    def pid(self):
        return int(self.pid_path.read_text())

    def visit(self):
        _, response = tls_visit(self.public_port, APP, self.backend.ca, get("/", APP), timeout=10)
        assert body_of(response) == b"backend=app\n", response
        return response

    def status(self):
        url = f"http://127.0.0.1:{self.metrics_port}/status"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.load(reply)

    def hand_over(self, outcome="handover-(complete|failed)", timeout=30):
        mark = len(self.server.lines)
        os.kill(self.pid(), signal.SIGUSR2)
        return self.server.wait_for(outcome, start=mark, timeout=timeout)


def listening_inodes(pid):
    """The socket inodes process `pid` holds (its fds pointing at sockets)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_socket_inode(port):
    """The inode of the socket listening on 127.0.0.1:`port` (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        row = line.split()
        if row[1] == wanted and row[3] == "0A":
            return row[9]
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def successors(tmp_path):
    """Pids of Server processes a hand-over started, stopped at the end of the test; also
    any other Server started on this test's files (a test that failed before it knew the
    pid), found by its command line."""
    pids = []
    yield pids
    for proc in Path("/proc").iterdir():
        line = daemon.cmdline(proc.name) if proc.name.isdigit() else None
        if daemon.names_runewarp(line, "server") and str(tmp_path).encode() in line:
            pids.append(int(proc.name))
    for pid in dict.fromkeys(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        if not daemon.wait_gone(pid, "server", 10):
            os.kill(pid, signal.SIGKILL)


class Load:
    """Visitors one after another on a few threads until stopped: counts and failures."""

    def __init__(self, node, threads=3):
        self.node = node
        self.done = threading.Event()
        self.served = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                self.node.visit()
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self.lock:
                    self.failures.append(repr(exc))
            else:
                with self.lock:
                    self.served += 1

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join(15)


def test_handover_under_load_keeps_every_visitor_and_the_listening_socket(
        deployment, backend, successors):
    node = Node(deployment, backend)
    old = node.server.pid
    assert node.pid() == old
    inode = listening_socket_inode(node.public_port)
    metrics_inode = listening_socket_inode(node.metrics_port)
    load = Load(node)
    try:
        time.sleep(2)
        before = load.served
        match = node.hand_over()
        assert match.group(0) == "handover-complete", node.server.log()
        new = node.pid()
        successors.append(new)
        assert new != old and f"handover-complete new-pid={new}" in node.server.log()
        assert node.server.popen.wait(timeout=20) == 0  # the old one drained and exited
        time.sleep(2)
    finally:
        load.stop()
    print(f"served {load.served} Visitors ({before} before the hand-over), "
          f"failed {len(load.failures)}")
    assert load.failures == [], load.failures[:5]
    assert load.served > before + 10
    # The same listening sockets, now held by the new process alone: nothing was bound again.
    assert listening_socket_inode(node.public_port) == inode
    assert listening_socket_inode(node.metrics_port) == metrics_inode
    assert {inode, metrics_inode} <= listening_inodes(new)
    assert node.pid_path.read_text() == f"{new}\n"  # the old one left the new one's pid file
    # The Client's Tunnel connection moved to the new process, which serves it.
    members = node.status()["tunnels"][0]["members"]
    assert len(members) == 1, members
    node.visit()
    assert node.client.count("tunnel-connection-established") >= 2
    assert "Traceback" not in node.server.log() + node.client.log()


def test_a_failed_handover_keeps_the_old_process_serving_and_a_later_one_works(
        deployment, backend, successors):
    node = Node(deployment, backend)
    old = node.server.pid
    # A config that does not load: the new process exits 2 with its error line.
    node.config.write_text(node.text + "\nbroken = [\n")
    match = node.hand_over()
    assert match.group(0) == "handover-failed", node.server.log()
    failed = node.server.wait_for(r"handover-failed .*")
    assert "exited with status 2 before it was ready" in failed.group(0)
    assert f"error: {node.config}:" in node.server.log()  # the new process's own line
    assert node.pid() == old and node.server.popen.poll() is None
    node.visit()
    # A certificate it cannot load: the new process cannot become ready.
    node.config.write_text(node.text)
    cert_dir = deployment.cert_dir
    moved = cert_dir.with_name("server-cert.away")
    cert_dir.rename(moved)
    mark = len(node.server.lines)
    assert node.hand_over().group(0) == "handover-failed"
    assert node.server.count("handover-failed") == 2, node.server.log()[mark:]
    assert node.pid() == old and node.server.popen.poll() is None
    node.visit()
    # Fixed: the next USR2 hands over.
    moved.rename(cert_dir)
    assert node.hand_over().group(0) == "handover-complete", node.server.log()
    successors.append(node.pid())
    assert node.pid() != old
    assert node.server.popen.wait(timeout=20) == 0
    node.client.wait_count("tunnel-connection-established", 2)
    node.visit()


def test_usr2_during_a_handover_or_a_drain_is_ignored(deployment, backend, successors):
    """Also by a Client, which has no listeners to hand over."""
    node = Node(deployment, backend)
    node.client.signal(signal.SIGUSR2)
    node.client.wait_for(r"handover-unsupported signal=SIGUSR2")
    assert node.client.popen.poll() is None
    pid = node.server.pid
    os.kill(pid, signal.SIGUSR2)
    node.server.wait_for("handover-started")
    os.kill(pid, signal.SIGUSR2)  # while the new process starts
    node.server.wait_for(r"handover-ignored .*reason=\"?a hand-over is running")
    node.server.wait_for("handover-complete")
    successors.append(node.pid())
    os.kill(pid, signal.SIGUSR2)  # the old one drains now
    assert node.server.popen.wait(timeout=20) == 0
    assert node.server.count("handover-started") == 1, node.server.log()


def test_the_new_process_tells_systemd_its_pid_and_the_old_one_stays_silent(
        deployment, backend, successors, tmp_path):
    with NotifySocket(tmp_path) as notify:
        node = Node(deployment, backend, env=dict(deployment.env, NOTIFY_SOCKET=str(notify.path)))
        assert notify.next_message() == {"READY": "1", "STATUS": "serving"}
        node.hand_over("handover-complete")
        new = node.pid()
        successors.append(new)
        assert notify.next_message() == {"READY": "1", "MAINPID": str(new), "STATUS": "serving"}
        assert node.server.popen.wait(timeout=20) == 0
        notify.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no STOPPING=1 from the old one: systemd would stop
            notify.recv()


@needs_activate
def test_a_socket_activated_server_hands_the_socket_systemd_passed_over(
        deployment, echo_backend, successors):
    """systemd-socket-activate holds the port as a socket unit does; a hand-over passes its
    socket on, and the new process serves it (systemctl restart keeps it, systemd holds it)."""
    identity = deployment.identity("client-a")
    pid_path = deployment.dir / "server.pid"
    path = deployment.server_config([("echo", [ECHO], [identity])],
                                     extra=f'pid-file = "{pid_path}"')
    port = deployment.public_port = free_port()
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    server = socket_activated_server(deployment, path, port)
    inode = listening_socket_inode(port)
    client = deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    server.wait_for(r"server-ready .*inherited=public ")
    os.kill(server.pid, signal.SIGUSR2)
    server.wait_for("handover-complete")
    new = int(pid_path.read_text())
    successors.append(new)
    assert server.popen.wait(timeout=20) == 0
    assert server.count(r"server-ready .*inherited=public ") == 2
    assert listening_socket_inode(port) == inode and inode in listening_inodes(new)
    client.wait_count("tunnel-connection-established", 2)
    with echo_visitor(port) as visitor:
        assert round_trip(visitor, b"served by the new process", timeout=5) < 5


def test_a_detached_server_hands_over_to_a_process_that_stays_detached(bg):  # noqa: F811
    """`-d`: the new process runs the same arguments but does not fork again; it takes the
    default pid file over and logs to the same file, and `server stop` stops it."""
    server_toml = bg.server_config()
    old = bg.start("server", server_toml)
    pid_file, log_file = bg.default_pid_file("server"), bg.default_log_file("server")
    os.kill(old, signal.SIGUSR2)
    text = wait_for_line(log_file, r"handover-complete new-pid=\d+")
    new = int(re.search(r"handover-complete new-pid=(\d+)", text).group(1))
    bg.pids.append(new)
    assert daemon.wait_gone(old, "server", 20) and pid_file.read_text() == f"{new}\n"
    assert running(new, "server")
    assert os.readlink(f"/proc/{new}/fd/2") == str(log_file)
    fields = open(f"/proc/{new}/stat").read().rsplit(")", 1)[1].split()
    assert int(fields[3]) == old and int(fields[4]) == 0  # the old one's session, no terminal
    assert wait_for_line(log_file, "shutdown-complete").count("server-ready") == 2
    stop = bg.cli("server", "stop", "-c", server_toml)
    assert (stop.returncode, stop.stderr) == (0, "")
    assert not running(new, "server") and not pid_file.exists()
