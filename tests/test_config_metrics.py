"""`[server.metrics]` / `[client.metrics]` and `access-log`: defaults, values, errors."""

import pytest

from runewarp.config import MetricsConfig, load_client_config, load_server_config
from runewarp.errors import ConfigError

from .test_config import _client_with, _server_with

LOADERS = {"server": (load_server_config, _server_with), "client": (load_client_config, _client_with)}


@pytest.mark.parametrize("role", LOADERS)
def test_no_table_means_no_listener_and_access_log_on(write, env, role):
    load, text = LOADERS[role]
    config = load(write(text()), env=env)
    assert config.metrics is None and config.access_log is True


@pytest.mark.parametrize("role", LOADERS)
def test_every_key(write, env, role):
    load, text = LOADERS[role]
    config = load(write(text(f'access-log = false\n[{role}.metrics]\nbind-address = "[::1]:0"\n'
                             f'statsd-address = "localhost:8125"\nstatsd-prefix = "edge.eu-1"\n'
                             f'statsd-interval = 2.5\n')), env=env)
    assert config.access_log is False
    assert config.metrics == MetricsConfig(bind_address=("::1", 0), statsd_address=("localhost", 8125),
                                           statsd_prefix="edge.eu-1", statsd_interval=2.5)


@pytest.mark.parametrize("role", LOADERS)
def test_an_empty_table_has_the_defaults(write, env, role):
    load, text = LOADERS[role]
    assert load(write(text(f"[{role}.metrics]\n")), env=env).metrics == MetricsConfig()


ERRORS = [
    ('bind-address = "localhost:9464"', "bind-address", "must be a literal IP address"),
    ('bind-address = "::1:9464"', "bind-address", "brackets"),
    ('bind-address = 9464', "bind-address", "expected a string"),
    ('statsd-address = "statsd"', "statsd-address", "port"),
    ('statsd-address = "statsd:0"', "statsd-address", "1"),
    ('statsd-prefix = "run warp"', "statsd-prefix", "use 1-64 of"),
    ('statsd-prefix = ""', "statsd-prefix", "must not be empty"),
    ('statsd-interval = 0', "statsd-interval", "more than 0"),
    ('statsd-interval = "10s"', "statsd-interval", "expected a number of seconds"),
    ('bind-adress = "127.0.0.1:9464"', "bind-adress", "did you mean 'bind-address'"),
]


@pytest.mark.parametrize("role", LOADERS)
@pytest.mark.parametrize("line, key, message", ERRORS)
def test_errors_name_the_key(write, env, role, line, key, message):
    load, text = LOADERS[role]
    path = write(text(f"[{role}.metrics]\n{line}\n"))
    with pytest.raises(ConfigError) as e:
        load(path, env=env)
    assert e.value.key == f"{role}.metrics.{key}", e.value
    assert message in e.value.message, e.value


@pytest.mark.parametrize("role", LOADERS)
def test_access_log_must_be_a_boolean(write, env, role):
    load, text = LOADERS[role]
    with pytest.raises(ConfigError) as e:
        load(write(text('access-log = "no"')), env=env)
    assert e.value.key == f"{role}.access-log"
