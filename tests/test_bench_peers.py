"""The bench's own peers, before they judge anything: the `ssh -R` tunnel it starts
(bench/sshpeer.py) carries a Visitor, listens on 127.0.0.1 only and is gone once stopped
by PID; the workers phase counts Visitors per `worker` label (bench/workersbench.py); the
table's "beats ssh -R" reads each row the right way round (bench/table.py)."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runewarp import harness

from .conftest import ROOT, free_port

sys.path.append(str(ROOT / "bench"))
import sshpeer  # noqa: E402 - bench/ is a folder of scripts, not a package
import table  # noqa: E402
import workersbench  # noqa: E402


def loopback_listeners(pids):
    """(address, port) of every TCP listener that one of `pids` holds, from `ss`."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            address, _, port = line.split()[3].rpartition(":")
            found.append((address, int(port)))
    return found


@pytest.mark.timeout(60)
@pytest.mark.skipif(sshpeer.unavailable() is not None, reason="sshd, ssh or ssh-keygen missing")
def test_ssh_reverse_tunnel_carries_a_visitor_on_loopback_only(tmp_path):
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(20)

    def echo_once():
        conn, _ = backend.accept()
        with conn:
            conn.sendall(conn.recv(64))

    procs = []

    def spawn(cmd, name):
        procs.append(harness.Process(cmd, name=name, new_session=True))
        return procs[-1]

    sshd_port, forward_port = free_port(), free_port()
    try:
        target = sshpeer.start(tmp_path / "ssh", backend.getsockname()[1], sshd_port, forward_port,
                               spawn)
        threading.Thread(target=echo_once, daemon=True).start()
        with socket.create_connection(("127.0.0.1", target["port"]), timeout=20) as visitor:
            visitor.sendall(b"through sshd and ssh")
            assert visitor.recv(64) == b"through sshd and ssh"
        listeners = loopback_listeners(target["pids"])
        assert {("127.0.0.1", sshd_port), ("127.0.0.1", forward_port)} <= set(listeners)
        assert all(address == "127.0.0.1" for address, _port in listeners), listeners
    finally:
        harness.stop_all(procs)
        backend.close()
    assert [p.popen.returncode for p in procs] == [0, 0], [p.log() for p in procs]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid, _ in target["session_pids"]):
        assert time.monotonic() < deadline, "an sshd session process outlived sshd and ssh"
        time.sleep(0.05)


def test_visitors_are_counted_per_worker_label():
    page = """\
# HELP runewarp_visitor_connections_total Visitor connections by outcome.
# TYPE runewarp_visitor_connections_total counter
runewarp_visitor_connections_total{outcome="routed",worker="0"} 12.0
runewarp_visitor_connections_total{outcome="refused",worker="0"} 1.0
runewarp_visitor_connections_total{outcome="routed",worker="1"} 7.0
runewarp_visitor_connections_created{outcome="routed",worker="1"} 1.7e9
runewarp_routed_streams_total{worker="1"} 99.0
"""
    assert workersbench.per_worker(page) == {"0": 13.0, "1": 7.0}
    assert workersbench.per_worker(page.replace(',worker="1"', "")) == {"0": 13.0, "-": 7.0}


@pytest.mark.parametrize(("better", "runewarp", "ssh", "beats"), [
    ("higher", [300, 320], [250], True), ("higher", [200], [250], False),
    ("lower", [1.2], [2.5], True), ("lower", [3.0, 3.1, 2.9], [2.5], False),
    (None, [1.0], [2.0], None), ("lower", [1.0], "-", None),
])
def test_beats_ssh_reads_each_row_the_right_way_round(better, runewarp, ssh, beats):
    row = table.row("metric", {"direct": [1.0], "runewarp": runewarp, sshpeer.NAME: ssh}, "{:.1f}",
                    better)
    assert table.beats(row) is beats
