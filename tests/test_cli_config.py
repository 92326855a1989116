"""`runewarp config show|init|edit|check` in-process through cli.main: exit statuses, exact
first lines, and what each writes (init: one new file; check and show: nothing).

Real processes (check beside a running Server, edit with an editor process):
tests/e2e/test_config_commands.py.
"""

import datetime as dt
import os
import stat
import sys
import tomllib

import pytest

from runewarp import cli, material
from runewarp.config import load_server_config

from .test_material_store import raw as snapshot  # every entry: mode, mtime, inode, link

IDENTITY = "a" * 64
SERVER = f"""[server]
hostname = "tunnel.example.com"
cert-dir = "cert"
[[server.tunnels]]
public-hostnames = ["app.example.com"]
client-identity = "{IDENTITY}"
"""
CLIENT = """[client]
server-address = "tunnel.example.com"
server-trust = "ca-file"
server-ca-file = "cert/server-ca.crt"
identity-dir = "identity"
[[client.services]]
public-hostnames = ["app.example.com"]
backend-address = "127.0.0.1:8443"
"""
DAY = dt.timedelta(days=1)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "VISUAL", "EDITOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def default_path(sandbox):
    return sandbox / "home" / ".config" / "runewarp" / "config.toml"


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def fails(capsys, status, *argv):
    """The one stderr line of a run that exits `status` and prints nothing on stdout."""
    got, out, err = run(capsys, *argv)
    assert (got, out) == (status, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.rstrip("\n")


@pytest.fixture
def pair(sandbox):
    """A valid server.toml and client.toml with their material, in one folder."""
    material.init_server_cert(sandbox / "cert", "tunnel.example.com")
    identity = material.init_identity(sandbox / "identity").identity
    (sandbox / "server.toml").write_text(SERVER.replace(IDENTITY, identity))
    (sandbox / "client.toml").write_text(CLIENT)
    return sandbox / "server.toml", sandbox / "client.toml"


# -- show --

@pytest.mark.parametrize("role", ["server", "client"])
def test_show_prints_the_effective_config(pair, capsys, role):
    path = pair[role == "client"]
    status, out, err = run(capsys, "config", "show", "-c", path)
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == f"# effective {role} config from {path}"
    assert role in tomllib.loads(out)


def test_show_selects_the_named_role_of_a_file_with_both(sandbox, pair, capsys):
    both = sandbox / "both.toml"
    both.write_text(pair[0].read_text() + pair[1].read_text())
    status, out, _ = run(capsys, "config", "show", "client", "-c", both)
    assert status == 0 and out.splitlines()[0] == f"# effective client config from {both}"


@pytest.mark.parametrize("command", ["show", "check"])
def test_a_file_with_both_roles_needs_the_role(sandbox, pair, capsys, command):
    both = sandbox / "both.toml"
    both.write_text(pair[0].read_text() + pair[1].read_text())
    assert fails(capsys, 2, "config", command, "-c", both) == (
        f"error: {both}: the file has both [server] and [client]: name the role "
        "(server or client) on the command line")


@pytest.mark.parametrize("command", ["show", "check"])
def test_no_config_file(default_path, capsys, command):
    assert fails(capsys, 2, "config", command) == (
        f"error: command line: no config file: pass -c FILE or create {default_path}")
    missing = default_path.parent / "missing.toml"
    assert fails(capsys, 2, "config", command, "-c", missing) == \
        f"error: {missing}: config file does not exist"


def test_show_names_the_bad_key(sandbox, capsys):
    bad = sandbox / "bad.toml"
    bad.write_text(SERVER.replace("hostname", "hostnme"))
    assert fails(capsys, 2, "config", "show", "-c", bad) == \
        f"error: {bad}: server.hostnme: unknown key; did you mean 'hostname'?"


# -- init --

@pytest.mark.parametrize("umask", [0o077, 0o000])
@pytest.mark.parametrize("role", ["server", "client"])
def test_init_writes_a_new_file_0640_and_its_folder(default_path, capsys, role, umask):
    old = os.umask(umask)
    try:
        status, out, err = run(capsys, "config", "init", role)
    finally:
        os.umask(old)
    assert (status, out, err) == (0, f"{default_path}\n", "")
    assert stat.S_IMODE(default_path.stat().st_mode) == 0o640
    assert stat.S_IMODE(default_path.parent.stat().st_mode) == 0o750
    assert sorted(os.listdir(default_path.parent)) == ["config.toml"]  # no temporary file left
    assert role in tomllib.loads(default_path.read_text())


@pytest.mark.parametrize("role", ["server", "client"])
def test_init_never_overwrites(default_path, capsys, role):
    default_path.parent.mkdir(parents=True)
    default_path.write_text("mine\n")
    assert fails(capsys, 1, "config", "init", role) == (
        f"error: {default_path} already exists; change it with "
        f"'runewarp config edit -c {default_path}'")
    assert default_path.read_text() == "mine\n"


def test_init_needs_the_role(default_path, capsys):
    status, out, err = run(capsys, "config", "init")
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        "error: invalid arguments for 'runewarp config init': a command word is missing",
        "see 'runewarp config init --help'"]
    assert not default_path.parent.exists()


def test_init_fills_the_hostname(sandbox, capsys):
    assert run(capsys, "config", "init", "server", "-c", "s.toml", "--hostname", "Edge.Example.org")[0] == 0
    assert tomllib.loads((sandbox / "s.toml").read_text())["server"]["hostname"] == "edge.example.org"
    assert run(capsys, "config", "init", "client", "-c", "c.toml", "--hostname", "www.example.org")[0] == 0
    services = tomllib.loads((sandbox / "c.toml").read_text())["client"]["services"]
    assert services[0]["public-hostnames"] == ["www.example.org"]


def test_init_takes_a_wildcard_for_a_client_service_only(sandbox, capsys):
    assert run(capsys, "config", "init", "client", "-c", "c.toml", "--hostname", "*.example.org")[0] == 0
    services = tomllib.loads((sandbox / "c.toml").read_text())["client"]["services"]
    assert services[0]["public-hostnames"] == ["*.example.org"]
    line = fails(capsys, 2, "config", "init", "server", "-c", "s.toml", "--hostname", "*.example.org")
    assert line.startswith("error: command line: --hostname: "), line


def test_init_refuses_a_bad_hostname(sandbox, capsys):
    line = fails(capsys, 2, "config", "init", "server", "-c", "s.toml", "--hostname", "not a name")
    assert line.startswith("error: command line: --hostname: "), line
    assert not (sandbox / "s.toml").exists()


def test_init_leaves_no_partial_file(sandbox, capsys, monkeypatch):
    def broken_link(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    assert fails(capsys, 1, "config", "init", "client", "-c", "etc/c.toml") == \
        "error: No space left on device"
    assert os.listdir(sandbox / "etc") == []


def test_an_initialised_server_config_asks_for_the_real_identity_then_its_certificate(
        sandbox, capsys):
    """The template's next steps come as check errors, in the order an operator takes them."""
    run(capsys, "config", "init", "server", "-c", "s.toml")
    path = sandbox / "s.toml"
    assert fails(capsys, 2, "config", "check", "-c", path) == (
        f"error: {path}: server.tunnels[0].client-identity: the all-zero placeholder is not a "
        "Client identity; paste the real one printed by 'runewarp client identity show' on "
        "the Client")
    path.write_text(path.read_text().replace("0" * 64, IDENTITY))
    line = fails(capsys, 2, "config", "check", "-c", path)
    assert line.startswith(f"error: {path}: ") and "runewarp server cert init" in line, line
    assert run(capsys, "server", "cert", "init", "-c", path)[0] == 0
    assert run(capsys, "config", "check", "-c", path)[:2] == (0, f"ok: {path}\n")


def test_an_initialised_client_config_asks_for_its_identity_then_the_server_ca(sandbox, capsys):
    run(capsys, "config", "init", "client", "-c", "c.toml")
    path = sandbox / "c.toml"
    identity = sandbox / "home/.local/share/runewarp/client/identity"
    assert fails(capsys, 2, "config", "check", "-c", path) == (
        f"error: {path}: {identity}/client-identity.txt: missing; run 'runewarp client "
        "identity init'")
    assert run(capsys, "client", "identity", "init", "-c", path)[0] == 0
    ca = sandbox / "home/.local/share/runewarp/client/server-ca.crt"
    assert fails(capsys, 2, "config", "check", "-c", path) == (
        f"error: {path}: client.server-ca-file: cannot read the Server CA bundle {ca}; copy "
        "the Server's server-ca.crt there or set server-ca-file")
    material.init_server_cert(sandbox / "cert", "tunnel.example.com")
    ca.write_bytes((sandbox / "cert" / "server-ca.crt").read_bytes())
    assert run(capsys, "config", "check", "-c", path)[:2] == (0, f"ok: {path}\n")


# -- check --

@pytest.mark.parametrize("role", ["server", "client"])
def test_check_ok_writes_nothing(pair, capsys, role):
    path = pair[role == "client"]
    before = snapshot(path.parent)
    assert run(capsys, "config", "check", "-c", path) == (0, f"ok: {path}\n", "")
    assert snapshot(path.parent) == before


def test_check_names_file_and_key(pair, capsys):
    path = pair[0]
    path.write_text(path.read_text().replace('"tunnel.example.com"', '"tunnel.example.com"\n'
                                             'public-bind-address = "127.0.0.1:99999"'))
    assert fails(capsys, 2, "config", "check", "-c", path) == (
        f"error: {path}: server.public-bind-address: port 99999 is out of range 0-65535")


def test_check_refuses_a_certificate_for_another_hostname(pair, capsys):
    path = pair[0]
    path.write_text(path.read_text().replace('hostname = "tunnel.example.com"',
                                             'hostname = "edge.example.com"'))
    line = fails(capsys, 2, "config", "check", "-c", path)
    assert line.startswith(f"error: {path}: server.hostname: {pair[0].parent / 'cert/server.crt'} "
                           "is for tunnel.example.com, not edge.example.com"), line


def test_check_refuses_a_readable_key_under_strict_permissions(pair, capsys):
    path = pair[0]
    os.chmod(path.parent / "cert" / "server.key", 0o644)
    assert run(capsys, "config", "check", "-c", path)[:2] == (0, f"ok: {path}\n")
    path.write_text(path.read_text().replace("[server]\n", "[server]\nstrict-permissions = true\n"))
    line = fails(capsys, 2, "config", "check", "-c", path)
    assert line.startswith(f"error: {path}: server.strict-permissions: "), line


def test_check_does_not_renew_a_due_certificate(pair, capsys):
    """A start would renew it; check says ok and leaves the folder as it was."""
    cert_dir = pair[0].parent / "cert"
    aged = material.renew_server_cert(cert_dir, now=dt.datetime.now(dt.UTC) - 61 * DAY)
    before = snapshot(cert_dir)
    assert run(capsys, "config", "check", "server", "-c", pair[0])[:2] == (0, f"ok: {pair[0]}\n")
    assert snapshot(cert_dir) == before
    assert material.load_certificate(cert_dir / "server.crt").serial_number == aged.serial


def test_check_refuses_an_expired_certificate_it_cannot_renew(pair, capsys):
    cert_dir = pair[0].parent / "cert"
    material.renew_server_cert(cert_dir, now=dt.datetime.now(dt.UTC) - 100 * DAY)
    os.unlink(cert_dir / "state" / "server-ca.key")
    line = fails(capsys, 2, "config", "check", "-c", pair[0])
    assert line.startswith(f"error: {pair[0]}: server.cert-dir: {cert_dir / 'server.crt'}: "
                           "expired on "), line


# -- edit --

@pytest.fixture
def editor(sandbox, monkeypatch):
    """An editor command that replaces the file it is given with `content`."""
    def make(content, variable="EDITOR", status=0):
        script = sandbox / f"editor-{variable}.py"
        script.write_text(f"import sys\nopen(sys.argv[1], 'w').write({content!r})\n"
                          f"sys.exit({status})\n")
        monkeypatch.setenv(variable, f"'{sys.executable}' {script}")
        return script

    return make


def test_edit_checks_the_edited_file(pair, capsys, editor):
    editor(pair[0].read_text() + "\n# edited\n")
    assert run(capsys, "config", "edit", "-c", pair[0]) == (0, f"ok: {pair[0]}\n", "")
    assert pair[0].read_text().endswith("# edited\n")


def test_edit_reports_an_invalid_result_and_keeps_it(pair, capsys, editor):
    bad = pair[0].read_text().replace("client-identity", "client-identitty")
    editor(bad)
    assert fails(capsys, 2, "config", "edit", "-c", pair[0]) == (
        f"error: {pair[0]}: server.tunnels[0].client-identitty: unknown key; did you mean "
        "'client-identity'?")
    assert pair[0].read_text() == bad


def test_edit_prefers_visual(pair, capsys, editor):
    editor("broken = [", "EDITOR")
    editor(pair[1].read_text(), "VISUAL")
    assert run(capsys, "config", "edit", "-c", pair[1])[:2] == (0, f"ok: {pair[1]}\n")


def test_edit_checks_every_role_of_the_file(sandbox, pair, capsys, editor):
    both = sandbox / "both.toml"
    both.write_text("")
    editor(pair[0].read_text() + pair[1].read_text().replace("identity-dir", "identity-dri"))
    assert fails(capsys, 2, "config", "edit", "-c", both).startswith(
        f"error: {both}: client.identity-dri: unknown key")


def test_edit_without_a_file(default_path, capsys, editor):
    editor("never written")
    assert fails(capsys, 2, "config", "edit") == (
        f"error: command line: no config file at {default_path}; create one with "
        "'runewarp config init'")
    assert not default_path.exists()


def test_edit_with_a_failing_editor(pair, capsys, editor, monkeypatch):
    script = editor(pair[0].read_text(), status=3)
    assert fails(capsys, 1, "config", "edit", "-c", pair[0]) == (
        f"error: the editor \"'{sys.executable}' {script}\" exited with status 3; "
        f"{pair[0]} was not checked")
    monkeypatch.setenv("EDITOR", "no-such-editor-anywhere")
    assert fails(capsys, 1, "config", "edit", "-c", pair[0]) == (
        "error: cannot run the editor 'no-such-editor-anywhere': No such file or directory")


def test_edit_reports_invalid_toml(pair, capsys, editor):
    editor("[server\n")
    line = fails(capsys, 2, "config", "edit", "-c", pair[0])
    assert line.startswith(f"error: {pair[0]}: invalid TOML: "), line


@pytest.mark.parametrize("verb,first", [
    ("show", "Print the effective config of one role as TOML"),
    ("init", "Write a minimal, commented config"),
    ("edit", "Open the config in $VISUAL"),
    ("check", "Check a config as the daemon does before it binds"),
])
def test_each_config_command_has_its_help(capsys, verb, first):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["config", verb, "--help"])
    out, _ = capsys.readouterr()
    assert exit_.value.code in (0, None) and out.startswith(first)
    assert f"  runewarp config {verb} " in out


def test_show_after_init_loads_back(sandbox, capsys):
    """The written template, shown, is a config file of its own."""
    run(capsys, "config", "init", "server", "-c", "s.toml")
    path = sandbox / "s.toml"
    path.write_text(path.read_text().replace("0" * 64, IDENTITY))
    status, out, _ = run(capsys, "config", "show", "-c", path)
    shown = sandbox / "shown.toml"
    shown.write_text(out)
    assert status == 0
    assert load_server_config(shown).tunnels == load_server_config(path).tunnels
