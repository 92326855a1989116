"""Command-line errors in-process through cli.main: exit status 2 and one `error:` line.

The end-to-end contract (a real process, nothing written, no traceback) is
tests/e2e/test_config_errors.py; these are the cases that need no process.
"""

import pytest

from runewarp import cli


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def fails(capsys, *argv):
    """Run the CLI; return its one stderr line after checking exit 2 and an empty stdout."""
    assert cli.main([str(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["server", "client"])
def test_missing_explicit_config_file(sandbox, capsys, command):
    path = sandbox / "etc" / "nowhere.toml"
    assert fails(capsys, command, "-c", path) == f"error: {path}: config file does not exist"


def test_server_without_config(sandbox, capsys):
    assert fails(capsys, "server").startswith("error: command line: no config file")


def test_client_without_config_or_flags(sandbox, capsys):
    line = fails(capsys, "client")
    assert line.startswith("error: command line: no config file"), line
    assert "--server-address and --backend-address" in line


def test_client_server_address_without_backend_address(sandbox, capsys):
    default = sandbox / "home" / ".config" / "runewarp" / "config.toml"
    line = fails(capsys, "client", "--server-address", "tunnel.example.com:8443")
    assert line.startswith(f"error: {default}: no config file"), line
    assert "--backend-address" in line


@pytest.mark.parametrize("argv", [
    ["bogus"],
    ["server", "--bogus"],
    ["client", "identity"],
    ["server", "cert", "init", "--hostname"],
], ids=["unknown-command", "unknown-option", "missing-verb", "missing-option-value"])
def test_usage_error(sandbox, capsys, argv):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Usage:" in err and "runewarp server [-c FILE]" in err


def test_material_command_names_a_bad_folder_key(sandbox, capsys):
    path = sandbox / "c.toml"
    path.write_text("[server]\ncert-dir = 5\n")
    line = fails(capsys, "server", "cert", "init", "--hostname", "tunnel.example.com", "-c", path)
    assert line == f"error: {path}: server.cert-dir: expected a string, got an integer"
    assert not (sandbox / "home").exists()
