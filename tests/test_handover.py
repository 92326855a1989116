"""runewarp/handover.py with real child processes: the sockets and the readiness pipe a
successor gets, and each way a hand-over fails (the old process keeps serving)."""

import os
import socket
import sys
import time

import pytest

from runewarp import handover

pytestmark = pytest.mark.timeout(60)

# A successor in miniature: takes the passed sockets by the one path (systemd.listen_fds),
# says which it got, then reports ready and lingers as a serving process would.
SUCCESSOR = """
import os, sys, time
from runewarp import handover, systemd
successor = handover.Successor.from_environ()
origin, passed = systemd.listen_fds()
print(origin, [(name, sock.getsockname()[1]) for sock, name in passed], successor.parent,
      sorted(k for k in os.environ if k.startswith("RUNEWARP_")), flush=True)
successor.ready()
time.sleep(30)
"""


@pytest.fixture
def listening():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def python(code):
    return [sys.executable, "-c", code]


def gone(pid, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_ready_successor_got_the_sockets_and_no_variable_is_left_for_its_children(
        listening, tmp_path, capfd):
    pid = handover.start_successor([(listening, "public")], argv=python(SUCCESSOR))
    try:
        out = capfd.readouterr().out
        port = listening.getsockname()[1]
        assert out.strip() == f"handover [('public', {port})] {os.getpid()} []"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_successor_that_exits_before_ready_is_reported_with_its_status(listening):
    with pytest.raises(handover.HandoverFailed,
                       match=r"the new process \(pid \d+\) exited with status 3 before it was ready"):
        handover.start_successor([(listening, "public")], argv=python("raise SystemExit(3)"))


def test_a_successor_killed_by_a_signal_is_named_by_the_signal(listening):
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(handover.HandoverFailed, match=r"was ended by SIGSEGV before it was ready"):
        handover.start_successor([(listening, "public")], argv=python(code))


def test_a_successor_not_ready_in_time_is_killed(listening, tmp_path):
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(handover.HandoverFailed,
                       match=r"was not ready within 1s; it was killed"):
        handover.start_successor([(listening, "public")], argv=python(code), timeout=1)
    assert time.monotonic() - started < 10
    assert gone(int(pid_file.read_text()))


def test_a_command_that_cannot_start_is_a_failed_handover(listening, tmp_path):
    with pytest.raises(handover.HandoverFailed, match=r"cannot start .*no-such-python: no such file"):
        handover.start_successor([(listening, "public")], argv=[str(tmp_path / "no-such-python")])


def test_the_handover_variable_is_honoured_only_from_the_parent_it_names():
    r, w = os.pipe()
    try:
        env = {handover.HANDOVER: f"{os.getppid()}:{w}"}
        successor = handover.Successor.from_environ(env)
        assert env == {} and successor.parent == os.getppid()
        assert not os.get_inheritable(w)
        successor.ready()  # READY, then the channel is closed
        assert os.read(r, 10) == b"\0"
    finally:
        os.close(r)
    for value in (f"{os.getpid()}:9", "", "x:9", f"{os.getppid()}:"):
        env = {handover.HANDOVER: value}
        assert handover.Successor.from_environ(env) is None and env == {}


def test_the_command_is_this_interpreter_with_the_original_arguments(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "-m", "runewarp", "server",
                                            "-d", "-c", "/etc/runewarp/server.toml"])
    assert handover.command() == [sys.executable, "-X", "dev", "-m", "runewarp", "server", "-d",
                                  "-c", "/etc/runewarp/server.toml"]
