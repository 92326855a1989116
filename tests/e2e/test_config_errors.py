"""The contract of a configuration error, through the real CLI (configuration.md, Error format).

Each rule is tested in-process in tests/test_config.py (the loaders) and
tests/test_cli_errors.py (the command line); the cases here are the few that
prove what only a real process shows, for both commands. Every case runs
`runewarp server -c FILE` or `runewarp client -c FILE` (or a bare command
line) in a sandbox whose HOME and XDG_* folders live in tmp_path, and
checks the operator-facing contract of a configuration error:

- exit status 2;
- stderr is exactly one line, `error: <file>: <key path>: <what is wrong>`, where the
  key path uses 0-based array indexes as runewarp/config documents
  (`server.tunnels[0].public-hostnames[1]`);
- no Python traceback, nothing on stdout;
- nothing started: the command returns by itself, promptly, and never reports
  readiness (no `server-ready` / `client-ready` line, i.e. no listener, no dial);
- nothing written: no file or folder appears anywhere in the sandbox, in
  particular not the material/state folders the config names (cert-dir,
  identity-dir, public-cert-dir, ACME state-dir) nor the XDG defaults used
  when such a folder is omitted (e.g. the ACME state folder).
"""

import os
import textwrap
import time

import pytest

from ..conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ID_A = "0123456789abcdef" * 4
PROMPT = 15.0  # seconds; a rejected config must not start anything that waits

SERVER_HEAD = """\
[server]
hostname = "tunnel.example.com"
public-bind-address = "127.0.0.1:0"
cert-dir = "server-cert"
"""


def tunnel(hosts='["app.example.com", "api.example.com"]', identity=f'client-identity = "{ID_A}"',
           extra=""):
    return f"\n[[server.tunnels]]\npublic-hostnames = {hosts}\n{identity}\n{extra}"


SERVER_OK = SERVER_HEAD + tunnel()

CLIENT_HEAD = """\
[client]
server-address = "tunnel.example.com:8443"
identity-dir = "client-identity"
"""


def service(hosts='["app.example.com"]', backend='"127.0.0.1:9443"', extra=""):
    lines = ["\n[[client.services]]"]
    if hosts is not None:
        lines.append(f"public-hostnames = {hosts}")
    if backend is not None:
        lines.append(f"backend-address = {backend}")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


CLIENT_OK = CLIENT_HEAD + service()
BOTH_OK = SERVER_OK + "\n" + CLIENT_OK


@pytest.fixture
def sandbox(tmp_path):
    """Environment whose HOME and XDG folders are (not yet existing) paths in tmp_path."""
    env = dict(os.environ)
    for name in ("RUNEWARP_RESOLVE", "NOTIFY_SOCKET"):
        env.pop(name, None)
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
               XDG_DATA_HOME=str(tmp_path / "xdg-data"),
               XDG_STATE_HOME=str(tmp_path / "xdg-state"))
    return env


def tree(root):
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def fails_cleanly(tmp_path, env, *args):
    """Run the CLI, check the no-side-effect contract, return the CompletedProcess."""
    before = tree(tmp_path)
    started = time.monotonic()
    proc = run_cli(*args, env=env, check=False, timeout=PROMPT * 2)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", proc.stdout
    assert elapsed < PROMPT, f"took {elapsed:.1f}s to reject"
    assert "server-ready" not in proc.stderr and "client-ready" not in proc.stderr
    assert tree(tmp_path) == before, f"written: {sorted(tree(tmp_path) - before)}"
    for xdg in ("home", "xdg-config", "xdg-data", "xdg-state"):
        assert not (tmp_path / xdg).exists()
    return proc


def one_error_line(proc):
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def config_error(tmp_path, env, command, text):
    path = tmp_path / "runewarp.toml"
    path.write_text(textwrap.dedent(text))
    proc = fails_cleanly(tmp_path, env, command, "-c", path)
    return path, one_error_line(proc)


def assert_names_key(line, path, key, fragment):
    prefix = f"error: {path}: {key}: "
    assert line.startswith(prefix), f"expected {prefix!r}...\n got {line!r}"
    assert fragment.lower() in line[len(prefix):].lower(), line


# --- the contract, for both commands -------------------------------------------


def test_server_unknown_key_with_a_suggestion(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "server",
                              SERVER_HEAD + 'public-bind = "127.0.0.1:443"\n' + tunnel())
    assert line == f"error: {path}: server.public-bind: unknown key; did you mean 'public-bind-address'?"


def test_server_bad_value_after_acme_writes_no_state_folder(tmp_path, sandbox):
    """A valid [server.acme] with a later error: the omitted ACME state folder is not created."""
    path, line = config_error(
        tmp_path, sandbox, "server",
        SERVER_HEAD.replace('cert-dir = "server-cert"\n', '[server.acme]\nemail = "ops@example.com"\n')
        + tunnel(hosts='["*.example.com"]'))
    assert_names_key(line, path, "server.tunnels[0].public-hostnames[0]", "wildcard")


def test_client_bad_value_after_acme_writes_no_state_folder(tmp_path, sandbox):
    path, line = config_error(
        tmp_path, sandbox, "client",
        CLIENT_HEAD + '[client.acme]\nemail = "ops@example.com"\n'
        + service(backend='"127.0.0.1:99999"', extra='tls-mode = "terminate"'))
    assert line == f"error: {path}: client.services[0].backend-address: port 99999 is out of range 1-65535"


def test_missing_explicit_config_file(tmp_path, sandbox):
    path = tmp_path / "etc" / "nowhere.toml"
    line = one_error_line(fails_cleanly(tmp_path, sandbox, "server", "-c", path))
    assert line == f"error: {path}: config file does not exist"


def test_invalid_toml(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "client", BOTH_OK + '\n[server\nhostname = "x"\n')
    assert line.startswith(f"error: {path}: invalid TOML: "), line


def test_bad_command_line_address(tmp_path, sandbox):
    proc = fails_cleanly(tmp_path, sandbox, "client", "--server-address", "tunnel.example.com:8443",
                         "--backend-address", "bad_host:80", "--identity-dir", tmp_path / "client-identity")
    assert_names_key(one_error_line(proc), "command line", "--backend-address", "underscore")


# --- the material check after validation also exits 2 and writes nothing ----------


def test_server_without_certificate_material_in_default_folder(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "server",
                              SERVER_OK.replace('cert-dir = "server-cert"\n', ""))
    assert line.startswith(f"error: {path}: "), line
    assert str(tmp_path / "xdg-data" / "runewarp" / "server" / "cert" / "server.crt") in line
    assert line.endswith("run 'runewarp server cert init'"), line


def test_client_without_identity_creates_no_public_cert_folder(tmp_path, sandbox):
    """A terminate Service without public-cert-dir uses the XDG default, which starting does not create."""
    path, line = config_error(tmp_path, sandbox, "client",
                              CLIENT_HEAD + service(extra='tls-mode = "terminate"'))
    assert line.startswith(f"error: {path}: "), line
    assert str(tmp_path / "client-identity") in line
    assert line.endswith("run 'runewarp client identity init'"), line


def test_client_without_identity_and_config(tmp_path, sandbox):
    proc = fails_cleanly(tmp_path, sandbox, "client", "--server-address", "tunnel.example.com",
                         "--backend-address", "127.0.0.1:9443")
    line = one_error_line(proc)
    assert line.startswith("error: command line: "), line
    assert str(tmp_path / "xdg-data" / "runewarp" / "client" / "identity") in line
    assert line.endswith("run 'runewarp client identity init'"), line


def test_usage_error(tmp_path, sandbox):
    proc = fails_cleanly(tmp_path, sandbox, "server", "--foo")
    assert proc.stderr.splitlines() == ["error: unknown option --foo for 'runewarp server'",
                                        "see 'runewarp server --help'"]
