"""`[server.limits] retries` and `retry-buffer`: defaults, values, bad values."""

import pytest

from runewarp.config import load_server_config
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import _server_with


def load(write, env, extra):
    return load_server_config(write(_server_with(f"[server.limits]\n{extra}")), env=env)


def test_defaults(write, env):
    limits = load(write, env, "").limits
    assert (limits.retries, limits.retry_buffer) == (2, 64 * 1024)


@pytest.mark.parametrize("extra, retries, buffer", [
    ("retries = 0", 0, 64 * 1024),
    ("retries = 5\nretry-buffer = 1024", 5, 1024),
    ("retry-buffer = 131072", 2, 131072),
])
def test_values_are_read(write, env, extra, retries, buffer):
    limits = load(write, env, extra).limits
    assert (limits.retries, limits.retry_buffer) == (retries, buffer)


@pytest.mark.parametrize("line, key, message", [
    ("retries = -1", "retries", "must be at least 0; got -1"),
    ("retries = 6", "retries", "must be at most 5; got 6"),
    ('retries = "2"', "retries", "expected an integer, got a string"),
    ("retry-buffer = 0", "retry-buffer", "must be at least 1; got 0"),
    ("retry-buffer = 1023", "retry-buffer", "must be at least 1024 bytes; got 1023"),
    ("retry-buffer = 131073", "retry-buffer", "must be at most 131072; got 131073"),
])
def test_bad_values_name_the_key(write, env, line, key, message):
    with pytest.raises(ConfigError) as e:
        load(write, env, line)
    assert e.value.key == f"server.limits.{key}" and e.value.message == message


def test_the_command_line_says_it_in_one_line_and_exits_2(write, env):
    path = write(_server_with("[server.limits]\nretries = 6"))
    proc = run_cli("server", "-c", path, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: server.limits.retries: must be at most 5; got 6"
