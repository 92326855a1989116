"""The pure parts of running in the background (runewarp/daemon.py): pid file decisions from
(pid, cmdline) values, the pid file on disk, the parent's wait on a real forked child; the
pid-file and log-file keys and their defaults."""

import os
import subprocess
import sys
import time

import pytest

from runewarp import daemon
from runewarp.config import load_server_config
from runewarp.config.paths import default_log_file, default_pid_file
from runewarp.errors import ConfigError


@pytest.mark.parametrize("cmdline, role, live", [
    (None, "server", False),  # no such process
    (b"", "server", False),  # a zombie
    (b"/usr/bin/python3\0-m\0runewarp\0server\0-d\0-c\0s.toml\0", "server", True),
    (b"/usr/lib/runewarp/bin/python\0/usr/local/bin/runewarp\0server\0-d\0", "server", True),
    (b"runewarp\0client\0-d\0", "client", True),
    (b"/usr/bin/python3\0-m\0runewarp\0client\0-d\0", "server", False),  # the other role
    (b"runewarp\0server\0stop\0", "client", False),
    (b"sleep\x0060\0", "server", False),  # the pid now belongs to another program
    (b"vim\0notes\0about\0runewarp\0server\0", "server", False),  # runewarp only as an argument
    (b"/opt/runewarp-tools/bin/backup\0server\0", "server", False),
])
def test_a_pid_is_live_only_for_a_runewarp_process_of_the_role(cmdline, role, live):
    assert daemon.names_runewarp(cmdline, role) is live


@pytest.mark.parametrize("text, pid", [
    ("4242\n", 4242), ("  17 ", 17), ("", None), ("abc\n", None), ("-5\n", None),
    ("0\n", None), ("12 13\n", None), ("\u0661\u0662\n", None),
])
def test_pid_file_text(text, pid):
    assert daemon.parse_pid(text) == pid


def test_pid_file_is_written_atomically_0644_and_removed_only_by_its_writer(tmp_path):
    path = tmp_path / "run/runewarp/server.pid"
    pid_file = daemon.PidFile(path, "server")
    assert pid_file.read() is None and pid_file.live_pid() is None
    old = os.umask(0o077)
    try:
        pid_file.write()
    finally:
        os.umask(old)
    assert path.read_text() == f"{os.getpid()}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["server.pid"]
    assert pid_file.live_pid() is None  # this process is no Runewarp Server
    path.write_text("1\n")  # a newer start replaced it: not ours to remove
    pid_file.remove()
    assert path.exists()
    pid_file.write()
    pid_file.remove()
    assert not path.exists()


def runewarp_lookalike(folder, role):
    """A process whose command line reads `python …/runewarp ROLE`: a script named runewarp
    that sleeps.  Returned once /proc shows that command line."""
    script = folder / "runewarp"
    script.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script), role])
    deadline = time.monotonic() + 10
    while not daemon.names_runewarp(daemon.cmdline(proc.pid), role):
        assert time.monotonic() < deadline, daemon.cmdline(proc.pid)
        time.sleep(0.01)
    return proc


def test_live_pid_reads_the_process_table(tmp_path):
    path = tmp_path / "server.pid"
    fake = runewarp_lookalike(tmp_path, "server")
    try:
        path.write_text(f"{fake.pid}\n")
        assert daemon.PidFile(path, "server").live_pid() == fake.pid
        assert daemon.PidFile(path, "client").live_pid() is None
        assert not daemon.wait_gone(fake.pid, "server", 0.2)
        fake.kill()
        fake.wait()
        assert daemon.PidFile(path, "server").live_pid() is None
        assert daemon.wait_gone(fake.pid, "server", 0.2)
    finally:
        fake.kill()
        fake.wait()


def forked(child):
    """daemon.fork() with `child(channel)` run in the child, which then exits with its
    return value."""
    pid, channel = daemon.fork()
    if pid == 0:
        code = 70
        try:
            code = child(channel)
        finally:
            os._exit(code)
    return pid, channel


@pytest.mark.timeout(30)
def test_the_parent_gets_ready_or_the_childs_words_and_exit_status():
    def ready(channel):
        os.write(channel, b"a warning\n" + daemon.READY)
        time.sleep(0.5)  # still running when the parent returns
        return 0

    pid, channel = forked(ready)
    assert daemon.wait_ready(pid, channel, timeout=20) == ("a warning\n", 0)
    os.waitpid(pid, 0)

    def failed(channel):
        os.write(channel, b"error: server.toml: address already in use\n")
        return 3

    pid, channel = forked(failed)
    assert daemon.wait_ready(pid, channel, timeout=20) == (
        "error: server.toml: address already in use\n", 3)

    pid, channel = forked(lambda channel: -1 if os.kill(os.getpid(), 9) else 0)
    assert daemon.wait_ready(pid, channel, timeout=20) == ("", 1)  # a signal ended it


@pytest.mark.timeout(30)
def test_the_parent_stops_waiting_after_the_timeout():
    pid, channel = forked(lambda channel: time.sleep(10) or 0)
    try:
        started = time.monotonic()
        assert daemon.wait_ready(pid, channel, timeout=0.3) == ("", None)
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_default_pid_and_log_files():
    env = {"HOME": "/home/op", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_pid_file(env, "server") == daemon.Path("/run/user/1000/runewarp/server.pid")
    assert default_log_file(env, "server") == daemon.Path("/home/op/.local/state/runewarp/server.log")
    for no_runtime in ({"HOME": "/home/op"}, {"HOME": "/home/op", "XDG_RUNTIME_DIR": "run"}):
        assert default_pid_file(no_runtime, "client") == \
            daemon.Path("/home/op/.local/state/runewarp/client.pid")
    assert default_log_file({"HOME": "/h", "XDG_STATE_HOME": "/var/s"}, "client") == \
        daemon.Path("/var/s/runewarp/client.log")


SERVER = """[server]
hostname = "tunnel.example.com"
{keys}
[[server.tunnels]]
public-hostnames = ["app.example.com"]
client-identity = "17ad449285b03164149ca52ef0e23c643e0fbf3cce4a9aaa8eced6629a968268"
"""


def test_pid_and_log_file_keys_resolve_like_other_paths(tmp_path):
    path = tmp_path / "etc/server.toml"
    path.parent.mkdir()
    path.write_text(SERVER.format(keys=""))
    config = load_server_config(path, env={"HOME": str(tmp_path)})
    assert config.pid_file is None and config.log_file is None  # the defaults are -d's
    path.write_text(SERVER.format(keys='pid-file = "run/s.pid"\nlog-file = "~/s.log"'))
    config = load_server_config(path, env={"HOME": str(tmp_path)})
    assert config.pid_file == tmp_path / "etc/run/s.pid"
    assert config.log_file == tmp_path / "s.log"


@pytest.mark.parametrize("keys, key, message", [
    ("pid-file = 1", "server.pid-file", "expected a string, got an integer"),
    ('log-file = ""', "server.log-file", "must not be empty"),
])
def test_bad_pid_and_log_file_values_name_the_key(tmp_path, keys, key, message):
    path = tmp_path / "server.toml"
    path.write_text(SERVER.format(keys=keys))
    with pytest.raises(ConfigError) as error:
        load_server_config(path, env={"HOME": str(tmp_path)})
    assert str(error.value) == f"{path}: {key}: {message}"
