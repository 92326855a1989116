"""`[server.managed]` and `[client.managed]`: what a config check can know (the files read and
parse; the cert-file certifies the identity key); each bad value is one line naming the file
and the key, exit 2."""

import pytest

from runewarp.config import load_client_config, load_server_config
from runewarp.config.render import render
from runewarp.errors import ConfigError

from .conftest import run_cli

SERVER = ('[server]\nhostname = "tunnel.example.com"\n'
          '[[server.tunnels]]\npublic-hostnames = ["app.example.com"]\nclient-identity = "{id}"\n')
CLIENT = ('[client]\nserver-address = "tunnel.example.com"\nidentity-dir = "id"\n'
          '[[client.services]]\nbackend-address = "127.0.0.1:8443"\n')
ID = "ab" * 32


@pytest.fixture
def made(tmp_path):
    """Beside the config file: a control-plane CA, a Client identity and its managed certificate."""
    etc = tmp_path / "etc"
    run_cli("ca", "init", "--dir", etc / "ca")
    identity = run_cli("client", "identity", "init", "--dir", etc / "id").stdout.strip()
    csr = run_cli("client", "identity", "csr", "--dir", etc / "id").stdout
    (etc / "id.csr").write_text(csr)
    (etc / "managed.crt").write_text(run_cli("ca", "issue", "--dir", etc / "ca", "--identity", identity,
                                             "--csr", etc / "id.csr").stdout)
    run_cli("client", "identity", "init", "--dir", etc / "other")
    return etc


def test_the_tables_load_and_show_back(write, env, made):
    server = write(SERVER.format(id=ID) + '[server.managed]\nclient-ca-file = "ca/control-plane-ca.crt"\n')
    config = load_server_config(server, env=env)
    assert config.managed.client_ca_file == made / "ca" / "control-plane-ca.crt"
    assert config.managed.accept_self_signed is False
    assert load_server_config(write(render("server", config), "shown.toml"), env=env).managed == config.managed
    client = write(CLIENT + '[client.managed]\ncert-file = "managed.crt"\n', "client.toml")
    config = load_client_config(client, env=env)
    assert config.managed.cert_file == made / "managed.crt"
    assert load_client_config(write(render("client", config), "shown-client.toml"), env=env).managed == \
        config.managed


def test_without_the_tables_nothing_is_managed(write, env):
    assert load_server_config(write(SERVER.format(id=ID)), env=env).managed is None
    assert load_client_config(write(CLIENT, "client.toml"), env=env).managed is None


@pytest.mark.parametrize("table, key, message", [
    ('accept-self-signed = true', "server.managed.client-ca-file", "required key is missing"),
    ('client-ca-file = "missing.crt"', "server.managed.client-ca-file",
     "cannot read {dir}/missing.crt: No such file or directory"),
    ('client-ca-file = "managed.crt"', "server.managed.client-ca-file",
     "{dir}/managed.crt holds no PEM CA certificate (make one with runewarp ca init)"),
    ('client-ca-file = "ca/control-plane-ca.crt"\naccept-self-signed = "yes"',
     "server.managed.accept-self-signed", "expected true or false, got a string"),
    ('client-ca-file = "ca/control-plane-ca.crt"\nclient-ca = 1', "server.managed.client-ca",
     "unknown key; did you mean 'client-ca-file'?"),
])
def test_bad_server_managed_is_one_line_exit_2(write, made, table, key, message):
    path = write(SERVER.format(id=ID) + f"[server.managed]\n{table}\n")
    proc = run_cli("config", "check", "server", "-c", path, check=False)
    assert (proc.returncode, proc.stderr.splitlines()) == \
        (2, [f"error: {path}: {key}: {message.format(dir=made)}"])


@pytest.mark.parametrize("table, message", [
    ('cert-file = "missing.crt"', "cannot read {dir}/missing.crt: No such file or directory"),
    ('cert-file = "id.csr"', "{dir}/id.csr holds no PEM certificate (the control plane issues it: "
                             "runewarp ca issue)"),
    ('cert-file = "other/client.crt"', "{dir}/other/client.crt certifies the key of Client identity "
                                       "{other}, not this Client's identity key ({id}); have the control "
                                       "plane issue it from 'runewarp client identity csr'"),
])
def test_bad_client_managed_is_one_line_exit_2(write, made, table, message):
    path = write(CLIENT + f"[client.managed]\n{table}\n")
    ids = {"id": (made / "id" / "client-identity.txt").read_text().strip(),
           "other": (made / "other" / "client-identity.txt").read_text().strip()}
    proc = run_cli("config", "check", "client", "-c", path, check=False)
    assert (proc.returncode, proc.stderr.splitlines()) == \
        (2, [f"error: {path}: client.managed.cert-file: {message.format(dir=made, **ids)}"])


def test_a_missing_cert_file_key_is_named(write, env):
    with pytest.raises(ConfigError) as e:
        load_client_config(write(CLIENT + "[client.managed]\n", "client.toml"), env=env)
    assert e.value.key == "client.managed.cert-file" and e.value.message == "required key is missing"
