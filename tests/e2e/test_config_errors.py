"""Configuration and usage errors through the real CLI (configuration.md, Validation; cli.md).

Every case runs `runewarp server -c FILE` or `runewarp client -c FILE` (or a bare
command line) in a sandbox whose HOME and XDG_* folders live in tmp_path, and
checks the operator-facing contract of a configuration error:

- exit status 2;
- stderr is exactly one line, `error: <file>: <key path>: <what is wrong>`, where the
  key path uses 0-based array indexes as config.py documents
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
ID_B = "fedcba9876543210" * 4
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


# --- rules shared by both commands --------------------------------------------

COMMON = [
    ("unknown-top-level-key", 'colour = "blue"\n' + BOTH_OK, "colour", "unknown key"),
    ("bad-log-level", 'log-level = "verbose"\n' + BOTH_OK, "log-level", "must be one of"),
    ("log-level-wrong-type", "log-level = 3\n" + BOTH_OK, "log-level", "expected a string"),
    ("bad-log-format", 'log-format = "yaml"\n' + BOTH_OK, "log-format", "must be one of"),
]


@pytest.mark.parametrize("command", ["server", "client"])
@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in COMMON],
                         ids=[c[0] for c in COMMON])
def test_common_rule(tmp_path, sandbox, command, text, key, fragment):
    path, line = config_error(tmp_path, sandbox, command, text)
    assert_names_key(line, path, key, fragment)


@pytest.mark.parametrize("command", ["server", "client"])
def test_missing_explicit_config_file(tmp_path, sandbox, command):
    path = tmp_path / "etc" / "nowhere.toml"
    line = one_error_line(fails_cleanly(tmp_path, sandbox, command, "-c", path))
    assert line == f"error: {path}: config file does not exist"


@pytest.mark.parametrize("command", ["server", "client"])
def test_invalid_toml(tmp_path, sandbox, command):
    path, line = config_error(tmp_path, sandbox, command, BOTH_OK + '\n[server\nhostname = "x"\n')
    assert line.startswith(f"error: {path}: invalid TOML: "), line


@pytest.mark.parametrize("command", ["server", "client"])
def test_config_not_utf8(tmp_path, sandbox, command):
    path = tmp_path / "runewarp.toml"
    path.write_bytes(BOTH_OK.replace("tunnel.example.com", "t\xfcnnel.example.com").encode("latin-1"))
    line = one_error_line(fails_cleanly(tmp_path, sandbox, command, "-c", path))
    assert line == f"error: {path}: invalid TOML: file is not UTF-8"


@pytest.mark.parametrize("command", ["server", "client"])
def test_config_is_a_folder(tmp_path, sandbox, command):
    path = tmp_path / "runewarp.toml"
    path.mkdir()
    line = one_error_line(fails_cleanly(tmp_path, sandbox, command, "-c", path))
    assert line.startswith(f"error: {path}: cannot read config: "), line


@pytest.mark.parametrize("command,table", [("server", "server"), ("client", "client")])
def test_missing_role_table(tmp_path, sandbox, command, table):
    other = CLIENT_OK if command == "server" else SERVER_OK
    path, line = config_error(tmp_path, sandbox, command, other)
    assert_names_key(line, path, table, f"missing [{table}] table")


# --- [server] -------------------------------------------------------------------

SERVER_CASES = [
    # unknown keys
    ("unknown-server-key", SERVER_HEAD + 'public-bind = "127.0.0.1:443"\n' + tunnel(),
     "server.public-bind", "did you mean 'public-bind-address'"),
    ("unknown-tunnel-key", SERVER_HEAD + tunnel(extra='hostnames = ["x.example.com"]\n'),
     "server.tunnels[0].hostnames", "unknown key"),
    ("unknown-limits-key", SERVER_HEAD + "[server.limits]\nstreams = 5\n" + tunnel(),
     "server.limits.streams", "unknown key"),
    # wrong types
    ("server-not-a-table", 'server = "tunnel.example.com"\n', "server", "expected a table"),
    ("hostname-not-a-string", SERVER_OK.replace('"tunnel.example.com"', "42"),
     "server.hostname", "expected a string, got an integer"),
    ("public-hostnames-not-a-list", SERVER_HEAD + tunnel(hosts='"app.example.com"'),
     "server.tunnels[0].public-hostnames", "expected an array"),
    ("public-hostname-not-a-string", SERVER_HEAD + tunnel(hosts='["app.example.com", 7]'),
     "server.tunnels[0].public-hostnames[1]", "expected a string, got an integer"),
    ("client-identity-not-a-string", SERVER_HEAD + tunnel(identity="client-identity = 1"),
     "server.tunnels[0].client-identity", "expected a string"),
    ("grace-not-a-number", SERVER_HEAD + 'graceful-shutdown-duration = "30s"\n' + tunnel(),
     "server.graceful-shutdown-duration", "expected a number"),
    ("grace-negative", SERVER_HEAD + "graceful-shutdown-duration = -1\n" + tunnel(),
     "server.graceful-shutdown-duration", ">= 0"),
    ("tunnels-not-tables", SERVER_HEAD + 'tunnels = ["app.example.com"]\n',
     "server.tunnels", "expected an array of tables"),
    ("acme-not-a-table", SERVER_HEAD.replace('cert-dir = "server-cert"\n', 'acme = "yes"\n')
     + tunnel(), "server.acme", "expected a table"),
    ("limit-zero", SERVER_HEAD + "[server.limits]\nactive-streams = 0\n" + tunnel(),
     "server.limits.active-streams", "at least 1"),
    # Server hostname
    ("missing-hostname", SERVER_OK.replace('hostname = "tunnel.example.com"\n', ""),
     "server.hostname", "required key is missing"),
    ("empty-hostname", SERVER_OK.replace('"tunnel.example.com"', '""'),
     "server.hostname", "must not be empty"),
    ("invalid-hostname", SERVER_OK.replace('"tunnel.example.com"', '"-tunnel.example.com"'),
     "server.hostname", "starts or ends with '-'"),
    ("underscore-hostname", SERVER_OK.replace('"tunnel.example.com"', '"tun_nel.example.com"'),
     "server.hostname", "underscore"),
    ("ip-hostname", SERVER_OK.replace('"tunnel.example.com"', '"192.0.2.10"'),
     "server.hostname", "IP address"),
    ("ipv6-hostname", SERVER_OK.replace('"tunnel.example.com"', '"::1"'),
     "server.hostname", "IP literals"),
    ("wildcard-hostname", SERVER_OK.replace('"tunnel.example.com"', '"*.example.com"'),
     "server.hostname", "wildcard"),
    ("unicode-hostname", SERVER_OK.replace('"tunnel.example.com"', '"tünnel.example.com"'),
     "server.hostname", "non-ASCII"),
    ("label-too-long", SERVER_OK.replace('"tunnel.example.com"', f'"{"a" * 64}.example.com"'),
     "server.hostname", "longer than 63"),
    ("hostname-too-long", SERVER_OK.replace('"tunnel.example.com"',
                                            '"' + ".".join(["a" * 60] * 5) + '"'),
     "server.hostname", "longer than 253"),
    # Public hostnames
    ("invalid-public-hostname", SERVER_HEAD + tunnel(hosts='["app.example.com", "a..b.com"]'),
     "server.tunnels[0].public-hostnames[1]", "empty label"),
    ("ip-public-hostname", SERVER_HEAD + tunnel(hosts='["app.example.com", "10.0.0.1"]'),
     "server.tunnels[0].public-hostnames[1]", "IP address"),
    ("wildcard-public-hostname", SERVER_HEAD + tunnel(hosts='["*.example.com"]'),
     "server.tunnels[0].public-hostnames[0]", "wildcard"),
    ("unicode-public-hostname", SERVER_HEAD + tunnel(hosts='["app.example.com", "bücher.de"]'),
     "server.tunnels[0].public-hostnames[1]", "non-ASCII"),
    ("empty-public-hostnames", SERVER_HEAD + tunnel(hosts="[]"),
     "server.tunnels[0].public-hostnames", "must not be empty"),
    ("missing-public-hostnames", SERVER_HEAD + f'\n[[server.tunnels]]\nclient-identity = "{ID_A}"\n',
     "server.tunnels[0].public-hostnames", "required key is missing"),
    ("server-hostname-is-public-hostname",
     SERVER_HEAD + tunnel(hosts='["app.example.com", "Tunnel.Example.COM."]'),
     "server.tunnels[0].public-hostnames[1]", "is the Server hostname"),
    ("duplicate-in-one-tunnel",
     SERVER_HEAD + tunnel(hosts='["app.example.com", "APP.example.com."]'),
     "server.tunnels[0].public-hostnames[1]",
     "already listed at server.tunnels[0].public-hostnames[0]"),
    ("hostname-in-two-tunnels",
     SERVER_HEAD + tunnel() + tunnel(hosts='["web.example.com", "api.example.com"]',
                                     identity=f'client-identity = "{ID_B}"'),
     "server.tunnels[1].public-hostnames[1]",
     "already listed at server.tunnels[0].public-hostnames[1]"),
    # Client identities
    ("identity-in-two-tunnels",
     SERVER_HEAD + tunnel() + tunnel(hosts='["web.example.com"]',
                                     identity=f'client-identities = ["{ID_B}", "{ID_A}"]'),
     "server.tunnels[1].client-identities[1]", "already listed at server.tunnels[0].client-identity"),
    ("identity-too-short", SERVER_HEAD + tunnel(identity=f'client-identity = "{ID_A[:63]}"'),
     "server.tunnels[0].client-identity", "64 lowercase hex"),
    ("identity-too-long", SERVER_HEAD + tunnel(identity=f'client-identity = "{ID_A}0"'),
     "server.tunnels[0].client-identity", "64 lowercase hex"),
    ("identity-not-hex", SERVER_HEAD + tunnel(identity=f'client-identity = "{"g" * 64}"'),
     "server.tunnels[0].client-identity", "64 lowercase hex"),
    ("identity-uppercase", SERVER_HEAD + tunnel(identity=f'client-identity = "{ID_A.upper()}"'),
     "server.tunnels[0].client-identity", "lowercase"),
    ("identity-uppercase-in-list",
     SERVER_HEAD + tunnel(identity=f'client-identities = ["{ID_A}", "{ID_B.upper()}"]'),
     "server.tunnels[0].client-identities[1]", "lowercase"),
    ("identity-and-identities",
     SERVER_HEAD + tunnel(identity=f'client-identity = "{ID_A}"\nclient-identities = ["{ID_B}"]'),
     "server.tunnels[0].client-identities", "not both"),
    ("missing-identity", SERVER_HEAD + tunnel(identity=""),
     "server.tunnels[0].client-identity", "required key is missing"),
    ("empty-identities", SERVER_HEAD + tunnel(identity="client-identities = []"),
     "server.tunnels[0].client-identities", "must not be empty"),
    # Tunnels
    ("no-tunnels", SERVER_HEAD, "server.tunnels", "at least one"),
    ("empty-tunnels", SERVER_HEAD + "tunnels = []\n", "server.tunnels", "at least one"),
    ("duplicate-tunnel-name",
     SERVER_HEAD + tunnel(extra='name = "apps"') + tunnel(
         hosts='["web.example.com"]', identity=f'client-identity = "{ID_B}"', extra='name = "apps"'),
     "server.tunnels[1].name", "already the name of server.tunnels[0]"),
    # bind addresses
    ("public-bind-hostname", SERVER_OK.replace('"127.0.0.1:0"', '"localhost:443"'),
     "server.public-bind-address", "literal IP address"),
    ("public-bind-port-out-of-range", SERVER_OK.replace('"127.0.0.1:0"', '"127.0.0.1:65536"'),
     "server.public-bind-address", "out of range"),
    ("public-bind-port-not-a-number", SERVER_OK.replace('"127.0.0.1:0"', '"127.0.0.1:https"'),
     "server.public-bind-address", "not a number"),
    ("public-bind-port-missing", SERVER_OK.replace('"127.0.0.1:0"', '"127.0.0.1"'),
     "server.public-bind-address", "missing ':port'"),
    ("public-bind-ipv6-unbracketed", SERVER_OK.replace('"127.0.0.1:0"', '"::1:443"'),
     "server.public-bind-address", "brackets"),
    ("tunnel-bind-hostname",
     SERVER_HEAD + 'tunnel-bind-address = "tunnel.example.com:8443"\n' + tunnel(),
     "server.tunnel-bind-address", "literal IP address"),
    ("tunnel-bind-same-as-public",
     SERVER_OK.replace('"127.0.0.1:0"', '"127.0.0.1:8443"\ntunnel-bind-address = "127.0.0.1:8443"'),
     "server.tunnel-bind-address", "must differ"),
    # cert-dir / ACME
    ("cert-dir-with-acme",
     SERVER_HEAD + '[server.acme]\nemail = "ops@example.com"\nstate-dir = "acme-state"\n' + tunnel(),
     "server.cert-dir", "cannot be used together with [server.acme]"),
    ("acme-without-email",
     SERVER_HEAD.replace('cert-dir = "server-cert"\n', "[server.acme]\n") + tunnel(),
     "server.acme.email", "required key is missing"),
    ("acme-bad-email",
     SERVER_HEAD.replace('cert-dir = "server-cert"\n', '[server.acme]\nemail = "ops"\n') + tunnel(),
     "server.acme.email", "not an email address"),
    ("acme-http-directory",
     SERVER_HEAD.replace('cert-dir = "server-cert"\n',
                         '[server.acme]\nemail = "ops@example.com"\n'
                         'directory-url = "http://acme.example.com/dir"\n') + tunnel(),
     "server.acme.directory-url", "https://"),
    # a valid ACME section with a later error: the omitted state folder is not created
    ("acme-then-bad-tunnel",
     SERVER_HEAD.replace('cert-dir = "server-cert"\n', '[server.acme]\nemail = "ops@example.com"\n')
     + tunnel(hosts='["*.example.com"]'),
     "server.tunnels[0].public-hostnames[0]", "wildcard"),
]


@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in SERVER_CASES],
                         ids=[c[0] for c in SERVER_CASES])
def test_server_rule(tmp_path, sandbox, text, key, fragment):
    path, line = config_error(tmp_path, sandbox, "server", text)
    assert_names_key(line, path, key, fragment)


# --- [client] -------------------------------------------------------------------

CA_FILE_TRUST = 'server-trust = "ca-file"\nserver-ca-file = "server-ca.crt"\n'
CLIENT_CASES = [
    ("unknown-client-key", CLIENT_HEAD + 'server-adress = "x.example.com"\n' + service(),
     "client.server-adress", "did you mean 'server-address'"),
    ("unknown-service-key", CLIENT_HEAD + service(extra='backend = "127.0.0.1:1"'),
     "client.services[0].backend", "did you mean 'backend-address'"),
    ("client-not-a-table", 'client = ["x"]\n', "client", "expected a table"),
    ("server-address-wrong-type", CLIENT_OK.replace('"tunnel.example.com:8443"', "8443"),
     "client.server-address", "expected a string"),
    ("services-not-tables", CLIENT_HEAD + 'services = "app.example.com"\n',
     "client.services", "expected an array of tables"),
    ("tls-mode-wrong-type", CLIENT_HEAD + service(extra="tls-mode = true"),
     "client.services[0].tls-mode", "expected a string"),
    ("bad-tls-mode", CLIENT_HEAD + service(extra='tls-mode = "reencrypt"'),
     "client.services[0].tls-mode", "must be one of"),
    # server-address
    ("missing-server-address", CLIENT_OK.replace('server-address = "tunnel.example.com:8443"\n', ""),
     "client.server-address", "required key is missing"),
    ("ip-server-address", CLIENT_OK.replace('"tunnel.example.com:8443"', '"192.0.2.10:8443"'),
     "client.server-address", "not an IP address"),
    ("ipv6-server-address", CLIENT_OK.replace('"tunnel.example.com:8443"', '"[2001:db8::1]:443"'),
     "client.server-address", "not an IP address"),
    ("invalid-server-hostname", CLIENT_OK.replace('"tunnel.example.com:8443"', '"tun nel:443"'),
     "client.server-address", "whitespace"),
    ("server-port-zero", CLIENT_OK.replace("tunnel.example.com:8443", "tunnel.example.com:0"),
     "client.server-address", "out of range 1-65535"),
    ("server-port-too-big", CLIENT_OK.replace("tunnel.example.com:8443", "tunnel.example.com:70000"),
     "client.server-address", "out of range"),
    ("server-port-not-a-number", CLIENT_OK.replace("tunnel.example.com:8443", "tunnel.example.com:https"),
     "client.server-address", "not a number"),
    # trust
    ("server-trust-invalid", CLIENT_HEAD + 'server-trust = "pinned"\n' + service(),
     "client.server-trust", "must be one of system, ca-file"),
    ("ca-file-with-system-trust",
     CLIENT_HEAD + 'server-trust = "system"\nserver-ca-file = "server-ca.crt"\n' + service(),
     "client.server-ca-file", 'only allowed with server-trust = "ca-file"'),
    ("ca-file-with-default-trust", CLIENT_HEAD + 'server-ca-file = "server-ca.crt"\n' + service(),
     "client.server-ca-file", 'only allowed with server-trust = "ca-file"'),
    ("ca-file-missing", CLIENT_HEAD + 'server-trust = "ca-file"\nserver-ca-file = "nope/ca.crt"\n'
     + service(), "client.server-ca-file", "cannot read"),
    # services
    ("no-services", CLIENT_HEAD, "client.services", "at least one"),
    ("empty-services", CLIENT_HEAD + "services = []\n", "client.services", "at least one"),
    ("catch-all-not-sole", CLIENT_HEAD + service() + service(hosts=None, backend='"127.0.0.1:9444"'),
     "client.services[1].public-hostnames", "only a sole Service may be Catch-all"),
    ("catch-all-first-not-sole", CLIENT_HEAD + service(hosts=None) + service(),
     "client.services[0].public-hostnames", "only a sole Service may be Catch-all"),
    ("empty-service-hostnames", CLIENT_HEAD + service(hosts="[]"),
     "client.services[0].public-hostnames", "must not be empty"),
    ("hostname-in-two-services",
     CLIENT_HEAD + service(hosts='["app.example.com", "api.example.com"]')
     + service(hosts='["API.example.com."]', backend='"127.0.0.1:9444"'),
     "client.services[1].public-hostnames[0]",
     "already listed at client.services[0].public-hostnames[1]"),
    ("wildcard-service-hostname", CLIENT_HEAD + service(hosts='["*.example.com"]'),
     "client.services[0].public-hostnames[0]", "wildcard"),
    ("ip-service-hostname", CLIENT_HEAD + service(hosts='["app.example.com", "127.0.0.1"]'),
     "client.services[0].public-hostnames[1]", "IP address"),
    ("unicode-service-hostname", CLIENT_HEAD + service(hosts='["äpp.example.com"]'),
     "client.services[0].public-hostnames[0]", "non-ASCII"),
    # terminate
    ("terminate-catch-all",
     CLIENT_HEAD + 'public-cert-dir = "public-cert"\n' + service(hosts=None, extra='tls-mode = "terminate"'),
     "client.services[0].tls-mode", "Catch-all Service cannot terminate"),
    ("public-cert-dir-without-terminate", CLIENT_HEAD + 'public-cert-dir = "public-cert"\n' + service(),
     "client.public-cert-dir", 'needs at least one Service with tls-mode = "terminate"'),
    ("acme-without-terminate",
     CLIENT_HEAD + '[client.acme]\nemail = "ops@example.com"\n' + service(),
     "client.acme", 'needs at least one Service with tls-mode = "terminate"'),
    ("public-cert-dir-with-acme",
     CLIENT_HEAD + 'public-cert-dir = "public-cert"\n[client.acme]\nemail = "ops@example.com"\n'
     + service(extra='tls-mode = "terminate"'),
     "client.public-cert-dir", "cannot be used together with [client.acme]"),
    ("client-acme-without-email",
     CLIENT_HEAD + '[client.acme]\nstate-dir = "acme-state"\n' + service(extra='tls-mode = "terminate"'),
     "client.acme.email", "required key is missing"),
    # backend-address
    ("missing-backend-address", CLIENT_HEAD + service(backend=None),
     "client.services[0].backend-address", "required key is missing"),
    ("backend-without-port", CLIENT_HEAD + service(backend='"127.0.0.1"'),
     "client.services[0].backend-address", "missing ':port'"),
    ("backend-port-zero", CLIENT_HEAD + service(backend='"localhost:0"'),
     "client.services[0].backend-address", "out of range 1-65535"),
    ("backend-port-not-a-number", CLIENT_HEAD + service(backend='"localhost:https"'),
     "client.services[0].backend-address", "not a number"),
    ("backend-bad-host", CLIENT_HEAD + service(backend='"bad_host:8443"'),
     "client.services[0].backend-address", "underscore"),
    ("backend-ipv4-in-brackets", CLIENT_HEAD + service(backend='"[127.0.0.1]:8443"'),
     "client.services[0].backend-address", "only IPv6 addresses go in brackets"),
    ("backend-ipv6-unbracketed", CLIENT_HEAD + service(backend='"::1:8443"'),
     "client.services[0].backend-address", "brackets"),
    ("backend-not-a-string", CLIENT_HEAD + service(backend="8443"),
     "client.services[0].backend-address", "expected a string"),
    # a valid ACME section with a later error: the omitted state folder is not created
    ("acme-then-bad-backend",
     CLIENT_HEAD + '[client.acme]\nemail = "ops@example.com"\n'
     + service(backend='"127.0.0.1:99999"', extra='tls-mode = "terminate"'),
     "client.services[0].backend-address", "out of range"),
]


@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in CLIENT_CASES],
                         ids=[c[0] for c in CLIENT_CASES])
def test_client_rule(tmp_path, sandbox, text, key, fragment):
    (tmp_path / "server-ca.crt").write_text("not looked at by config validation\n")
    path, line = config_error(tmp_path, sandbox, "client", text)
    assert_names_key(line, path, key, fragment)


def test_valid_ca_file_passes_validation(tmp_path, sandbox):
    """Control for the trust cases: the same file with a readable CA reaches the material check."""
    (tmp_path / "server-ca.crt").write_text("not looked at by config validation\n")
    path, line = config_error(tmp_path, sandbox, "client", CLIENT_HEAD + CA_FILE_TRUST + service())
    assert line.startswith(f"error: {path}: "), line
    assert line.endswith("run 'runewarp client identity init'"), line


def test_valid_spellings_pass_validation(tmp_path, sandbox):
    """Control for the hostname cases: mixed case, one trailing dot and punycode A-labels
    are valid; both commands get past validation to the material check."""
    text = f"""\
[server]
hostname = "Tunnel.Example.COM."
cert-dir = "server-cert"
[[server.tunnels]]
public-hostnames = ["xn--bcher-kva.example", "App.Example.COM."]
client-identities = ["{ID_A}", "{ID_B}"]
[client]
server-address = "TUNNEL.example.com."
identity-dir = "client-identity"
[[client.services]]
public-hostnames = ["xn--bcher-kva.example", "app.example.com."]
backend-address = "[::1]:8443"
"""
    _path, line = config_error(tmp_path, sandbox, "server", text)
    assert line.endswith("run 'runewarp server cert init'"), line
    _path, line = config_error(tmp_path, sandbox, "client", text)
    assert line.endswith("run 'runewarp client identity init'"), line


def test_terminate_without_public_cert_dir_uses_the_xdg_default(tmp_path, sandbox):
    """Not an error: terminate material defaults to the XDG folder (configuration.md, table
    "Where things live").  Validation passes, and the folder is not created by starting."""
    path, line = config_error(tmp_path, sandbox, "client",
                              CLIENT_HEAD + service(extra='tls-mode = "terminate"'))
    assert line.startswith(f"error: {path}: "), line
    assert line.endswith("run 'runewarp client identity init'"), line


# --- command line -----------------------------------------------------------------


def test_client_without_config_or_flags(tmp_path, sandbox):
    line = one_error_line(fails_cleanly(tmp_path, sandbox, "client"))
    assert line.startswith("error: command line: no config file"), line
    assert "--server-address and --backend-address" in line


def test_server_without_config(tmp_path, sandbox):
    line = one_error_line(fails_cleanly(tmp_path, sandbox, "server"))
    assert line.startswith("error: command line: no config file"), line


def test_client_server_address_without_backend_address(tmp_path, sandbox):
    default = tmp_path / "xdg-config" / "runewarp" / "config.toml"
    line = one_error_line(fails_cleanly(tmp_path, sandbox, "client", "--server-address",
                                        "tunnel.example.com:8443"))
    assert line.startswith(f"error: {default}: no config file"), line
    assert "--backend-address" in line


@pytest.mark.parametrize("flag,value,fragment", [
    ("--server-address", "127.0.0.1:8443", "not an IP address"),
    ("--server-address", "tunnel.example.com:0", "out of range"),
    ("--backend-address", "127.0.0.1", "missing ':port'"),
    ("--backend-address", "bad_host:80", "underscore"),
])
def test_bad_command_line_address(tmp_path, sandbox, flag, value, fragment):
    args = {"--server-address": "tunnel.example.com:8443", "--backend-address": "127.0.0.1:9443"}
    args[flag] = value
    proc = fails_cleanly(tmp_path, sandbox, "client", *[x for kv in args.items() for x in kv],
                         "--identity-dir", tmp_path / "client-identity")
    assert_names_key(one_error_line(proc), "command line", flag, fragment)


def test_client_missing_ca_file_flag(tmp_path, sandbox):
    proc = fails_cleanly(tmp_path, sandbox, "client", "--server-address", "tunnel.example.com",
                         "--backend-address", "127.0.0.1:9443", "--server-ca-file",
                         tmp_path / "nope.crt", "--identity-dir", tmp_path / "client-identity")
    assert_names_key(one_error_line(proc), "command line", "--server-ca-file", "cannot read")


def test_server_without_certificate_material(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "server", SERVER_OK)
    assert line.startswith(f"error: {path}: "), line
    assert str(tmp_path / "server-cert" / "server.crt") in line
    assert line.endswith("run 'runewarp server cert init'"), line


def test_server_without_certificate_material_in_default_folder(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "server",
                              SERVER_OK.replace('cert-dir = "server-cert"\n', ""))
    assert str(tmp_path / "xdg-data" / "runewarp" / "server" / "cert" / "server.crt") in line
    assert line.endswith("run 'runewarp server cert init'"), line


def test_client_without_identity(tmp_path, sandbox):
    path, line = config_error(tmp_path, sandbox, "client", CLIENT_OK)
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


@pytest.mark.parametrize("argv", [
    ["bogus"],
    ["server", "--bogus"],
    ["client", "identity"],
    ["server", "cert", "init", "--hostname"],
], ids=["unknown-command", "unknown-option", "missing-verb", "missing-option-value"])
def test_usage_error(tmp_path, sandbox, argv):
    proc = fails_cleanly(tmp_path, sandbox, *argv)
    assert "Usage:" in proc.stderr
    assert "runewarp server [-c FILE]" in proc.stderr
