"""`[client] unhealthy-after` and a Service's `health-check`: defaults, values, and one-line
errors that name the key (exit 2 from the command line)."""

import pytest

from runewarp.config import load_client_config
from runewarp.config.model import HealthCheck
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import BACKEND, HOSTS_A, _client_with, _service

KEY = "client.services[0].health-check"


def load(write, env, client_extra="", *service_lines):
    services = _service(HOSTS_A, BACKEND, *service_lines)
    return load_client_config(write(_client_with(client_extra, services)), env=env)


def test_defaults(write, env):
    config = load(write, env)
    assert config.unhealthy_after == 3
    assert config.services[0].health_check is None  # passive only


def test_values_are_read(write, env):
    config = load(write, env, "unhealthy-after = 1",
                  'health-check = { interval = 1.5, timeout = 1, kind = "tls" }')
    assert config.unhealthy_after == 1
    assert config.services[0].health_check == HealthCheck(1.5, 1.0, "tls")
    assert load(write, env, "", "health-check = {}").services[0].health_check == \
        HealthCheck(5.0, 2.0, "tcp")
    sub_table = load(write, env, "", "[client.services.health-check]", "interval = 3")
    assert sub_table.services[0].health_check == HealthCheck(3.0, 2.0, "tcp")


@pytest.mark.parametrize("client_extra, lines, key, message", [
    ("unhealthy-after = 0", (), "client.unhealthy-after", "must be at least 1; got 0"),
    ('unhealthy-after = "3"', (), "client.unhealthy-after", "expected an integer, got a string"),
    ("unhealthy-after = 2.5", (), "client.unhealthy-after", "expected an integer, got a number"),
    ("", ("health-check = 5",), KEY, "expected a table, got an integer"),
    ("", ('health-check = { kind = "http" }',), f"{KEY}.kind",
     "must be one of tcp, tls; got 'http'"),
    ("", ("health-check = { interval = 0 }",), f"{KEY}.interval",
     "must be more than 0 seconds; got 0"),
    ("", ("health-check = { timeout = -1 }",), f"{KEY}.timeout",
     "must be a finite number of seconds >= 0; got -1"),
    ("", ("health-check = { interval = 1 }",), f"{KEY}.timeout",
     "must be at most interval (1 s); got 2"),
    ("", ("health-check = { intervall = 1 }",), f"{KEY}.intervall",
     "unknown key; did you mean 'interval'?"),
    ("", ('tls-mode = "terminate"', 'health-check = { kind = "tls" }'), f"{KEY}.kind",
     '"tls" only with tls-mode = "passthrough" (a terminate Service\'s Local backend speaks '
     'plaintext); use "tcp"'),
])
def test_bad_values_name_the_key(write, env, client_extra, lines, key, message):
    with pytest.raises(ConfigError) as e:
        load(write, env, client_extra, *lines)
    assert (e.value.key, e.value.message) == (key, message)


def test_the_command_line_says_it_in_one_line_and_exits_2(write, env):
    path = write(_client_with("", _service(HOSTS_A, BACKEND, 'health-check = { kind = "udp" }')))
    result = run_cli("config", "check", "-c", path, env=env, check=False)
    assert result.returncode == 2
    assert result.stderr == (f"error: {path}: {KEY}.kind: must be one of tcp, tls; "
                             "got 'udp'\n")
