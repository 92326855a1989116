"""`workers = N` (runewarp/supervisor.py): a supervisor and its workers as real processes,
real TLS, Visitors as stdlib TLS clients and curl.  Every worker's lines (`worker=i`)
reach the supervisor's stderr, so both arrive in the one `Proc` the test started.

Until the routing of docs/architecture.md ("Every Client covers every worker") lands,
a worker without the Client's Tunnel connection holds a Visitor in member-wait: the
Clients here keep 4 Tunnel connections each and the tests wait until /status shows
members on every worker before counting Visitors."""

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runewarp import daemon

from ..conftest import Proc, free_port, run_cli
from .helpers import body_of, curl, get, reload_by_signal, tls_visit
from .peers import APP
from .test_handover import Load, listening_socket_inode, successors  # noqa: F401 - a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def children(pid):
    """The pids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def wait_count(proc, event, count, start=0, timeout=20):
    """Until `event` is in `count` of `proc`'s lines from `start` (one per worker)."""
    deadline = time.monotonic() + timeout
    while sum(event in line for line in proc.lines[start:]) < count:
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.1)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


class Pool:
    """A Server with `workers = 2` on fixed ports, and a Client with `workers = 2`, each
    keeping 4 Tunnel connections."""

    def __init__(self, deployment, backend, extra="", any_port=False):
        self.deployment = deployment
        self.backend = backend
        self.public_port, self.metrics_port = free_port(), free_port()
        self.pid_path = deployment.dir / "server.pid"
        identity = deployment.identity("client-a")
        self.config = deployment.server_config([("apps", [APP], [identity])], extra=(
            f'workers = 2\npid-file = "{self.pid_path}"\n{extra}\n[server.metrics]\n'
            f'bind-address = "127.0.0.1:{self.metrics_port}"'))
        self.any_port = any_port  # keep the file's `127.0.0.1:0`: the kernel picks the port
        self.text = self.config.read_text()
        if not any_port:
            self.text = self.text.replace('"127.0.0.1:0"', f'"127.0.0.1:{self.public_port}"')
        self.config.write_text(self.text)
        deployment.public_port = self.public_port

    def start(self):
        self.server = Proc(["server", "-c", self.config], env=self.deployment.env)
        self.deployment.processes.append(self.server)
        self.server.wait_for("supervisor-ready")
        if self.any_port:
            ports = {line.split("public-bind-address=127.0.0.1:")[1].split()[0]
                     for line in self.server.lines if "server-ready" in line}
            assert len(ports) == 1, ports  # every worker serves the port the supervisor got
            self.public_port = self.deployment.public_port = int(ports.pop())
        return self.start_client()

    def start_client(self):
        env = dict(self.deployment.env, RUNEWARP_RECONNECT_WINDOWS="0.1,0.2")
        path = self.deployment.client_config("client-a", [([APP], self.backend.address)],
                                             settings={"connections-per-server": 4,
                                                       "workers": 2})
        self.client = Proc(["client", "-c", path], env=env)
        self.deployment.processes.append(self.client)
        self.client.wait_for("supervisor-ready")
        self.wait_covered()
        return self

    def status(self):
        url = f"http://127.0.0.1:{self.metrics_port}/status"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.load(reply)

    def metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    def wait_covered(self, timeout=30):
        """Until the Client holds a Tunnel connection on both Server workers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                tunnels = self.status()["tunnels"]
            except OSError:
                tunnels = []
            covered = {t["worker"] for t in tunnels if t["members"]}
            if covered == {0, 1}:
                return
            assert time.monotonic() < deadline, f"members only on workers {covered}"
            time.sleep(0.2)

    def visit(self):
        _, response = tls_visit(self.public_port, APP, self.backend.ca, get("/", APP), timeout=10)
        assert body_of(response) == b"backend=app\n", response
        return response

    def workers(self, proc):
        pids = children(proc.pid)
        assert len(pids) == 2, (pids, proc.log())
        return pids


def test_two_workers_serve_visitors_and_term_stops_all(deployment, backend):
    pool = Pool(deployment, backend).start()
    server_workers = pool.workers(pool.server)
    client_workers = pool.workers(pool.client)
    assert pool.pid_path.read_text() == f"{pool.server.pid}\n"  # the supervisor's pid
    for _ in range(20):
        result = curl(pool.public_port, APP, backend.ca)
        assert result.returncode == 0 and result.stdout == b"backend=app\n", result.stderr
    status = pool.status()
    assert status["workers"] == 2 and status["ready"] is True
    served = [sum(m["active_streams"] >= 0 for m in t["members"]) for t in status["tunnels"]]
    assert all(served), status
    log = pool.server.log()
    assert "worker=0" in log and "worker=1" in log
    instances = {line.split("instance=")[1].split()[0] for line in pool.client.lines
                 if "client-ready" in line}
    assert len(instances) == 2, pool.client.log()  # independent Clients
    for proc, workers in ((pool.server, server_workers), (pool.client, client_workers)):
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=30) == 0, proc.log()
        assert not any(alive(pid) for pid in workers)
        assert "Traceback" not in proc.log()
    assert not pool.pid_path.exists()


def test_both_workers_accept_visitors_on_the_one_port_of_a_port_0_file(deployment, backend):
    """`public-bind-address = "127.0.0.1:0"`: the supervisor's port is the workers' port
    (a worker that bound its own would never see a Visitor), and the kernel hands
    Visitors to both workers."""
    pool = Pool(deployment, backend, any_port=True).start()
    for _ in range(40):
        pool.visit()
    families = text_string_to_metric_families(pool.metrics())
    routed = {s.labels["worker"]: s.value for f in families for s in f.samples
              if s.name == "runewarp_visitor_connections_total"
              and s.labels.get("outcome") == "routed"}
    assert sum(routed.values()) == 40 and all(routed.get(w) for w in ("0", "1")), routed


def test_pass_sockets_live_in_the_supervisors_private_folder(deployment, backend):
    """Another user must not bind a worker's pass socket first and receive Visitors'
    sockets: they are paths in the supervisor's 0700 folder, never abstract names."""
    pool = Pool(deployment, backend).start()
    unix = Path("/proc/net/unix").read_text().split()
    assert not [name for name in unix if name.startswith(f"@runewarp-{pool.server.pid}-")]
    worker = pool.workers(pool.server)[0]  # other tests' supervisors may run beside this one
    environ = dict(v.split("=", 1) for v in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in v)
    passes = [Path(p) for p in environ["RUNEWARP_WORKER_SOCKETS"].split(",")]
    assert [p.name for p in passes] == ["pass-0.sock", "pass-1.sock"], passes
    assert all(str(p) in unix for p in passes), passes  # bound, as paths
    assert all(re.search(r"/runewarp-server-\w+/pass-\d\.sock$", str(p)) for p in passes)
    assert passes[0].parent.stat().st_mode & 0o777 == 0o700


def test_metrics_carry_a_worker_label_and_parse(deployment, backend):
    pool = Pool(deployment, backend).start()
    for _ in range(6):
        pool.visit()
    text = pool.metrics()
    families = list(text_string_to_metric_families(text))  # Prometheus-parsable
    workers = {s.labels.get("worker") for f in families for s in f.samples}
    assert workers == {"0", "1"}, workers
    routed = [s for f in families for s in f.samples if s.name == "runewarp_tunnel_connections" and s.value >= 1]
    assert {s.labels["worker"] for s in routed} == {"0", "1"}, routed
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.metrics_port}/readyz", timeout=10) as r:
        assert r.status == 200
    status = run_cli("server", "status", "-c", pool.config, env=deployment.env)
    assert "2 workers" in status.stdout and "apps (worker 1)" in status.stdout, status.stdout


def test_hup_reloads_every_worker_and_a_bad_file_keeps_all_serving(deployment, backend):
    pool = Pool(deployment, backend).start()
    mark = len(pool.server.lines)
    reload_by_signal(pool.server, "server-reloaded")
    wait_count(pool.server, "server-reloaded", 2, mark)
    assert {"worker=0", "worker=1"} <= {word for line in pool.server.lines[mark:]
                                        if "server-reloaded" in line for word in line.split()}
    mark = len(pool.server.lines)
    pool.config.write_text(pool.text.replace("[server]", "[server]\nbogus = 1"))
    os.kill(pool.server.pid, signal.SIGHUP)
    wait_count(pool.server, "reload-failed", 2, mark)
    for _ in range(10):
        pool.visit()
    assert len(pool.workers(pool.server)) == 2


def test_a_reload_that_moves_the_public_listener_waits_for_a_restart(deployment, backend):
    """The workers share the supervisor's sockets: one worker binding the new address alone
    would split the Server between two configs, so every worker keeps the running address
    and says a restart is needed."""
    pool = Pool(deployment, backend).start()
    moved = free_port()
    mark = len(pool.server.lines)
    pool.config.write_text(pool.text.replace(f'"127.0.0.1:{pool.public_port}"',
                                             f'"127.0.0.1:{moved}"'))
    os.kill(pool.server.pid, signal.SIGHUP)
    wait_count(pool.server, "server-reloaded", 2, mark)
    assert sum("reload-needs-restart" in line and "key=public-bind-addresses" in line
               for line in pool.server.lines[mark:]) == 2, pool.server.log()
    assert "reload-failed" not in "".join(pool.server.lines[mark:])
    for _ in range(6):
        pool.visit()  # the running port


def test_a_killed_worker_is_restarted_and_visitors_keep_being_served(deployment, backend):
    pool = Pool(deployment, backend).start()
    before = pool.workers(pool.server)
    victim = before[0]
    load = Load(pool, threads=2)
    try:
        time.sleep(0.5)
        mark = len(pool.server.lines)
        os.kill(victim, signal.SIGKILL)
        pool.server.wait_for("worker-exited", start=mark, timeout=10)
        served = load.served
        time.sleep(0.5)  # the new worker's interpreter is still starting
    finally:
        load.stop()
    # The killed worker's Visitors in flight were cut (at most one per thread); meanwhile
    # the other worker took every new Visitor from the shared socket.
    assert len(load.failures) <= 2, load.failures
    assert load.served > served
    pool.server.wait_for("worker-started", start=mark, timeout=20)
    assert victim not in pool.workers(pool.server)
    assert "was ended by SIGKILL" in pool.server.log()
    pool.server.wait_for(r"worker-exited .*restart-in=1\.0s", start=mark, timeout=1)
    # One that keeps dying soon after its start waits longer each time: 2 s now.
    (again,) = set(pool.workers(pool.server)) - set(before)
    mark = len(pool.server.lines)
    os.kill(again, signal.SIGKILL)
    pool.server.wait_for(r"worker-exited .*restart-in=2\.0s", start=mark, timeout=10)
    pool.server.wait_for("worker-started", start=mark, timeout=20)
    # The Client's connections to the killed worker came back on the other one; a Client
    # started again covers both (engineer route's coverage will do that by itself).
    pool.client.popen.send_signal(signal.SIGTERM)
    assert pool.client.popen.wait(timeout=30) == 0
    pool.start_client()
    for _ in range(10):
        pool.visit()


def test_usr2_hands_the_supervisor_over_without_losing_a_visitor(deployment, backend,
                                                                 successors):  # noqa: F811
    pool = Pool(deployment, backend).start()
    old, old_workers = pool.server.pid, pool.workers(pool.server)
    inode = listening_socket_inode(pool.public_port)
    load = Load(pool)
    try:
        time.sleep(1)
        before = load.served
        mark = len(pool.server.lines)
        os.kill(old, signal.SIGUSR2)
        match = pool.server.wait_for("handover-(complete|failed)", start=mark, timeout=60)
        assert match.group(0) == "handover-complete", pool.server.log()
        new = int(pool.pid_path.read_text())
        successors.append(new)
        assert new != old
        assert pool.server.popen.wait(timeout=30) == 0  # the old one stopped its workers
        assert not any(alive(pid) for pid in old_workers)
        pool.wait_covered()
        time.sleep(1)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.served > before
    assert listening_socket_inode(pool.public_port) == inode
    assert len(children(new)) == 2


def test_detached_supervisor_writes_its_own_pid(deployment, backend):
    pool = Pool(deployment, backend)
    log_path = deployment.dir / "server.log"
    pool.config.write_text(pool.text.replace("workers = 2", f'workers = 2\nlog-file = "{log_path}"'))
    result = run_cli("server", "-c", pool.config, "-d", env=deployment.env, timeout=90)
    pid = int(result.stdout)
    try:
        assert pool.pid_path.read_text() == f"{pid}\n"
        assert len(children(pid)) == 2
        assert "supervisor-ready" in log_path.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
        assert daemon.wait_gone(pid, "server", 20)


@pytest.mark.parametrize("value, words", [("0", "must be at least 1; got 0"),
                                          ('"many"', 'expected an integer 1-64 or "auto"'),
                                          ("65", "must be at most 64")])
def test_a_bad_workers_value_is_one_line_and_exit_2(deployment, value, words):
    path = deployment.server_config([("apps", [APP], [deployment.identity("c")])],
                                    extra=f"workers = {value}")
    result = run_cli("server", "-c", path, env=deployment.env, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "server.workers" in result.stderr, result.stderr
    assert words in result.stderr and str(path) in result.stderr


CLIENT_ACME = """[client]
server-address = "tunnel.example.com"
workers = 2
[client.acme]
email = "ops@example.com"
[[client.services]]
public-hostnames = ["app.example.com"]
backend-address = "127.0.0.1:8080"
tls-mode = "terminate"
"""


@pytest.mark.parametrize("role, extra, words", [
    ("client", None, "[client.acme]: each worker would run certbot"),
    ("server", "public-quic = true", "public-quic = true"),
    ("server", '[server.api]\nbind-address = "127.0.0.1:9443"\nclient-ca-file = "server-cert/server-ca.crt"',
     "[server.api] bind-address"),
])
def test_what_must_run_once_refuses_several_workers(deployment, tmp_path, role, extra, words):
    if role == "client":
        path = tmp_path / "client.toml"
        path.write_text(CLIENT_ACME)
    else:
        path = deployment.server_config([("apps", [APP], [deployment.identity("c")])],
                                        extra=f"workers = 2\n{extra}")
    result = run_cli(role, "-c", path, env=deployment.env, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"{role}.workers" in result.stderr, result.stderr
    assert words in result.stderr


def wait_in_file(path, words, timeout=30):
    deadline = time.monotonic() + timeout
    while not (path.exists() and all(word in path.read_text() for word in words)):
        assert time.monotonic() < deadline, path.read_text() if path.exists() else "no file"
        time.sleep(0.2)


def test_usr1_reopens_the_log_file_in_the_supervisor_and_every_worker(deployment, backend):
    pool = Pool(deployment, backend)
    log_path, rotated = deployment.dir / "server.log", deployment.dir / "server.log.1"
    pool.config.write_text(pool.text.replace("workers = 2", f'workers = 2\nlog-file = "{log_path}"'))
    server = Proc(["server", "-c", pool.config], env=deployment.env)
    deployment.processes.append(server)
    wait_in_file(log_path, ["supervisor-ready"])
    os.rename(log_path, rotated)  # logrotate's move
    os.kill(server.pid, signal.SIGUSR1)
    time.sleep(0.5)
    os.kill(server.pid, signal.SIGHUP)  # lines from the supervisor and from each worker
    wait_in_file(log_path, ["reload-relayed", "server-reloaded worker=0",
                            "server-reloaded worker=1"])
    assert "reload-relayed" not in rotated.read_text()
