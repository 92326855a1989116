"""Command-line errors in-process through cli.main: exit status 2 and one `error:` line.

The end-to-end contract (a real process, nothing written, no traceback) is
tests/e2e/test_config_errors.py; these are the cases that need no process.
"""

import os
import subprocess
import sys

import pytest

from runewarp import __version__, cli


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


@pytest.mark.parametrize("argv,line", [
    (["bogus"], "unknown command 'bogus'"),
    ([], "no command given"),
    (["server", "--bogus"], "unknown option --bogus for 'runewarp server'"),
    (["server", "--config=x", "--bogus=1"], "unknown option --bogus for 'runewarp server'"),
    (["client", "identity"], "invalid arguments for 'runewarp client identity': "
                             "a command word is missing"),
    (["server", "cert", "init", "--hostname"], "option --hostname of 'runewarp server cert' "
                                               "needs a value"),
    (["server", "cert", "init", "extra"], "invalid arguments for 'runewarp server cert': "
                                          "init extra"),
    # A flag the usage patterns name (not the Options section) is known: two that exclude
    # each other are invalid arguments, not an unknown option.
    (["client", "identity", "rotate", "--stage", "--commit"],
     "invalid arguments for 'runewarp client identity': rotate --stage --commit"),
], ids=["unknown-command", "no-command", "unknown-option", "unknown-option-with-value",
        "missing-verb", "missing-option-value", "extra-argument", "exclusive-flags"])
def test_usage_error(sandbox, capsys, argv, line):
    """One error line and where the help is; never docopt's usage dump."""
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    words = [w for w in argv[:3] if not w.startswith("-") and w not in ("init", "extra", "rotate")]
    help_command = "runewarp --help" if line.startswith(("unknown command", "no command")) \
        else f"runewarp {' '.join(words)} --help"
    assert err.splitlines() == [f"error: {line}", f"see '{help_command}'"]


@pytest.mark.parametrize("argv,first", [
    (["--help"], "Runewarp — publish TLS services"),
    (["server", "--help"], "Run the Server"),
    (["server", "cert", "renew", "-h"], "Create, renew or replace the Server certificate"),
    (["client", "--help"], "Run the Client"),
    (["client", "identity", "--help"], "Create, renew, replace or print the Client identity"),
    (["client", "status", "--help"], "Print the state of the running client"),
    (["demo", "--help"], "Run the whole path on loopback"),
])
def test_each_command_has_its_own_help(capsys, argv, first):
    with pytest.raises(SystemExit) as exit_:
        assert cli.main(argv) == 0  # the top-level help returns; docopt's exits
        raise SystemExit(0)
    assert exit_.value.code in (0, None)
    out, err = capsys.readouterr()
    assert out.startswith(first) and err == ""
    assert "Usage:" in out


@pytest.mark.parametrize("argv", [["--version"], ["-V"], ["server", "--version"],
                                  ["client", "identity", "show", "-V"]])
def test_version_everywhere(capsys, argv):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"runewarp {__version__}\n"


def test_output_to_a_closed_pipe_ends_quietly(tmp_path):
    """`runewarp --help | true`: no BrokenPipeError traceback, the SIGPIPE status."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "runewarp", "--help"], stdout=write,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert done.stderr == b"" and done.returncode == 141


def test_material_command_names_a_bad_folder_key(sandbox, capsys):
    path = sandbox / "c.toml"
    path.write_text("[server]\ncert-dir = 5\n")
    line = fails(capsys, "server", "cert", "init", "--hostname", "tunnel.example.com", "-c", path)
    assert line == f"error: {path}: server.cert-dir: expected a string, got an integer"
    assert not (sandbox / "home").exists()
