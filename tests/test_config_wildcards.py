"""Wildcard Public hostnames in the config: the one accepted shape, and an error naming the
key for every other (docs/configuration.md, "Wildcard Public hostnames")."""

import pytest

from runewarp.config import load_client_config, load_server_config
from runewarp.errors import ConfigError

from .conftest import run_cli

ID1 = "0123456789abcdef" * 4
ID2 = "fedcba9876543210" * 4


def server(*tunnels, hostname="tunnel.example.net"):
    text = f'[server]\nhostname = "{hostname}"\n'
    for i, hosts in enumerate(tunnels):
        names = ", ".join(f'"{h}"' for h in hosts)
        text += f'[[server.tunnels]]\npublic-hostnames = [{names}]\nclient-identity = "{(ID1, ID2)[i]}"\n'
    return text


def client(*services, head=""):
    text = f'[client]\nserver-address = "tunnel.example.net"\n{head}'
    for i, (hosts, mode) in enumerate(services):
        names = ", ".join(f'"{h}"' for h in hosts)
        text += (f'[[client.services]]\npublic-hostnames = [{names}]\n'
                 f'backend-address = "127.0.0.1:{8000 + i}"\ntls-mode = "{mode}"\n')
    return text


def test_a_wildcard_is_normalized_like_a_hostname(write, env):
    config = load_server_config(write(server(["*.Example.COM.", "a.example.com"])), env=env)
    assert config.tunnels[0].public_hostnames == ("*.example.com", "a.example.com")
    snapshot = config.routing_snapshot()
    assert snapshot.tunnel_for_hostname("b.example.com").name == "tunnel-1"


def test_a_wildcard_and_exact_names_under_it_in_other_tunnels_or_services_are_allowed(write, env):
    config = load_server_config(write(server(["*.example.com"], ["a.example.com"])), env=env)
    snapshot = config.routing_snapshot()
    assert snapshot.tunnel_for_hostname("a.example.com").name == "tunnel-2"
    assert snapshot.tunnel_for_hostname("b.example.com").name == "tunnel-1"
    config = load_client_config(write(client((["*.example.com"], "passthrough"),
                                              (["a.example.com"], "passthrough"))), env=env)
    assert [s.public_hostnames for s in config.services] == [("*.example.com",), ("a.example.com",)]


BAD_SHAPES = [
    ("*", "a wildcard is '*.' and a hostname"),
    ("*.com", "at least two labels"),
    ("*.", "after '*.'"),
    ("a.*.example.com", "the '*' is the whole first label"),
    ("*foo.example.com", "the '*' is the whole first label"),
    ("foo*.example.com", "the '*' is the whole first label"),
    ("**.example.com", "the '*' is the whole first label"),
    ("*.*.example.com", "the '*' is the whole first label"),
    ("*.exa_mple.com", "underscores"),
    ("*.example.com:443", "IP literals"),
]


@pytest.mark.parametrize("value, message", BAD_SHAPES)
def test_a_bad_wildcard_in_a_tunnel_names_the_key(write, env, value, message):
    path = write(server(["a.example.com", value]))
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.key == "server.tunnels[0].public-hostnames[1]", e.value
    assert message in e.value.message, e.value


@pytest.mark.parametrize("value, message", BAD_SHAPES)
def test_a_bad_wildcard_in_a_service_names_the_key(write, env, value, message):
    path = write(client((["a.example.com"], "passthrough"), (["b.example.com", value], "passthrough")))
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.services[1].public-hostnames[1]", e.value
    assert message in e.value.message, e.value


def test_the_server_hostname_is_never_a_wildcard(write, env):
    path = write(server(["a.example.com"], hostname="*.example.net"))
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.key == "server.hostname"
    assert "wildcards are not allowed here" in e.value.message


@pytest.mark.parametrize("text, key, message", [
    (server(["*.example.com"], ["*.EXAMPLE.com."]), "server.tunnels[1].public-hostnames[0]",
     "'*.example.com' is already listed at server.tunnels[0].public-hostnames[0]"),
    (client((["*.example.com"], "passthrough"), (["*.example.com"], "terminate"),
            head='public-cert-dir = "/pc"\n'),
     "client.services[1].public-hostnames[0]",
     "'*.example.com' is already listed at client.services[0].public-hostnames[0]"),
])
def test_the_same_wildcard_twice_is_an_overlap(write, env, text, key, message):
    path = write(text)
    with pytest.raises(ConfigError) as e:
        (load_server_config if text.startswith("[server]") else load_client_config)(path, env=env)
    assert e.value.key == key, e.value
    assert message in e.value.message, e.value


def test_a_wildcard_over_the_server_hostname_names_both_keys(write, env):
    path = write(server(["app.example.net"], ["*.example.net"]))
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.key == "server.tunnels[1].public-hostnames[0]"
    assert "covers the Server hostname 'tunnel.example.net' (server.hostname)" in e.value.message
    # One label deeper is not covered: *.example.net takes x.example.net only.
    config = load_server_config(write(server(["*.example.net"], hostname="tunnel.edge.example.net")), env=env)
    assert config.routing_snapshot().tunnel_for_hostname("tunnel.edge.example.net") is None


def test_a_wildcard_terminate_service_cannot_use_acme(write, env):
    acme = '[client.acme]\nemail = "ops@example.com"\n'
    path = write(client((["a.example.com"], "terminate"), (["b.example.com", "*.example.com"], "terminate"))
                 + acme)
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.key == "client.services[1].public-hostnames[1]"
    assert "TLS-ALPN-01, which cannot issue wildcard certificates" in e.value.message
    assert "runewarp client public-cert init --hostname '*.example.com'" in e.value.message
    # A wildcard passthrough Service beside an ACME terminate Service is fine: ACME never sees it.
    load_client_config(write(client((["a.example.com"], "terminate"), (["*.example.com"], "passthrough"))
                             + acme), env=env)


@pytest.mark.parametrize("value", ["*", "*.com", "a.*.example.com", "*foo.example.com"])
def test_config_check_exits_2_with_one_line_naming_the_key(write, value):
    path = write(server(["a.example.com", value]))
    proc = run_cli("config", "check", "server", "-c", path, check=False, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}: server.tunnels[0].public-hostnames[1]: '{value}': ")
