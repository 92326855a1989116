"""runewarp/harness.py's helpers for a process that is not our child (a hand-over's
successor): found through its pid-file, stopped by PID, and listening ports read from
/proc/PID/net (so a process in another network namespace is read in its own)."""

import socket
import subprocess
import sys
import time
from signal import SIGTERM

import pytest

from runewarp import harness

# The parent writes a successor's pid to the pid-file and exits, as a SIGUSR2 hand-over does.
SUCCESSOR = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]], start_new_session=True)
time.sleep(0.3)
open(sys.argv[1], "w").write(f"{child.pid}\\n")
"""
LISTENER = """
import signal, socket, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_successor_is_found_through_the_pid_file_and_stopped_by_pid(tmp_path):
    pid_file = tmp_path / "server.pid"
    parent = subprocess.Popen([sys.executable, "-c", SUCCESSOR, pid_file, "import time; time.sleep(60)"])
    pid_file.write_text(f"{parent.pid}\n")
    try:
        successor = harness.wait_pid_file(pid_file, other_than=parent.pid, timeout=10)
        assert successor != parent.pid and harness.pid_alive(successor)
        harness.stop_pid(successor, timeout=5)
        assert not harness.pid_alive(successor)
    finally:
        parent.wait(10)
    with pytest.raises(TimeoutError, match="still names"):
        harness.wait_pid_file(pid_file, other_than=successor, timeout=0.3)


@pytest.mark.timeout(30)
def test_a_process_that_ignores_sigterm_is_killed_and_reported():
    proc = harness.Process([sys.executable, "-c", LISTENER, "stubborn"], stdout=subprocess.PIPE)
    try:
        port = int(proc.popen.stdout.readline())
        harness.wait_listening(proc, [port])
        with pytest.raises(TimeoutError, match=f"pid {proc.pid} still running"):
            harness.stop_pid(proc.pid, SIGTERM, timeout=0.5)
        assert proc.popen.wait(5) == -9
    finally:
        proc.kill()


def test_wait_listening_names_the_ports_that_are_missing():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        unused = sock.getsockname()[1]  # bound, never listening
        proc = harness.Process([sys.executable, "-c", LISTENER, "plain"], stdout=subprocess.PIPE)
        try:
            port = int(proc.popen.stdout.readline())
            harness.wait_listening(proc, [port])
            started = time.monotonic()
            missing = ", ".join(map(str, sorted([port, unused])))
            with pytest.raises(harness.NoMatch, match=rf"not listening on \[{missing}\]"):
                harness.wait_listening(proc, [port, unused], timeout=0.5)
            assert time.monotonic() - started < 3
        finally:
            proc.kill()


@pytest.mark.timeout(30)
def test_an_exited_child_nobody_waited_for_counts_as_stopped():
    """A zombie (exited, not yet reaped by its parent) is gone for stop_pid."""
    proc = harness.Process([sys.executable, "-c", LISTENER, "plain"], stdout=subprocess.PIPE)
    try:
        proc.popen.stdout.readline()
        harness.stop_pid(proc.pid, SIGTERM, timeout=5)
        assert not harness.pid_alive(proc.pid)
        assert proc.popen.wait(5) == -SIGTERM
    finally:
        proc.kill()
