"""`[[client.services]] alpn`: the protocols a terminate Service agrees with Visitors."""

import pytest

from runewarp.config import load_client_config
from runewarp.config.render import render
from runewarp.errors import ConfigError

from .conftest import run_cli

HEAD = '[client]\nserver-address = "tunnel.example.com:8443"\n'


def client(*services):
    """One `[[client.services]]` per tuple of lines, hostnames a.example.com, b.example.com, …"""
    return HEAD + "".join(
        f'\n[[client.services]]\npublic-hostnames = ["{chr(97 + i)}.example.com"]\n'
        f'backend-address = "127.0.0.1:{8000 + i}"\n' + "".join(f"{line}\n" for line in lines)
        for i, lines in enumerate(services))


def test_terminate_defaults_to_http1_and_passthrough_has_none(write, env):
    config = load_client_config(write(client(['tls-mode = "terminate"'], [])), env=env)
    assert [s.alpn for s in config.services] == [("http/1.1",), None]


def test_the_order_is_kept_and_any_rfc7301_name_is_allowed(write, env):
    path = write(client(['tls-mode = "terminate"', 'alpn = ["h2", "http/1.1", "imap", "x" ]'],
                        ['tls-mode = "terminate"', f'alpn = ["{"p" * 255}"]']))
    config = load_client_config(path, env=env)
    assert [s.alpn for s in config.services] == [("h2", "http/1.1", "imap", "x"), ("p" * 255,)]


def test_config_show_writes_the_key_and_it_loads_back(write, env):
    path = write(client(['tls-mode = "terminate"', 'alpn = ["h2", "http/1.1"]'], ['tls-mode = "terminate"'], []))
    config = load_client_config(path, env=env)
    text = render("client", config)
    assert 'alpn = ["h2", "http/1.1"]' in text
    assert 'alpn = ["http/1.1"]' in text
    assert "# alpn = unset" in text  # the passthrough Service
    assert load_client_config(write(text, "shown.toml"), env=env).services == config.services


@pytest.mark.parametrize("lines, key, message", [
    (['alpn = ["h2"]'], "client.services[0].alpn", 'only allowed with tls-mode = "terminate"'),
    (['tls-mode = "passthrough"', 'alpn = ["h2"]'], "client.services[0].alpn", "only allowed with"),
    (['tls-mode = "terminate"', "alpn = []"], "client.services[0].alpn", "must not be empty"),
    (['tls-mode = "terminate"', 'alpn = "h2"'], "client.services[0].alpn", "expected an array of strings"),
    (['tls-mode = "terminate"', 'alpn = ["h2", 2]'], "client.services[0].alpn[1]", "expected a string"),
    (['tls-mode = "terminate"', 'alpn = ["h2", ""]'], "client.services[0].alpn[1]", "not an ALPN protocol name"),
    (['tls-mode = "terminate"', 'alpn = ["http/1.1 "]'], "client.services[0].alpn[0]", "no spaces"),
    (['tls-mode = "terminate"', 'alpn = ["hé"]'], "client.services[0].alpn[0]", "printable ASCII"),
    (['tls-mode = "terminate"', f'alpn = ["{"p" * 256}"]'], "client.services[0].alpn[0]", "1-255"),
    (['tls-mode = "terminate"', 'alpn = ["h2", "http/1.1", "h2"]'], "client.services[0].alpn[2]",
     "'h2' is listed twice"),
    (['tls-mode = "terminate"', 'alpn = ["h2c"]'], "client.services[0].alpn[0]", 'list "h2"'),
    (['tls-mode = "terminate"', 'alpn = ["acme-tls/1"]'], "client.services[0].alpn[0]", "ACME"),
])
def test_bad_alpn_is_a_config_error_naming_the_key(write, env, lines, key, message):
    path = write(client(lines))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == key, e.value
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in e.value.message


def test_client_start_with_alpn_on_passthrough_exits_2_with_one_line(write):
    path = write(client(['alpn = ["h2"]']))
    proc = run_cli("client", "-c", path, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f'error: {path}: client.services[0].alpn: only allowed with tls-mode = "terminate" (in passthrough '
        "the Local backend agrees ALPN with the Visitor)"]
