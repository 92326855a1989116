"""`[[client.services]] proxy-protocol`: off by default, "v1" or "v2", in both TLS modes;
anything else is one error naming the key (exit 2 through the CLI)."""

import pytest

from runewarp.config import load_client_config
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import BACKEND, HOSTS_A, HOSTS_B, TERMINATE, _client_with, _service


def services(write, env, *entries):
    text = _client_with("", "\n".join(_service(*lines) for lines in entries))
    return load_client_config(write(text), env=env).services


def test_off_by_default(write, env):
    assert services(write, env, (HOSTS_A, BACKEND))[0].proxy_protocol is None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_each_version_in_each_mode(write, env, version):
    key = f'proxy-protocol = "{version}"'
    passthrough, terminate = services(write, env, (HOSTS_A, BACKEND, key), (HOSTS_B, BACKEND, TERMINATE, key))
    assert (passthrough.tls_mode, passthrough.proxy_protocol) == ("passthrough", version)
    assert (terminate.tls_mode, terminate.proxy_protocol) == ("terminate", version)


def test_per_service(write, env):
    first, second = services(write, env, (HOSTS_A, BACKEND, 'proxy-protocol = "v2"'), (HOSTS_B, BACKEND))
    assert (first.proxy_protocol, second.proxy_protocol) == ("v2", None)


def test_catch_all_may_send_it(write, env):
    text = _client_with(services=_service(BACKEND, 'proxy-protocol = "v1"'))
    assert load_client_config(write(text), env=env).services[0].proxy_protocol == "v1"


@pytest.mark.parametrize("value, message", [
    ('"v3"', "must be one of v1, v2; got 'v3'"),
    ('"V2"', "must be one of v1, v2; got 'V2'"),
    ('"2"', "must be one of v1, v2; got '2'"),
    ('""', "must not be empty"),
    ("2", "expected a string, got an integer"),
    ("true", "expected a string, got a boolean"),
    ('["v1"]', "expected a string, got an array"),
])
def test_bad_values_name_the_key(write, env, value, message):
    with pytest.raises(ConfigError) as e:
        services(write, env, (HOSTS_A, BACKEND), (HOSTS_B, BACKEND, f"proxy-protocol = {value}"))
    assert (e.value.key, e.value.message) == ("client.services[1].proxy-protocol", message)


def test_a_misspelling_gets_a_suggestion(write, env):
    with pytest.raises(ConfigError) as e:
        services(write, env, (HOSTS_A, BACKEND, 'proxy_protocol = "v2"'))
    assert e.value.key == "client.services[0].proxy_protocol"
    assert e.value.message == "unknown key; did you mean 'proxy-protocol'?"


def test_the_cli_exits_2_with_one_line_naming_file_and_key(write, home):
    path = write(_client_with(services=_service(HOSTS_A, BACKEND, 'proxy-protocol = "v3"')))
    proc = run_cli("client", "-c", path, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                   check=False, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: client.services[0].proxy-protocol: must be one of v1, v2; got 'v3'"]
