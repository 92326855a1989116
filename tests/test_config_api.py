"""`[server.api]` and API Tunnels: the table's keys, and API Tunnels checked by the file's
Tunnel rules with one error line naming the store and `api-tunnels.NAME`."""

import pytest

from runewarp.config import load_server_config
from runewarp.config.server import with_api_tunnels
from runewarp.errors import ConfigError

from .conftest import cli_material, run_cli

A, B, C = "a" * 64, "b" * 64, "c" * 64
HEAD = '[server]\nhostname = "tunnel.example.com"\npublic-bind-address = "0.0.0.0:443"\n'
TUNNELS = f'\n[[server.tunnels]]\nname = "static"\npublic-hostnames = ["static.example.com"]\nclient-identity = "{A}"\n'


@pytest.fixture
def ca_file(tmp_path):
    """A CA for API callers made by our CLI, beside the config file."""
    cli_material(tmp_path / "api-ca", "client", "visitor-ca", "init")
    path = tmp_path / "etc" / "api-ca.crt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((tmp_path / "api-ca" / "visitor-ca.crt").read_bytes())
    return path


def server(*api_lines, tunnels=TUNNELS):
    return HEAD + "[server.api]\n" + "".join(f"{line}\n" for line in api_lines) + tunnels


def test_defaults_and_the_state_file_under_xdg_state(write, env, ca_file, home):
    config = load_server_config(write(server('bind-address = "127.0.0.1:9470"',
                                             'client-ca-file = "api-ca.crt"')), env=env)
    api = config.api
    assert api.bind_address == ("127.0.0.1", 9470) and api.client_ca_file == ca_file
    assert api.state_file == home / ".local/state/runewarp/server/api-tunnels.json"
    assert (api.etcd_endpoints, api.etcd_prefix) == ((), "/runewarp/tunnels/")
    assert load_server_config(write(HEAD + TUNNELS), env=env).api is None


def test_without_tunnels_in_the_file_the_api_adds_them(write, env):
    assert load_server_config(write(server(tunnels="")), env=env).tunnels == ()
    with pytest.raises(ConfigError, match=r"server\.tunnels: at least one"):
        load_server_config(write(HEAD), env=env)


@pytest.mark.parametrize("lines, key, words", [
    (['bind-address = "127.0.0.1:9470"'], "server.api.client-ca-file", "required with bind-address"),
    (['bind-address = "0.0.0.0:443"', 'client-ca-file = "api-ca.crt"'], "server.api.bind-address",
     "shares a port with server.public-bind-address"),
    (['bind-address = "127.0.0.1:443"', 'client-ca-file = "api-ca.crt"'], "server.api.bind-address",
     "shares a port with server.public-bind-address"),
    (['bind-address = "localhost:9470"'], "server.api.bind-address", "literal IP"),
    (['client-ca-file = "missing.crt"'], "server.api.client-ca-file", "cannot read"),
    (['etcd-endpoints = ["ftp://x:1"]'], "server.api.etcd-endpoints[0]", "http:// or https://"),
    (['etcd-endpoints = ["http://a:1", "http://a:1"]'], "server.api.etcd-endpoints[1]", "listed twice"),
    (['etcd-endpoints = ["http://a:1/v3"]'], "server.api.etcd-endpoints[0]", "no path"),
    (['etcd-prefix = "runewarp"'], "server.api.etcd-prefix", "start and end with /"),
    (['etcd-cert-file = "api-ca.crt"'], "server.api.etcd-key-file", "go together"),
    (['tokens = 1'], "server.api.tokens", "unknown key"),
    (['bind-address = "127.0.0.1:9100"', 'client-ca-file = "api-ca.crt"',
      '[server.metrics]', 'bind-address = "0.0.0.0:9100"'], "server.api.bind-address",
     "shares a port with server.metrics.bind-address"),
])
def test_a_bad_value_is_one_error_naming_the_key(write, env, ca_file, lines, key, words):
    path = write(server(*lines))
    with pytest.raises(ConfigError) as raised:
        load_server_config(path, env=env)
    assert raised.value.key == key and str(raised.value.file) == str(path)
    assert words in raised.value.message


def test_api_tunnels_come_after_the_files_and_pass_its_rules(write, env):
    config = load_server_config(write(server()), env=env)
    merged = with_api_tunnels(config, {"web": {"public-hostnames": ["App.Example.com"], "client-identities": [B]},
                                       "db": {"public-hostnames": ["*.db.example.com"], "client-identities": [C]}},
                              "/state.json")
    assert [(t.name, t.public_hostnames, t.client_identities) for t in merged.tunnels] == [
        ("static", ("static.example.com",), (A,)), ("db", ("*.db.example.com",), (C,)),
        ("web", ("app.example.com",), (B,))]
    snapshot = merged.routing_snapshot()
    assert snapshot.tunnel_for_identity(B).name == "web"


@pytest.mark.parametrize("table, error", [
    ({"web": {"public-hostnames": ["static.example.com"], "client-identities": [B]}},
     "/s.json: api-tunnels.web.public-hostnames[0]: 'static.example.com' is already listed at "
     "server.tunnels[0].public-hostnames[0]; the same hostname in two Tunnels needs public-ports on both, "
     "with no port in common"),
    ({"web": {"public-hostnames": ["x.example.com"], "client-identities": [A]}},
     "/s.json: api-tunnels.web.client-identities[0]: this Client identity is already listed at "
     "server.tunnels[0].client-identities[0]; an identity belongs to one Tunnel"),
    ({"static": {"public-hostnames": ["x.example.com"], "client-identities": [B]}},
     "/s.json: api-tunnels.static: 'static' is already the name of server.tunnels[0]"),
    ({"a b": {"public-hostnames": ["x.example.com"], "client-identities": [B]}},
     "/s.json: api-tunnels.\"a b\": 'a b': use 1-63 characters of A-Z a-z 0-9 . _ - (starting with a "
     "letter or digit)"),
    ({"web": {"public-hostnames": ["tunnel.example.com"], "client-identities": [B]}},
     "/s.json: api-tunnels.web.public-hostnames[0]: 'tunnel.example.com' is the Server hostname "
     "(server.hostname); it cannot be a Public hostname"),
    ({"web": {"public-hostnames": ["x.example.com"], "client-identities": [B.upper()]}},
     "/s.json: api-tunnels.web.client-identities[0]: a Client identity is written in lowercase hex; use "
     "lowercase"),
    ({"web": {"public-hostnames": ["bad_host.example.com"], "client-identities": [B]}}, None),
    ({"a": {"public-hostnames": ["x.example.com"], "client-identities": [B]},
      "b": {"public-hostnames": ["x.example.com"], "client-identities": [C]}},
     "/s.json: api-tunnels.b.public-hostnames[0]: 'x.example.com' is already listed at "
     "api-tunnels.a.public-hostnames[0]; the same hostname in two Tunnels needs public-ports on both, "
     "with no port in common"),
])
def test_a_refused_api_tunnel_is_the_config_checks_line(write, env, table, error):
    config = load_server_config(write(server()), env=env)
    with pytest.raises(ConfigError) as raised:
        with_api_tunnels(config, table, "/s.json")
    if error is not None:
        assert str(raised.value) == error
    assert str(raised.value).startswith("/s.json: api-tunnels.")


def test_the_api_ca_must_be_a_ca_and_never_the_control_plane_ca(write, env, ca_file, tmp_path):
    """A file that is no CA fails like a typo; the control-plane CA would make every managed
    Client an API caller."""
    (ca_file.parent / "not-a-ca.crt").write_text("a CA\n")
    path = write(server('bind-address = "127.0.0.1:9470"', 'client-ca-file = "not-a-ca.crt"'))
    with pytest.raises(ConfigError, match="holds no PEM CA certificate") as raised:
        load_server_config(path, env=env)
    assert raised.value.key == "server.api.client-ca-file"

    run_cli("ca", "init", "--dir", tmp_path / "etc" / "cp")
    managed = '\n[server.managed]\nclient-ca-file = "cp/control-plane-ca.crt"\n'
    path = write(server('bind-address = "127.0.0.1:9470"', 'client-ca-file = "cp/control-plane-ca.crt"')
                 + managed)
    with pytest.raises(ConfigError, match="holds the control-plane CA") as raised:
        load_server_config(path, env=env)
    assert raised.value.key == "server.api.client-ca-file"
    assert load_server_config(write(server('bind-address = "127.0.0.1:9470"',
                                           'client-ca-file = "api-ca.crt"') + managed), env=env).api
