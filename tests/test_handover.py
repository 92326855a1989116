"""runewarp/handover.py with real child processes: the sockets and the readiness pipe a
successor gets, and each way a hand-over fails (the old process keeps serving)."""

import os
import socket
import sys
import time

import pytest

from runewarp import handover
from runewarp.io.inherited import InheritedSockets
from runewarp.io.listener import Listener, bind_moved
from runewarp.proto.address import format_address
from runewarp.systemd import ActivationError

pytestmark = pytest.mark.timeout(60)

# A successor in miniature: takes the passed sockets by the one path (systemd.listen_fds),
# says which it got, then reports ready and lingers as a serving process would.
SUCCESSOR = """
import os, sys, time
from runewarp import handover, systemd
successor = handover.Successor.from_environ()
passed = systemd.listen_fds()
print([(name, sock.getsockname()[1], unit) for sock, name, unit in passed], successor.parent,
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
    metrics = socket.create_server(("127.0.0.1", 0))
    ports = listening.getsockname()[1], metrics.getsockname()[1]
    with metrics:
        pid = handover.start_successor([(listening, "public", True), (metrics, "metrics", False)],
                                       argv=python(SUCCESSOR))
    try:
        out = capfd.readouterr().out
        assert out.strip() == (f"[('public', {ports[0]}, True), ('metrics', {ports[1]}, False)] "
                               f"{os.getpid()} []")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_successor_that_exits_before_ready_is_reported_with_its_status(listening):
    with pytest.raises(handover.HandoverFailed,
                       match=r"the new process \(pid \d+\) exited with status 3 before it was ready"):
        handover.start_successor([(listening, "public", False)], argv=python("raise SystemExit(3)"))


def test_a_successor_killed_by_a_signal_is_named_by_the_signal(listening):
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(handover.HandoverFailed, match=r"was ended by SIGSEGV before it was ready"):
        handover.start_successor([(listening, "public", False)], argv=python(code))


def test_a_successor_not_ready_in_time_is_killed(listening, tmp_path):
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(handover.HandoverFailed,
                       match=r"was not ready within 1s; it was killed"):
        handover.start_successor([(listening, "public", False)], argv=python(code), timeout=1)
    assert time.monotonic() - started < 10
    assert gone(int(pid_file.read_text()))


def test_a_command_that_cannot_start_is_a_failed_handover(listening, tmp_path):
    with pytest.raises(handover.HandoverFailed, match=r"cannot start .*no-such-python: no such file"):
        handover.start_successor([(listening, "public", False)], argv=[str(tmp_path / "no-such-python")])


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


def test_a_handed_over_socket_the_config_left_is_closed_and_a_unit_socket_is_refused():
    """In the new process: the old one's own socket for an address the config no longer
    names is closed; a socket unit's (passed on by the old one) stops the start as it would
    at a start under systemd, so the hand-over fails and the old process keeps serving."""
    ours, units = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    kept = socket.create_server(("127.0.0.1", 0))
    with ours, units, kept:
        address = format_address(ours.getsockname())
        pool = InheritedSockets([(ours, "public-2", False), (kept, "public", False)])
        assert pool.claim(kept.getsockname()) is kept
        assert pool.refuse_unclaimed({"server.public-bind-address": kept.getsockname()}) == [address]
        assert ours.fileno() == -1 and pool.unclaimed == []
        pool = InheritedSockets([(units, "public", True)])
        with pytest.raises(ActivationError, match=r"inherited socket fd \d+ \(public\) on .* "
                                                  "matches no bind address"):
            pool.refuse_unclaimed({"server.public-bind-address": ("127.0.0.1", 1)})


def ignore(sock, address):
    sock.close()


def test_only_a_socket_unit_listener_refuses_to_move_on_reload():
    unit, ours = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    pool = InheritedSockets([(unit, "public", True), (ours, "tunnel", False)])
    listeners = [Listener("public", unit.getsockname(), ignore, 1, pool),
                 Listener("tunnel", ours.getsockname(), ignore, 1, pool)]
    try:
        assert [li.unit_owned for li in listeners] == [True, False]
        moved = bind_moved(listeners, {}, {"tunnel": ("127.0.0.1", 0)}, lambda name, address:
                           Listener(name, address, ignore, 1))
        moved["tunnel"].stop()
        with pytest.raises(ActivationError, match="is a socket systemd passed"):
            bind_moved(listeners, {}, {"public": ("127.0.0.1", 0)},
                       lambda name, address: Listener(name, address, ignore, 1))
    finally:
        for listener in listeners:
            listener.stop()
