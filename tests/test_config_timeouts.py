"""`[server.timeouts]` / `[client.timeouts]`: defaults, every key, bad values, the cross-key rule."""

import pytest

from runewarp.config import load_client_config, load_server_config
from runewarp.config.model import ClientTimeouts, ServerTimeouts
from runewarp.config.schema import names
from runewarp.errors import ConfigError

from .conftest import run_cli
from .test_config import _client_with, _server_with

LOADERS = {"server": (load_server_config, _server_with), "client": (load_client_config, _client_with)}
KEYS = {"server": ("client-hello", "tunnel-handshake", "control-hello", "keepalive-interval", "dead-peer"),
        "client": ("tunnel-handshake", "backend-connect", "keepalive-interval", "dead-peer")}


def load(write, env, role, body):
    loader, text = LOADERS[role]
    return loader(write(text(f"[{role}.timeouts]\n{body}\n")), env=env)


def test_the_key_table_has_exactly_these_keys():
    assert {role: names(f"{role}.timeouts") for role in KEYS} == KEYS


def test_defaults_without_the_table(write, env):
    server = load_server_config(write(_server_with()), env=env).timeouts
    client = load_client_config(write(_client_with()), env=env).timeouts
    assert server == ServerTimeouts(client_hello=5.0, tunnel_handshake=5.0, control_hello=10.0,
                                    keepalive_interval=20.0, dead_peer=60.0)
    assert client == ClientTimeouts(tunnel_handshake=10.0, backend_connect=5.0,
                                    keepalive_interval=20.0, dead_peer=60.0)


@pytest.mark.parametrize("role", LOADERS)
def test_an_empty_table_has_the_defaults(write, env, role):
    assert load(write, env, role, "").timeouts == {"server": ServerTimeouts, "client": ClientTimeouts}[role]()


@pytest.mark.parametrize("role, key", [(role, key) for role, keys in KEYS.items() for key in keys])
def test_each_key_is_read(write, env, role, key):
    # dead-peer stays above the default keepalive-interval (20 s) and vice versa.
    value = 45.5 if key in ("dead-peer", "keepalive-interval") else 2.5
    timeouts = load(write, env, role, f"{key} = {value}").timeouts
    assert getattr(timeouts, key.replace("-", "_")) == value
    assert type(getattr(timeouts, key.replace("-", "_"))) is float


def test_an_integer_is_seconds(write, env):
    assert load(write, env, "server", "client-hello = 3").timeouts.client_hello == 3.0


BAD = [
    ("0", "must be more than 0 seconds; got 0"),
    ("0.0", "must be more than 0 seconds; got 0"),
    ("-1", "must be a finite number of seconds >= 0; got -1"),
    ("inf", "must be a finite number of seconds >= 0; got inf"),
    ("nan", "must be a finite number of seconds >= 0; got nan"),
    ('"5s"', "expected a number of seconds, got a string"),
    ("true", "expected a number of seconds, got a boolean"),
]


@pytest.mark.parametrize("value, message", BAD)
@pytest.mark.parametrize("role, key", [(role, key) for role, keys in KEYS.items() for key in keys])
def test_bad_values_name_the_key(write, env, role, key, value, message):
    with pytest.raises(ConfigError) as e:
        load(write, env, role, f"{key} = {value}")
    assert e.value.key == f"{role}.timeouts.{key}", e.value
    assert e.value.message == message


@pytest.mark.parametrize("role", LOADERS)
@pytest.mark.parametrize("body", ["dead-peer = 20", "dead-peer = 10",
                                  "keepalive-interval = 60", "keepalive-interval = 30\ndead-peer = 30"])
def test_dead_peer_must_be_longer_than_the_keepalive_interval(write, env, role, body):
    with pytest.raises(ConfigError) as e:
        load(write, env, role, body)
    assert e.value.key == f"{role}.timeouts.dead-peer"
    assert e.value.message.startswith("must be more than keepalive-interval (")


@pytest.mark.parametrize("role", LOADERS)
def test_dead_peer_just_above_the_interval_is_accepted(write, env, role):
    timeouts = load(write, env, role, "keepalive-interval = 1\ndead-peer = 1.5").timeouts
    assert (timeouts.keepalive_interval, timeouts.dead_peer) == (1.0, 1.5)


@pytest.mark.parametrize("role, wrong, hint", [
    ("server", "client-helo", "client-hello"),
    ("server", "backend-connect", None),  # a Client key in the Server's table
    ("client", "client-hello", None),  # and a Server key in the Client's
    ("client", "dead-peers", "dead-peer"),
])
def test_unknown_keys(write, env, role, wrong, hint):
    with pytest.raises(ConfigError) as e:
        load(write, env, role, f"{wrong} = 5")
    assert e.value.key == f"{role}.timeouts.{wrong}"
    assert e.value.message.startswith("unknown key")
    if hint:
        assert e.value.message == f"unknown key; did you mean {hint!r}?"


@pytest.mark.parametrize("role", LOADERS)
def test_not_a_table(write, env, role):
    loader, text = LOADERS[role]
    with pytest.raises(ConfigError) as e:
        loader(write(text("timeouts = 5")), env=env)
    assert (e.value.key, e.value.message) == (f"{role}.timeouts", "expected a table, got an integer")


def test_the_stream_timeouts_stay_in_limits(write, env):
    """Old configs keep working: the stream timers did not move to [timeouts]."""
    config = load_server_config(write(_server_with("[server.limits]\nstream-idle-timeout = 120\n")), env=env)
    assert config.limits.stream_idle_timeout == 120.0
    with pytest.raises(ConfigError) as e:
        load(write, env, "server", "stream-idle-timeout = 120")
    assert e.value.key == "server.timeouts.stream-idle-timeout"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", LOADERS)
def test_the_daemon_refuses_a_bad_value_with_one_line_and_exit_2(write, env, role):
    path = write(LOADERS[role][1](f"[{role}.timeouts]\nkeepalive-interval = 30\ndead-peer = 25\n"))
    proc = run_cli(role, "-c", path, env=env, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {path}: {role}.timeouts.dead-peer: must be more than keepalive-interval (30 s); got 25"]
