"""`[client] server-name`: the TLS name of the Server, apart from where the Client dials."""

import pytest

from runewarp.config import load_client_config
from runewarp.errors import ConfigError

from .conftest import run_cli

SERVICE = '[[client.services]]\nbackend-address = "127.0.0.1:8443"\n'


def client(lines):
    return "[client]\n" + "\n".join(lines) + "\n" + SERVICE


def test_without_server_name_the_host_is_the_tls_name(write, env):
    config = load_client_config(write(client(['server-address = "tunnel.example.com:8443"'])), env=env)
    assert config.server_name is None
    assert config.tls_name(config.server_addresses[0]) == "tunnel.example.com"


@pytest.mark.parametrize("address, dialed", [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("[::1]:8443", ("::1", 8443)),
    ("192.0.2.7", ("192.0.2.7", 443)),
    ("lb.example.net:443", ("lb.example.net", 443)),
])
def test_server_name_lets_the_address_be_an_ip_or_another_name(write, env, address, dialed):
    path = write(client([f'server-address = "{address}"', 'server-name = "Tunnel.Example.COM."']))
    config = load_client_config(path, env=env)
    assert config.server_addresses == (dialed,)
    assert config.server_name == "tunnel.example.com"  # normalized like every hostname
    assert config.tls_name(config.server_addresses[0]) == "tunnel.example.com"


def test_server_name_applies_to_the_command_line_address(write, env):
    path = write(client(['server-address = "tunnel.example.com"', 'server-name = "tunnel.example.com"']))
    config = load_client_config(path, overrides={"server-address": "127.0.0.1:9443"}, env=env)
    assert config.server_addresses == (("127.0.0.1", 9443),)
    assert config.tls_name(("127.0.0.1", 9443)) == "tunnel.example.com"


@pytest.mark.parametrize("value, message", [
    ('"127.0.0.1"', "IP address"),
    ('"[::1]"', ""),
    ('"bad_host"', "underscores"),
    ('""', "must not be empty"),
    ("443", "expected a string"),
])
def test_bad_server_name_is_a_config_error_naming_the_key(write, env, value, message):
    path = write(client(['server-address = "127.0.0.1:8443"', f"server-name = {value}"]))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.server-name", e.value
    assert str(e.value).startswith(f"{path}: client.server-name: ")
    assert message in e.value.message


def test_ip_address_without_server_name_points_to_it(write, env):
    path = write(client(['server-address = "127.0.0.1:8443"']))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.server-address"
    assert "unless client.server-name names the Server" in e.value.message


@pytest.mark.parametrize("address, message", [
    ("[192.0.2.1]:443", "only IPv6 addresses go in brackets"),
    ("::1", "brackets"),
])
def test_ip_address_spelling_is_still_checked(write, env, address, message):
    path = write(client([f'server-address = "{address}"', 'server-name = "tunnel.example.com"']))
    with pytest.raises(ConfigError, match=message) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.server-address"


def test_client_start_with_a_bad_server_name_exits_2_with_one_line(write):
    path = write(client(['server-address = "127.0.0.1:8443"', 'server-name = "127.0.0.1"']))
    proc = run_cli("client", "-c", path, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: client.server-name: '127.0.0.1': all-numeric last label looks like an "
        "IP address"]
