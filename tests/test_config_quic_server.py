"""`[server] public-quic` and `quic-idle-timeout`: defaults, values, bad values."""

import pytest

from runewarp.config import load_server_config
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import _server_with


def load(write, env, body=""):
    return load_server_config(write(_server_with(body)), env=env)


def test_defaults(write, env):
    config = load(write, env)
    assert (config.public_quic, config.quic_idle_timeout) == (False, 30.0)


def test_values_are_read(write, env):
    config = load(write, env, "public-quic = true\nquic-idle-timeout = 2.5")
    assert (config.public_quic, config.quic_idle_timeout) == (True, 2.5)
    assert load(write, env, "quic-idle-timeout = 3600").quic_idle_timeout == 3600.0


@pytest.mark.parametrize("body, key, message", [
    ('public-quic = "yes"', "server.public-quic", "expected true or false, got a string"),
    ("public-quic = 1", "server.public-quic", "expected true or false, got an integer"),
    ("quic-idle-timeout = 0.5", "server.quic-idle-timeout", "must be between 1 and 3600 seconds; got 0.5"),
    ("quic-idle-timeout = 3601", "server.quic-idle-timeout", "must be between 1 and 3600 seconds; got 3601"),
    ("quic-idle-timeout = -1", "server.quic-idle-timeout", "must be a finite number of seconds >= 0; got -1"),
    ('quic-idle-timeout = "30s"', "server.quic-idle-timeout", "expected a number of seconds, got a string"),
])
def test_bad_values_name_the_key(write, env, body, key, message):
    with pytest.raises(ConfigError) as e:
        load(write, env, body)
    assert (e.value.key, e.value.message) == (key, message)


@pytest.mark.timeout(60)
def test_the_daemon_refuses_a_bad_value_with_one_line_and_exit_2(write, env):
    path = write(_server_with("quic-idle-timeout = 0"))
    proc = run_cli("server", "-c", path, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: server.quic-idle-timeout: must be between 1 and 3600 seconds; got 0"]
