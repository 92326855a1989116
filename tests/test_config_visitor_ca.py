"""`[[client.services]] visitor-ca-file`: a terminate Service that requires Visitor client
certificates; bad values are one config error naming the key."""

import pytest

from runewarp.config import load_client_config
from runewarp.config.render import render
from runewarp.errors import ConfigError

from .conftest import run_cli

HEAD = '[client]\nserver-address = "tunnel.example.com:8443"\n'


def client(*lines):
    return HEAD + ('\n[[client.services]]\npublic-hostnames = ["db.example.com"]\n'
                   'backend-address = "127.0.0.1:5432"\n' + "".join(f"{line}\n" for line in lines))


@pytest.fixture
def visitor_ca(tmp_path):
    folder = tmp_path / "etc" / "visitor-ca"  # beside the file `write` makes
    run_cli("client", "visitor-ca", "init", "--dir", folder)
    return folder / "visitor-ca.crt"


def test_the_path_resolves_against_the_config_file_and_shows_back(write, env, visitor_ca):
    path = write(client('tls-mode = "terminate"', 'visitor-ca-file = "visitor-ca/visitor-ca.crt"'))
    config = load_client_config(path, env=env)
    assert config.services[0].visitor_ca_file == visitor_ca
    text = render("client", config)
    assert f'visitor-ca-file = "{visitor_ca}"' in text
    assert load_client_config(write(text, "shown.toml"), env=env).services == config.services


def test_unset_means_no_client_certificate(write, env):
    assert load_client_config(write(client('tls-mode = "terminate"')), env=env).services[0].visitor_ca_file is None


@pytest.mark.parametrize("lines, message", [
    (['visitor-ca-file = "visitor-ca/visitor-ca.crt"'], 'only allowed with tls-mode = "terminate"'),
    (['tls-mode = "passthrough"', 'visitor-ca-file = "visitor-ca/visitor-ca.crt"'], "only allowed with"),
    (['tls-mode = "terminate"', 'visitor-ca-file = "missing.crt"'], "cannot read"),
    (['tls-mode = "terminate"', 'visitor-ca-file = "config.toml"'], "holds no PEM CA certificate"),
    (['tls-mode = "terminate"', 'visitor-ca-file = "leaf.crt"'], "holds no PEM CA certificate"),
    (['tls-mode = "terminate"', "visitor-ca-file = 3"], "expected"),
])
def test_bad_visitor_ca_file_is_a_config_error_naming_the_key(write, env, visitor_ca, tmp_path, lines, message):
    run_cli("client", "visitor-cert", "issue", "--name", "leaf", "--dir", visitor_ca.parent,
            "--out-dir", visitor_ca.parent.parent)
    path = write(client(*lines))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    key = "client.services[0].visitor-ca-file"
    assert e.value.key == key, e.value
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in e.value.message


@pytest.mark.parametrize("lines, line", [
    (['visitor-ca-file = "visitor-ca/visitor-ca.crt"'],
     'only allowed with tls-mode = "terminate" (in passthrough the Local backend completes the Visitor\'s '
     "handshake)"),
    (['tls-mode = "terminate"', 'visitor-ca-file = "missing.crt"'], "cannot read {dir}/missing.crt: "
     "No such file or directory"),
    (['tls-mode = "terminate"', 'visitor-ca-file = "config.toml"'], "{dir}/config.toml holds no PEM CA "
     "certificate (make one with runewarp client visitor-ca init)"),
])
def test_client_start_exits_2_with_one_line(write, visitor_ca, lines, line):
    path = write(client(*lines))
    proc = run_cli("client", "-c", path, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: client.services[0].visitor-ca-file: {line.format(dir=path.parent)}"]
