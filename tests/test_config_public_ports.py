"""`public-bind-addresses` and per-Tunnel `public-ports`: what loads, and an error naming
the key for every bad shape."""

import pytest

from runewarp.config import load_server_config
from runewarp.config.addresses import shares_port
from runewarp.errors import ConfigError

from .conftest import run_cli

ID1 = "0123456789abcdef" * 4
ID2 = "fedcba9876543210" * 4


THREE = 'public-bind-addresses = ["0.0.0.0:443", "[::]:443", "0.0.0.0:8443"]'


def server(bind, *tunnels):
    text = f'[server]\nhostname = "tunnel.example.com"\n{bind}\n'
    for i, (hosts, ports) in enumerate(tunnels or [(["app.example.com"], None)]):
        names = ", ".join(f'"{h}"' for h in hosts)
        text += f'[[server.tunnels]]\npublic-hostnames = [{names}]\nclient-identity = "{(ID1, ID2)[i]}"\n'
        if ports is not None:
            text += f"public-ports = {ports}\n"
    return text


def test_several_public_bind_addresses_and_ports_per_tunnel(write, env):
    path = write(server(THREE, (["app.example.com"], "[8443]"), (["app.example.com", "b.example.com"], "[443]")))
    config = load_server_config(path, env=env)
    assert config.public_bind_addresses == (("0.0.0.0", 443), ("::", 443), ("0.0.0.0", 8443))
    assert [t.public_ports for t in config.tunnels] == [(8443,), (443,)]
    snapshot = config.routing_snapshot()
    assert snapshot.tunnel_for_hostname("app.example.com", 8443).name == "tunnel-1"
    assert snapshot.tunnel_for_hostname("app.example.com", 443).name == "tunnel-2"
    assert snapshot.tunnel_for_hostname("b.example.com", 8443) is None


def test_the_single_address_is_a_list_of_one(write, env):
    config = load_server_config(write(server('public-bind-address = "127.0.0.1:8443"')), env=env)
    assert config.public_bind_addresses == (("127.0.0.1", 8443),)
    assert config.tunnels[0].public_ports is None


BIND = 'public-bind-addresses = ["0.0.0.0:443", "0.0.0.0:8443"]'


@pytest.mark.parametrize("text, key, message", [
    (server('public-bind-address = "0.0.0.0:443"\npublic-bind-addresses = ["0.0.0.0:8443"]'),
     "server.public-bind-addresses", "use either public-bind-address or public-bind-addresses, not both"),
    (server("public-bind-addresses = []"), "server.public-bind-addresses", "must not be empty"),
    (server('public-bind-addresses = "0.0.0.0:443"'), "server.public-bind-addresses",
     "expected an array of strings"),
    (server('public-bind-addresses = ["0.0.0.0:443", "example.com:443"]'), "server.public-bind-addresses[1]",
     "literal IP address"),
    (server('public-bind-addresses = ["0.0.0.0:443", "0.0.0.0:443"]'), "server.public-bind-addresses[1]",
     "'0.0.0.0:443' is already listed at server.public-bind-addresses[0]"),
    (server(BIND + '\ntunnel-bind-address = "0.0.0.0:8443"'), "server.tunnel-bind-address",
     "shares a port with public-bind-addresses"),
    (server(BIND, (["a.example.com"], "[9443]")), "server.tunnels[0].public-ports[0]",
     "9443 is not the port of a public bind address (server.public-bind-addresses has 443, 8443)"),
    (server(BIND, (["a.example.com"], "[443, 443]")), "server.tunnels[0].public-ports[1]", "listed twice"),
    (server(BIND, (["a.example.com"], "[]")), "server.tunnels[0].public-ports", "non-empty array"),
    (server(BIND, (["a.example.com"], '"443"')), "server.tunnels[0].public-ports", "non-empty array"),
    (server(BIND, (["a.example.com"], '["443"]')), "server.tunnels[0].public-ports[0]",
     "expected a port number, got a string"),
    (server(BIND, (["a.example.com"], None), (["a.example.com"], "[443]")), "server.tunnels[1].public-hostnames[0]",
     "'a.example.com' is already listed at server.tunnels[0].public-hostnames[0]; the same hostname in two "
     "Tunnels needs public-ports on both"),
    (server(BIND, (["a.example.com"], "[443, 8443]"), (["*.example.net", "a.example.com"], "[8443]")),
     "server.tunnels[1].public-hostnames[1]",
     "'a.example.com' is already listed at server.tunnels[0].public-hostnames[0] for port 8443; give the two "
     "Tunnels disjoint public-ports"),
])
def test_bad_ports_name_the_key(write, env, text, key, message):
    path = write(text)
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.key == key, e.value
    assert message in e.value.message, e.value


def test_config_check_exits_2_naming_the_key(write):
    path = write(server(BIND, (["a.example.com"], "[9443]")))
    proc = run_cli("config", "check", "server", "-c", path, check=False, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {path}: server.tunnels[0].public-ports[0]: 9443 is not the port of a public bind address "
        "(server.public-bind-addresses has 443, 8443)"]


@pytest.mark.parametrize("a, b, shared", [
    (("0.0.0.0", 443), ("127.0.0.1", 443), True),   # a wildcard takes every address of its family
    (("::", 443), ("127.0.0.1", 443), True),        # `::` is dual-stack
    (("0.0.0.0", 443), ("::", 443), True),
    (("::1", 443), ("::", 443), True),
    (("::ffff:127.0.0.1", 443), ("127.0.0.1", 443), True),  # a mapped address is the IPv4 one
    (("0.0.0.0", 443), ("::1", 443), False),       # 0.0.0.0 takes no IPv6 address
    (("127.0.0.1", 443), ("127.0.0.2", 443), False),
    (("0.0.0.0", 443), ("0.0.0.0", 8443), False),
    (("0.0.0.0", 0), ("0.0.0.0", 0), False),       # port 0: each gets its own
])
def test_listeners_share_a_port_where_the_kernel_would_say_in_use(a, b, shared):
    assert shares_port(a, b) is shared and shares_port(b, a) is shared
