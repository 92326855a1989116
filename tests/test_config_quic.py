"""The Client's QUIC keys: `[[client.services]] quic-backend-address` and `[client]
quic-idle-timeout` (docs/configuration.md, docs/quic.md)."""

import pytest

from runewarp.config import load_client_config
from runewarp.config.render import render
from runewarp.errors import ConfigError

from .conftest import run_cli

HEAD = '[client]\nserver-address = "tunnel.example.com:8443"\n'


def client(*services, settings=""):
    """One `[[client.services]]` per tuple of lines, hostnames a.example.com, b.example.com, …"""
    return HEAD + settings + "".join(
        f'\n[[client.services]]\npublic-hostnames = ["{chr(97 + i)}.example.com"]\n'
        f'backend-address = "127.0.0.1:{8000 + i}"\n' + "".join(f"{line}\n" for line in lines)
        for i, lines in enumerate(services))


def test_quic_backend_address_is_read_per_service_and_unset_means_no_quic(write, env):
    config = load_client_config(write(client(['quic-backend-address = "127.0.0.1:8443"'],
                                             ['quic-backend-address = "[::1]:443"'],
                                             ['quic-backend-address = "Backend.Internal:4433"'],
                                             [])), env=env)
    assert [s.quic_backend_address for s in config.services] == [
        ("127.0.0.1", 8443), ("::1", 443), ("backend.internal", 4433), None]
    assert config.quic_idle_timeout == 30.0


def test_a_sole_catch_all_service_may_take_quic(write, env):
    text = HEAD + '\n[[client.services]]\nbackend-address = "127.0.0.1:443"\nquic-backend-address = "127.0.0.1:443"\n'
    service, = load_client_config(write(text), env=env).services
    assert service.is_catch_all and service.quic_backend_address == ("127.0.0.1", 443)


def test_quic_idle_timeout_is_read(write, env):
    config = load_client_config(write(client([], settings="quic-idle-timeout = 2.5\n")), env=env)
    assert config.quic_idle_timeout == 2.5


def test_config_show_writes_the_keys_and_they_load_back(write, env):
    path = write(client(['quic-backend-address = "[::1]:8443"'], [], settings="quic-idle-timeout = 12\n"))
    config = load_client_config(path, env=env)
    text = render("client", config)
    assert 'quic-backend-address = "[::1]:8443"' in text
    assert "# quic-backend-address = unset" in text
    assert "quic-idle-timeout = 12" in text
    shown = load_client_config(write(text, "shown.toml"), env=env)
    assert shown.services == config.services and shown.quic_idle_timeout == 12


@pytest.mark.parametrize("lines, key, message", [
    (['tls-mode = "terminate"', 'quic-backend-address = "127.0.0.1:8443"'],
     "client.services[0].quic-backend-address", 'not with tls-mode = "terminate"'),
    (['quic-backend-address = "127.0.0.1"'], "client.services[0].quic-backend-address", "missing ':port'"),
    (['quic-backend-address = "127.0.0.1:0"'], "client.services[0].quic-backend-address", "out of range 1-65535"),
    (['quic-backend-address = "::1:443"'], "client.services[0].quic-backend-address", "brackets"),
    (['quic-backend-address = "bad_host:443"'], "client.services[0].quic-backend-address", "bad_host"),
    (["quic-backend-address = 8443"], "client.services[0].quic-backend-address", "expected a string"),
])
def test_bad_quic_backend_address_is_a_config_error_naming_the_key(write, env, lines, key, message):
    path = write(client(lines))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == key, e.value
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert message in e.value.message


@pytest.mark.parametrize("value, message", [
    ("0", "must be more than 0 seconds"),
    ("-1", "seconds >= 0"),
    ('"30"', "expected"),
    ("inf", "finite"),
])
def test_bad_quic_idle_timeout_is_a_config_error_naming_the_key(write, env, value, message):
    path = write(client([], settings=f"quic-idle-timeout = {value}\n"))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.quic-idle-timeout", e.value
    assert message in e.value.message


def test_client_start_with_quic_on_a_terminate_service_exits_2_with_one_line(write):
    path = write(client(['tls-mode = "terminate"', 'quic-backend-address = "127.0.0.1:8443"']))
    for args in (["client", "-c", path], ["config", "check", "client", "-c", path]):
        proc = run_cli(*args, check=False, timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.splitlines() == [
            f'error: {path}: client.services[0].quic-backend-address: not with tls-mode = "terminate" '
            "(the Client relays QUIC to the Local backend, which completes the Visitor's handshake "
            "itself)"], args
