"""`workers = N` routing with two Server worker processes sharing one public socket.

`ServerWorkers` stands in for the supervisor (runewarp/supervisor.py, built beside
this): it binds the public socket once and starts N ordinary `runewarp server`
processes that claim it through the hand-over variables, each with
RUNEWARP_WORKER="INDEX/N" and a metrics listener of its own, as the supervisor's
workers are started.  The workers are this test's children, so their pass sockets are
"\\0runewarp-<this pid>-<index>" and a sibling process counts as a worker.
"""

import array
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from runewarp import harness, systemd
from runewarp.proto import workerpass

from ..conftest import Proc, free_port
from .helpers import Backend
from .test_metrics import eventually, http, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
A = "a.example.com"
B = "b.example.com"
PASSES = "runewarp_worker_passes_total"
OUTCOMES = "runewarp_visitor_connections_total"


class ServerWorkers:
    """N Server processes on one public socket, each its own metrics port."""

    def __init__(self, deployment, identity, count):
        self.deployment = deployment
        self.count = count
        self.public = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.public.set_inheritable(True)
        self.port = deployment.public_port = self.public.getsockname()[1]
        self.metrics = [free_port() for _ in range(count)]
        self.procs = [None] * count
        text = deployment.server_config([("apps", [A, B], [identity])]).read_text()
        self.text = text.replace("127.0.0.1:0", f"127.0.0.1:{self.port}")

    def start(self, index):
        path = self.deployment.dir / f"server-{index}.toml"
        path.write_text(self.text + f'\n[server.metrics]\nbind-address = '
                                    f'"127.0.0.1:{self.metrics[index]}"\n')
        env = {**self.deployment.env, "RUNEWARP_WORKER": f"{index}/{self.count}",
               **systemd.handover_environ([(self.public, "public", False)])}
        proc = Proc(["server", "-c", path], env=env, pass_fds=(self.public.fileno(),))
        self.deployment.processes.append(proc)
        proc.wait_for(harness.SERVER_READY.format(r"127\.0\.0\.1"))
        self.procs[index] = proc
        return proc

    def members(self, index):
        status = json.loads(http(self.metrics[index], "/status")[1])
        return sum(len(t["members"]) for t in status["tunnels"])

    def counter(self, index, name, **labels):
        return value(self.metrics[index], name, **labels) or 0

    def close(self):
        self.public.close()


@pytest.fixture
def backends(tmp_path):
    a, b = Backend(tmp_path, "back-a", [A]), Backend(tmp_path, "back-b", [B])
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def workers(deployment):
    made = []

    def make(identity, count=2):
        made.append(ServerWorkers(deployment, identity, count))
        return made[-1]

    yield make
    for w in made:
        w.close()


def start_client(deployment, backends):
    a, b = backends
    return deployment.start_client("client-a", [([A], a.address), ([B], b.address)])


def visit_all(port, backends, rounds):
    """`rounds` Visitors per hostname, in flight together; each body names its backend."""
    procs = [(hostname, subprocess.Popen(
        ["curl", "-sS", "--max-time", "30", "--cacert", str(backend.ca), "--resolve",
         f"{hostname}:{port}:127.0.0.1", f"https://{hostname}:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for _ in range(rounds) for hostname, backend in zip((A, B), backends, strict=True)]
    return procs


def check_served(procs):
    for hostname, proc in procs:
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        assert out == f"backend=back-{hostname[0]}\n".encode(), (hostname, out)


def test_the_client_covers_every_worker_and_each_serves_its_visitors(deployment, backends,
                                                                    workers):
    identity = deployment.identity("client-a")
    pool = workers(identity)
    pool.start(0)
    pool.start(1)
    client = start_client(deployment, backends)
    client.wait_for("server-workers-changed .*server-workers=2")
    # One Tunnel connection at each worker: the Client learnt workers=2 from the welcome.
    assert eventually(lambda: [pool.members(i) for i in range(2)] == [1, 1]), \
        [pool.members(i) for i in range(2)]
    check_served(visit_all(pool.port, backends, 10))
    routed = [pool.counter(i, OUTCOMES, outcome="routed") for i in range(2)]
    assert sum(routed) == 20, routed
    # Each worker had a member: nothing was passed.
    assert [pool.counter(i, PASSES, event="sent") for i in range(2)] == [0, 0]


def test_a_worker_without_a_member_passes_its_visitors_to_one_with(deployment, backends,
                                                                  workers):
    identity = deployment.identity("client-a")
    pool = workers(identity)
    pool.start(0)
    # Only worker 0 accepts while the Client dials: its second connection lands on worker 0
    # each time, and the Client keeps it after its tries (coverage is best effort).
    client = start_client(deployment, backends)
    client.wait_for("tunnel-connection-worker-coverage-incomplete")
    pool.start(1)
    assert eventually(lambda: [pool.members(i) for i in range(2)] == [2, 0])
    # While worker 0 is stopped only worker 1 accepts: each Visitor is passed to worker 0,
    # which serves it once it runs again.
    pool.procs[0].signal(signal.SIGSTOP)
    try:
        procs = visit_all(pool.port, backends, 3)
        assert eventually(lambda: pool.counter(1, PASSES, event="sent") == 6), \
            pool.counter(1, PASSES, event="sent")
    finally:
        pool.procs[0].signal(signal.SIGCONT)
    check_served(procs)
    assert pool.counter(0, PASSES, event="received") == 6
    assert pool.counter(0, OUTCOMES, outcome="routed") == 6
    assert pool.counter(1, OUTCOMES, outcome="routed") == 0
    for i in range(2):
        for refused in ("no-tunnel-connection", "no-serving-member"):
            assert pool.counter(i, OUTCOMES, outcome=refused) == 0


SIBLING = r"""
import array, socket, sys
address = "\0" + sys.argv[1]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
    # A garbage datagram and a well-formed pass of a Unix socket: each carries a socketpair
    # end; the worker must close it (this side then reads end of file).
    ends = []
    for data in (b"garbage", bytes.fromhex(sys.argv[2])):
        mine, theirs = socket.socketpair()
        sender.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", [theirs.fileno()]))], 0, address)
        theirs.close()
        ends.append(mine)
    for mine in ends:
        mine.settimeout(20)
        assert mine.recv(1) == b"", "the passed descriptor was kept"
print("closed")
"""


def test_a_bogus_datagram_to_a_worker_socket_is_dropped(deployment, backends, workers):
    identity = deployment.identity("client-a")
    pool = workers(identity)
    pool.start(0)
    pool.start(1)
    start_client(deployment, backends)
    assert eventually(lambda: [pool.members(i) for i in range(2)] == [1, 1])
    address = f"\0runewarp-{os.getpid()}-0"
    passed = workerpass.encode(workerpass.Pass(("127.0.0.1", 1), b"\x16\x03\x01", 1.0, 1))
    # From a sibling of the workers (as another worker would be): both dropped, fds closed.
    sibling = subprocess.run([sys.executable, "-c", SIBLING, address[1:], passed.hex()],
                             capture_output=True, text=True, timeout=30)
    assert sibling.stdout == "closed\n", sibling.stderr
    # From a process that is not a worker of this "supervisor" (this test): dropped too.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        visitor = socket.create_connection(("127.0.0.1", pool.port))
        try:
            sender.sendmsg([passed], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", [visitor.fileno()]))], 0, address)
        finally:
            visitor.close()
    assert eventually(lambda: pool.counter(0, PASSES, event="dropped") == 3)
    assert pool.counter(0, PASSES, event="received") == 0
    pool.procs[0].wait_for("worker-pass-dropped .*not a worker of this supervisor")
    # Nothing else changed: both workers still serve.
    check_served(visit_all(pool.port, backends, 4))
