"""`[client] connections-per-server` and `resolve-interval`: defaults, values, bad values."""

import pytest

from runewarp.config import load_client_config
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import _client_with


def load(write, env, extra):
    return load_client_config(write(_client_with(extra)), env=env)


def test_defaults(write, env):
    config = load(write, env, "")
    assert config.connections_per_server == 1 and config.resolve_interval == 60.0


def test_values_are_read(write, env):
    config = load(write, env, "connections-per-server = 16\nresolve-interval = 0.5")
    assert config.connections_per_server == 16 and config.resolve_interval == 0.5


@pytest.mark.parametrize("line, key, message", [
    ("connections-per-server = 0", "connections-per-server", "must be at least 1; got 0"),
    ("connections-per-server = 17", "connections-per-server", "must be at most 16; got 17"),
    ("connections-per-server = 2.0", "connections-per-server", "expected an integer, got a number"),
    ('connections-per-server = "2"', "connections-per-server", "expected an integer, got a string"),
    ("resolve-interval = 0", "resolve-interval", "must be more than 0 seconds; got 0"),
    ("resolve-interval = -5", "resolve-interval", "must be a finite number of seconds >= 0; got -5"),
    ('resolve-interval = "60s"', "resolve-interval", "expected a number of seconds, got a string"),
])
def test_bad_values_name_the_key(write, env, line, key, message):
    with pytest.raises(ConfigError) as e:
        load(write, env, line)
    assert e.value.key == f"client.{key}" and e.value.message == message


def test_the_command_line_says_it_in_one_line_and_exits_2(write, env):
    path = write(_client_with("connections-per-server = 17"))
    proc = run_cli("client", "-c", path, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {path}: client.connections-per-server: "
                                   "must be at most 16; got 17")
