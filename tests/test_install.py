"""`make install` as an operator meets it: the venv, the staging, the user, the shipped paths.

Two installs per run: one staged with DESTDIR (what a package build does), one into a
throwaway PREFIX with SYSCONFDIR and STATEDIR beside it, so the installed units, cron
line and configs name real paths and their command lines run as shipped.
"""

import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from runewarp.config.schema import default
from runewarp.proto.address import format_address
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ID = "0123456789abcdef" * 4
UNITS = ("runewarp-server.service", "runewarp-client.service",
         "runewarp-renew-acme@.service", "runewarp-renew-acme@.timer", "runewarp-server.socket")


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_python = load_tool("check_python")


def run(cmd, ok=True, **kw):
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)
    if ok:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def make(*targets, ok=True, **variables):
    return run(["make", "-C", ROOT, *targets, *(f"{k}={v}" for k, v in variables.items())], ok=ok)


@pytest.fixture(scope="module")
def install_python():
    """An interpreter a service user could run (the check `make install` applies itself)."""
    for candidate in (getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"):
        if os.path.exists(candidate) and run([candidate, ROOT / "tools/check_python.py"], ok=False).returncode == 0:
            return candidate
    pytest.skip("no interpreter that other users can run (.ci/run installs python3-venv)")


# -- the interpreter check (tools/check_python.py) --

def test_closed_part_names_the_folder_others_cannot_enter(tmp_path):
    (tmp_path / "open/bin").mkdir(parents=True)
    (tmp_path / "closed/bin").mkdir(parents=True)
    for folder in ("open", "open/bin", "closed/bin"):
        (tmp_path / folder).chmod(0o755)
    (tmp_path / "closed").chmod(0o700)
    for folder in ("open", "closed"):
        exe = tmp_path / folder / "bin/python3"
        exe.write_text("")
        exe.chmod(0o755)
    assert check_python.closed_part(tmp_path / "open/bin/python3", "x", root=tmp_path) is None
    assert check_python.closed_part(tmp_path / "closed/bin/python3", "x", root=tmp_path) == tmp_path / "closed"
    (tmp_path / "open/bin/python3").chmod(0o750)
    assert check_python.closed_part(tmp_path / "open/bin/python3", "x", root=tmp_path) == \
        tmp_path / "open/bin/python3"


def test_venv_flags_copy_a_closed_executable_and_refuse_a_closed_library(tmp_path):
    for folder in ("lib", "closed", "closed/bin"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder).chmod(0o755)
    (tmp_path / "closed").chmod(0o700)
    exe = tmp_path / "closed/bin/python3"
    exe.write_text("")
    exe.chmod(0o755)
    link = tmp_path / "python3"  # an open link to a closed interpreter (pyenv-style shim)
    link.symlink_to(exe)
    assert check_python.venv_flags(link, [tmp_path / "lib"], root=tmp_path) == "--copies"
    with pytest.raises(SystemExit, match=r"other users cannot enter .*closed.*PYTHON=/usr/bin/python3"):
        check_python.venv_flags(link, [tmp_path / "closed/bin"], root=tmp_path)


def test_install_refuses_an_interpreter_the_service_user_cannot_run(tmp_path):
    """Here the build interpreter may live under /root (pyenv): the install must stop, clearly."""
    base = getattr(sys, "_base_executable", sys.executable)
    if run([base, ROOT / "tools/check_python.py"], ok=False).returncode == 0:
        pytest.skip(f"{base} is runnable by other users; the refusal is covered by the unit tests")
    proc = make("install-venv", ok=False, DESTDIR=tmp_path / "stage", PYTHON=base)
    assert proc.returncode != 0
    assert "other users cannot enter" in proc.stderr and "PYTHON=/usr/bin/python3" in proc.stderr
    assert not (tmp_path / "stage").exists(), "nothing is installed after a refused interpreter"


# -- staged install (DESTDIR) --

@pytest.fixture(scope="module")
def staged(tmp_path_factory, install_python):
    destdir = tmp_path_factory.mktemp("stage") / "root"
    etc = destdir / "etc/runewarp"
    etc.mkdir(parents=True)
    (etc / "server.toml").write_text("# operator's own\n")
    proc = make("install", DESTDIR=destdir, PREFIX="/usr/local", SYSCONFDIR="/etc", PYTHON=install_python)
    return destdir, proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_staged_install_names_destdir_in_no_file(staged):
    destdir, _ = staged
    needle = str(destdir).encode()
    leaks = [p for p in destdir.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]
    assert leaks == [], f"{len(leaks)} files name DESTDIR, e.g. {leaks[:5]}"
    lib = destdir / "usr/local/lib/runewarp"
    assert list(lib.rglob("runewarp/cli/__pycache__/__init__.*.pyc")), "byte-compiled for the final path"
    assert os.readlink(destdir / "usr/local/bin/runewarp") == "/usr/local/lib/runewarp/bin/runewarp"
    assert (lib / "bin/runewarp").read_text().startswith("#!/usr/local/lib/runewarp/bin/python")
    assert run([lib / "bin/python", "-m", "runewarp", "--version"]).stdout.startswith("runewarp ")


@pytest.mark.timeout(900)
def test_staged_install_keeps_configs_skips_the_user_and_uninstall_keeps_data(staged, install_python):
    destdir, output = staged
    etc = destdir / "etc/runewarp"
    assert (etc / "server.toml").read_text() == "# operator's own\n"
    assert 'identity-dir = "/var/lib/runewarp/client/identity"' in (etc / "client.toml").read_text()
    assert "not creating user runewarp" in output and "useradd --system" in output
    state = destdir / "var/lib/runewarp"
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    doc = destdir / "usr/local/share/doc/runewarp"
    assert (doc / "usage.md").exists() and (doc / "server.toml.example").exists()
    logrotate = destdir / "etc/logrotate.d/runewarp"
    assert stat.S_IMODE(logrotate.stat().st_mode) == 0o644
    lines = [line.strip() for line in logrotate.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "/var/lib/runewarp/log/*.log {" in lines and "su runewarp runewarp" in lines
    assert "copytruncate" not in lines and any("kill -USR1" in line for line in lines)
    assert not [line for line in lines if re.search(r"@[A-Z]+@", line)]
    uninstall = make("-n", "uninstall", DESTDIR=destdir, PREFIX="/usr/local").stdout
    assert "userdel" not in uninstall and "groupdel" not in uninstall and "var/lib" not in uninstall


def unit_file(path):
    """{(section, key): [values]} of a systemd unit file."""
    keys, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            keys.setdefault((section, key), []).append(value)
    return keys


def test_installed_units_name_the_prefix_and_stop_on_config_errors(staged):
    destdir, _ = staged
    units = destdir / "usr/local/lib/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)
    hardening = None
    for name in UNITS[:3]:
        keys = unit_file(units / name)
        assert keys[("Service", "ExecStart")][0].startswith("/usr/local/bin/runewarp ")
        assert " -c /etc/runewarp/" in keys[("Service", "ExecStart")][0]
        doc = keys[("Unit", "Documentation")][0]
        assert doc.startswith("file:///usr/local/share/doc/runewarp/")
        assert (destdir / doc[len("file:///"):]).is_file(), f"{name}: {doc} is not installed"
        assert keys[("Service", "User")] == ["runewarp"]
        if name != "runewarp-renew-acme@.service":
            assert keys[("Service", "RestartPreventExitStatus")] == ["2"]
            # A bad file fails `systemctl reload` before any signal is sent.
            role = name.split("-")[1].split(".")[0]
            assert keys[("Service", "ExecReload")] == [
                f"/usr/local/bin/runewarp config check {role} -c /etc/runewarp/{role}.toml",
                "/bin/kill -HUP $MAINPID"]
        # The renewal unit is hardened like the daemons: same sandbox keys (capabilities aside).
        sandbox = {k: v for k, v in keys.items() if k[0] == "Service" and k[1].startswith(
            ("Protect", "Private", "Restrict", "SystemCall", "NoNew", "Lock", "UMask", "ReadWrite"))}
        sandbox.pop(("Service", "PrivateUsers"), None)  # the Server needs the host's users for CAP_NET_BIND_SERVICE
        hardening = hardening or sandbox
        assert sandbox == hardening, name
    renew = unit_file(units / "runewarp-renew-acme@.service")[("Service", "ExecStart")][0]
    assert "%i" in renew and "${RUNEWARP_RENEW_%i}" in renew
    # The socket unit listens on the default public bind address, the one the Server claims.
    socket_unit = unit_file(units / "runewarp-server.socket")
    assert socket_unit[("Socket", "ListenStream")] == [format_address(
        default("server.public-bind-address"))]
    assert socket_unit[("Socket", "FileDescriptorName")] == ["public"]
    # A hand-over's new process tells systemd its pid (MAINPID=).
    assert unit_file(units / "runewarp-server.service")[("Service", "NotifyAccess")] == ["all"]
    assert unit_file(units / "runewarp-renew-acme@.timer")[("Timer", "Persistent")] == ["true"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify_and_score_at_most_5(staged, tmp_path):
    """`systemd-analyze verify`, and `security --offline=yes` (systemd ≥ 250) for each service."""
    destdir, _ = staged
    binary = destdir / "usr/local/lib/runewarp/bin/runewarp"  # an executable file verify can see
    names = {"runewarp-renew-acme@.service": "runewarp-renew-acme@server.service",
             "runewarp-renew-acme@.timer": "runewarp-renew-acme@server.timer"}
    for name in UNITS:
        text = (destdir / "usr/local/lib/systemd/system" / name).read_text()
        (tmp_path / names.get(name, name)).write_text(text.replace("/usr/local/bin/runewarp", str(binary)))
    units = sorted(str(p) for p in tmp_path.iterdir())
    proc = run(["systemd-analyze", "verify", *units], ok=False, timeout=120)
    assert proc.returncode == 0 and "Unknown key" not in proc.stderr, proc.stderr
    for unit in (u for u in units if u.endswith(".service")):
        proc = run(["systemd-analyze", "security", "--offline=yes", unit], ok=False, timeout=120)
        if "--offline" in proc.stderr and proc.returncode != 0:
            pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
        assert score and float(score.group(1)) <= 5.0, f"{unit}: {proc.stdout[-600:]}"


# -- one install whose shipped command lines run as they are --

class Tree:
    def __init__(self, top):
        self.top, self.prefix, self.etc = top, top / "usr", top / "etc"
        self.state = top / "var/lib/runewarp"
        self.units = self.prefix / "lib/systemd/system"
        self.doc = self.prefix / "share/doc/runewarp"


@pytest.fixture(scope="module")
def prefix_install(install_python):
    """PREFIX, SYSCONFDIR and STATEDIR in a folder every user may enter (for the user test)."""
    top = Path(tempfile.mkdtemp(prefix="runewarp-install-", dir="/tmp"))
    top.chmod(0o755)
    tree = Tree(top)
    try:
        make("install-venv", "install-files", PREFIX=tree.prefix, SYSCONFDIR=tree.etc,
             STATEDIR=tree.state, PYTHON=install_python)
        tree.state.mkdir(parents=True)
        yield tree
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- every entry point reads the same folders, whatever its environment --

def operator_edits(text, blocks=(), lines=(), drop=(), **values):
    """The template as an operator completes it: placeholder identity replaced, commented
    blocks (from `# <header>` to the blank line) and single lines uncommented, keys set."""
    text = text.replace("0" * 64, ID)
    out, block = [], False
    for line in text.splitlines():
        block = block and line.startswith("# ") or line[2:] in blocks
        key = line.lstrip("# ").split(" = ")[0]
        if key in drop and not line.startswith("#"):
            continue
        if block or (line.startswith("# ") and key in lines):
            line = line[2:]
        if key in values and not line.startswith("#"):
            line = f'{key} = "{values[key]}"'
        out.append(line)
    return "\n".join(out) + "\n"


SERVER_ACME = dict(blocks=("[server.acme]",), drop=("cert-dir",))
CLIENT_TERMINATE = dict(blocks=("[[client.services]]",), lines=("public-cert-dir",))
CLIENT_ACME = dict(blocks=("[[client.services]]", "[client.acme]"))


def test_templates_name_every_folder_whatever_the_environment(tmp_path):
    from runewarp.config import load_client_config, load_server_config

    state = tmp_path / "state"
    (state / "client").mkdir(parents=True)
    (state / "client/server-ca.crt").write_text("")  # an explicit bundle must be readable
    server, client = ((ROOT / f"conf/{n}.toml").read_text().replace("/var/lib/runewarp", str(state))
                      for n in ("server", "client"))

    def folders(env):
        def load(loader, text, name):
            (tmp_path / name).write_text(text)
            return loader(tmp_path / name, env=env)
        return (load(load_server_config, operator_edits(server), "s.toml").cert_dir,
                load(load_server_config, operator_edits(server, **SERVER_ACME), "sa.toml").acme.state_dir,
                load(load_client_config, operator_edits(client), "c.toml").identity_dir,
                load(load_client_config, operator_edits(client), "c.toml").server_ca_file,
                load(load_client_config, operator_edits(client, **CLIENT_TERMINATE), "ct.toml").public_cert_dir,
                load(load_client_config, operator_edits(client, **CLIENT_ACME), "ca.toml").acme.state_dir)

    plain = folders({"HOME": str(tmp_path / "home")})
    custom = folders({"HOME": str(tmp_path / "other"), "XDG_DATA_HOME": str(tmp_path / "data"),
                      "XDG_STATE_HOME": str(tmp_path / "xstate")})
    assert plain == custom
    assert all(state in Path(p).parents for p in plain), plain


def unit_command(path, instance=""):
    """ExecStart as systemd runs it: %i, then ${VAR} words from the unit's Environment=."""
    keys = unit_file(path)
    env = dict(item.split("=", 1) for value in keys.get(("Service", "Environment"), [])
               for item in shlex.split(value))
    words = []
    for word in shlex.split(keys[("Service", "ExecStart")][0]):
        word = word.replace("%i", instance)
        variable = re.fullmatch(r"\$\{(\w+)\}", word)
        words.append(env.get(variable.group(1), "") if variable else word)
    return words, env


def cron_command(path):
    """(user, argv, environment) of the first job line of a cron.d file."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assignment = re.fullmatch(r"(\w+)=(.*)", line)
            if assignment:
                env[assignment.group(1)] = assignment.group(2)
            else:
                fields = line.split(None, 6)
                return fields[5], shlex.split(fields[6]), env


@pytest.mark.timeout(600)
def test_units_cron_and_cli_use_the_same_files(prefix_install, tmp_path):
    tree = prefix_install
    cli = str(tree.prefix / "bin/runewarp")
    server_toml, client_toml = tree.etc / "runewarp/server.toml", tree.etc / "runewarp/client.toml"
    homes = []

    def environment(name, **xdg):  # each entry point runs as "someone else"
        home = tmp_path / name
        home.mkdir()
        homes.append(home)
        return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
                "RUNEWARP_RESOLVE": "tunnel.example.com=127.0.0.1",
                **{k: str(home / v) for k, v in xdg.items()}}

    def start(argv, env, name):
        log = tmp_path / f"{name}.log"
        with open(log, "w") as stderr:
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env), log

    def wait_for(proc, log, pattern):
        deadline = time.monotonic() + 30
        while not re.search(pattern, log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, f"no {pattern}:\n{log.read_text()}"
            time.sleep(0.1)

    # The operator: material with -c, as any user with any environment.
    out = run([cli, "server", "cert", "init", "-c", server_toml], env=environment("cli-1")).stdout
    assert out.strip() == str(tree.state / "server/cert/server-ca.crt")
    identity = run([cli, "client", "identity", "init", "-c", client_toml],
                   env=environment("cli-2", XDG_DATA_HOME="data", XDG_STATE_HOME="state")).stdout.strip()
    assert (tree.state / "client/identity").is_dir()
    port = free_port()
    server_toml.write_text(operator_edits(server_toml.read_text().replace("0" * 64, identity),
                                          lines=("public-bind-address",),
                                          **{"public-bind-address": f"127.0.0.1:{port}",
                                             "bind-address": "127.0.0.1:0"}))
    client_toml.write_text(operator_edits(client_toml.read_text(),
                                          **{"server-address": f"tunnel.example.com:{port}",
                                             "bind-address": "127.0.0.1:0"}))
    ca_file = tomllib.loads(client_toml.read_text())["client"]["server-ca-file"]
    shutil.copy(tree.state / "server/cert/server-ca.crt", ca_file)

    # The daemons, as their units start them.
    procs = []
    try:
        for role, ready in (("server", "server-ready"), ("client", "tunnel-connection-established")):
            argv, unit_env = unit_command(tree.units / f"runewarp-{role}.service")
            proc, log = start(argv, {**environment(f"unit-{role}", XDG_DATA_HOME="d"), **unit_env}, role)
            procs.append(proc)
            wait_for(proc, log, ready)
            # `systemctl reload`: the unit's ExecReload lines, in order, as systemd runs them.
            check, hup = unit_file(tree.units / f"runewarp-{role}.service")[("Service", "ExecReload")]
            toml = server_toml if role == "server" else client_toml
            out = run(shlex.split(check), env={**environment(f"reload-{role}"), **unit_env})
            assert out.stdout.strip() == f"ok: {toml}"
            run(shlex.split(hup.replace("$MAINPID", str(proc.pid))))
            wait_for(proc, log, f"{role}-reloaded")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)

    # ACME renewal: the cron line and the timer's unit for each role; certbot fails on a
    # closed loopback port, after creating its folders in the configured state-dir.
    url = f"https://127.0.0.1:{free_port()}/directory"  # nothing listens there
    server_toml.write_text(operator_edits(server_toml.read_text(), **SERVER_ACME, **{"directory-url": url}))
    client_toml.write_text(operator_edits(client_toml.read_text(), **CLIENT_ACME, **{"directory-url": url}))
    user, argv, cron_env = cron_command(tree.doc / "runewarp.cron")
    assert user == "runewarp"
    runs = [("cron", argv, {**environment("cron"), "SHELL": "/bin/sh", **cron_env}, "server")]
    for role in ("server", "client"):
        argv, unit_env = unit_command(tree.units / "runewarp-renew-acme@.service", role)
        runs.append((f"timer-{role}", argv, {**environment(f"timer-{role}"), **unit_env}, role))
    for name, argv, env, role in runs:
        acme = tree.state / role / "acme"
        shutil.rmtree(acme, ignore_errors=True)
        proc = run(argv, ok=False, env=env, timeout=300)
        assert proc.returncode == 1, f"{name}: {proc.returncode}\n{proc.stderr[-2000:]}"
        assert (acme / "config").is_dir() and (acme / "logs").is_dir(), f"{name} used another state-dir"

    strays = [p for home in homes for p in home.rglob("*runewarp*")]
    assert strays == [], f"an entry point used a folder of its environment: {strays}"


def test_a_second_install_keeps_the_operators_logrotate_file(prefix_install, install_python):
    tree = prefix_install
    logrotate = tree.etc / "logrotate.d/runewarp"
    assert str(tree.state / "log/*.log") in logrotate.read_text()
    logrotate.write_text("# operator's own\n")
    make("install-files", PREFIX=tree.prefix, SYSCONFDIR=tree.etc, STATEDIR=tree.state,
         PYTHON=install_python)
    assert logrotate.read_text() == "# operator's own\n"


# -- the service user (only as root; the user is made up by the test and removed by name) --

@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("runuser")),
                    reason="needs root, useradd and runuser")
def test_install_user_creates_a_system_user_that_can_run_the_venv(prefix_install):
    user = f"rwtest{uuid.uuid4().hex[:8]}"
    state = prefix_install.top / "state-of-user"
    try:
        out = make("install-user", RUNEWARP_USER=user, STATEDIR=state).stdout
        assert f"created system user {user}" in out
        entry = run(["getent", "passwd", user]).stdout.strip().split(":")
        assert entry[5] == str(state) and entry[6].endswith("nologin")
        assert int(entry[2]) < 1000, "a system user"
        assert run(["getent", "group", user]).stdout.startswith(f"{user}:")
        info = state.stat()
        assert (info.st_uid, info.st_gid) == (int(entry[2]), int(entry[3]))
        assert stat.S_IMODE(info.st_mode) == 0o750
        again = make("install-user", RUNEWARP_USER=user, STATEDIR=state).stdout
        assert "created" not in again, "an existing user is left alone"
        # runuser, not setpriv: setpriv execs while still holding root's capabilities.
        as_user = run(["runuser", "-u", user, "--", prefix_install.prefix / "bin/runewarp", "--version"],
                      ok=False)
        assert as_user.returncode == 0, f"the service user cannot run the venv: {as_user.stderr}"
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
