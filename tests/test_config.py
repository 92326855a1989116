"""Config loading: every rule of configuration.md, each error naming its key path."""

import dataclasses
import os
from pathlib import Path

import pytest

from runewarp.config import (
    DEFAULT_ACME_DIRECTORY,
    AcmeConfig,
    ClientConfig,
    Limits,
    ServerConfig,
    ServiceConfig,
    TunnelConfig,
    default_client_identity_dir,
    default_client_public_cert_dir,
    default_config_path,
    default_server_ca_file,
    default_server_cert_dir,
    load_client_config,
    load_server_config,
    peek,
    xdg_config_home,
    xdg_data_home,
    xdg_state_home,
)
from runewarp.errors import ConfigError

ID1 = "0123456789abcdef" * 4
ID2 = "fedcba9876543210" * 4
ID3 = "a" * 64

SERVER_MIN = f"""
[server]
hostname = "tunnel.example.com"
[[server.tunnels]]
public-hostnames = ["app.example.com"]
client-identity = "{ID1}"
"""

CLIENT_MIN = """
[client]
server-address = "tunnel.example.com"
[[client.services]]
backend-address = "127.0.0.1:8443"
"""


# --- valid configurations --------------------------------------------------


def test_full_server_config(write, env, tmp_path):
    path = write(
        f"""
log-level = "debug"
log-format = "json"

[server]
hostname = "Tunnel.Example.COM."
public-bind-address = "[::]:8443"
tunnel-bind-address = "127.0.0.1:0"
graceful-shutdown-duration = 2.5

[server.acme]
email = "ops@example.com"
state-dir = "acme-state"
directory-url = "https://localhost:14000/dir"

[server.limits]
intake-connections = 10
intake-per-source = 2
tunnel-handshakes = 3
active-streams = 40
pool-connections = 5
intake-ipv6-prefix = 56
active-streams-per-tunnel = 7
stream-idle-timeout = 0
stream-first-byte-timeout = 2.5

[[server.tunnels]]
name = "web"
public-hostnames = ["app.example.com", "WWW.example.com."]
client-identity = "{ID1}"

[[server.tunnels]]
public-hostnames = ["api.example.com"]
client-identities = ["{ID2}", "{ID3}"]

[client]
server-address = "whatever"
"""
    )
    config = load_server_config(path, env=env)
    assert config == ServerConfig(
        hostname="tunnel.example.com",
        public_bind_addresses=(("::", 8443),),
        tunnel_bind_address=("127.0.0.1", 0),
        cert_dir=default_server_cert_dir(env),
        acme=AcmeConfig(
            email="ops@example.com",
            state_dir=tmp_path / "etc" / "acme-state",
            directory_url="https://localhost:14000/dir",
            state_dir_explicit=True,
        ),
        graceful_shutdown_duration=2.5,
        tunnels=(
            TunnelConfig("web", ("app.example.com", "www.example.com"), (ID1,)),
            TunnelConfig("tunnel-2", ("api.example.com",), (ID2, ID3)),
        ),
        limits=Limits(
            intake_connections=10, intake_per_source=2, tunnel_handshakes=3, active_streams=40, pool_connections=5,
            intake_ipv6_prefix=56, active_streams_per_tunnel=7, stream_idle_timeout=0.0,
            stream_first_byte_timeout=2.5,
        ),
        log_level="debug",
        log_format="json",
        source=path,
    )


def test_server_manual_cert_dir(write, env, tmp_path):
    path = write(SERVER_MIN.replace("[server]\n", '[server]\ncert-dir = "/srv/cert"\n'))
    config = load_server_config(path, env=env)
    assert config.cert_dir == Path("/srv/cert")
    assert config.acme is None


def test_server_defaults(write, env, home):
    config = load_server_config(write(SERVER_MIN), env=env)
    assert config.hostname == "tunnel.example.com"
    assert config.public_bind_addresses == (("0.0.0.0", 443),)
    assert config.tunnel_bind_address is None
    assert config.cert_dir == home / ".local/share/runewarp/server/cert"
    assert config.acme is None
    assert config.graceful_shutdown_duration == 30.0
    assert config.limits == Limits()
    assert (config.limits.intake_connections, config.limits.intake_per_source,
            config.limits.tunnel_handshakes, config.limits.active_streams,
            config.limits.pool_connections) == (4096, 64, 256, 16384, 256)
    assert config.limits.tunnel_share(1) == 16384 and config.limits.tunnel_share(2) == 8192
    assert config.strict_permissions is False
    assert config.log_level == "info"
    assert config.log_format == "text"
    assert config.tunnels == (TunnelConfig("tunnel-1", ("app.example.com",), (ID1,)),)


def test_server_acme_defaults(write, env, home):
    path = write(SERVER_MIN + '[server.acme]\nemail = "ops@example.com"\n')
    acme = load_server_config(path, env=env).acme
    assert acme.email == "ops@example.com"
    assert acme.state_dir == home / ".local/state/runewarp/server/acme"
    assert acme.directory_url == DEFAULT_ACME_DIRECTORY
    assert acme.state_dir_explicit is False


def test_server_routing_snapshot(write, env):
    path = write(
        SERVER_MIN
        + f"""
[[server.tunnels]]
name = "api"
public-hostnames = ["api.example.com"]
client-identities = ["{ID2}", "{ID3}"]
"""
    )
    snapshot = load_server_config(path, env=env).routing_snapshot()
    assert snapshot.server_hostname == "tunnel.example.com"
    assert snapshot.tunnel_for_hostname("app.example.com").name == "tunnel-1"
    assert snapshot.tunnel_for_hostname("api.example.com").name == "api"
    assert snapshot.tunnel_for_identity(ID3).name == "api"
    assert snapshot.tunnel_for_hostname("tunnel.example.com") is None


def test_graceful_shutdown_accepts_integers_and_zero(write, env):
    path = write(SERVER_MIN.replace("[server]\n", "[server]\ngraceful-shutdown-duration = 0\n"))
    value = load_server_config(path, env=env).graceful_shutdown_duration
    assert value == 0.0 and isinstance(value, float)


def test_full_client_config_with_manual_certificates(write, env, tmp_path):
    ca = tmp_path / "etc" / "ca.crt"
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_text("pem")
    path = write(
        """
log-level = "trace"
log-format = "json"

[client]
server-address = ["tunnel.example.com", "Tunnel2.Example.com:8443"]
server-trust = "ca-file"
server-ca-file = "ca.crt"
identity-dir = "~/ident"
public-cert-dir = "/srv/public-cert"
graceful-shutdown-duration = 7

[client.limits]
active-streams = 12

[[client.services]]
public-hostnames = ["app.example.com", "WWW.example.com."]
backend-address = "localhost:8443"

[[client.services]]
public-hostnames = ["api.example.com"]
backend-address = "[::1]:8080"
tls-mode = "terminate"

[[client.services]]
public-hostnames = ["plain.example.com"]
backend-address = "192.0.2.7:80"
tls-mode = "passthrough"

[server]
nonsense = "the client loader never looks here"
"""
    )
    config = load_client_config(path, env=env)
    assert config == ClientConfig(
        server_addresses=(("tunnel.example.com", 443), ("tunnel2.example.com", 8443)),
        server_trust="ca-file",
        server_ca_file=ca,
        identity_dir=Path(env["HOME"]) / "ident",
        public_cert_dir=Path("/srv/public-cert"),
        acme=None,
        services=(
            ServiceConfig(("app.example.com", "www.example.com"), ("localhost", 8443), "passthrough"),
            ServiceConfig(("api.example.com",), ("::1", 8080), "terminate"),
            ServiceConfig(("plain.example.com",), ("192.0.2.7", 80), "passthrough"),
        ),
        limits=Limits(active_streams=12),
        log_level="trace",
        log_format="json",
        graceful_shutdown_duration=7.0,
        source=path,
    )
    assert config.terminate_hostnames == ["api.example.com"]


def test_client_acme(write, env, home, tmp_path):
    path = write(
        """
[client]
server-address = "tunnel.example.com"
[client.acme]
email = "ops@example.com"
directory-url = "https://pebble.test:14000/dir"
[[client.services]]
public-hostnames = ["app.example.com"]
backend-address = "127.0.0.1:8080"
tls-mode = "terminate"
"""
    )
    config = load_client_config(path, env=env)
    assert config.acme == AcmeConfig(
        email="ops@example.com",
        state_dir=home / ".local/state/runewarp/client/acme",
        directory_url="https://pebble.test:14000/dir",
        state_dir_explicit=False,
    )
    assert config.public_cert_dir is None


def test_client_defaults(write, env, home):
    config = load_client_config(write(CLIENT_MIN), env=env)
    assert config.server_addresses == (("tunnel.example.com", 443),)
    assert config.server_trust == "system"
    assert config.server_ca_file is None
    assert config.identity_dir == home / ".local/share/runewarp/client/identity"
    assert config.public_cert_dir is None
    assert config.acme is None
    assert config.services == (ServiceConfig((), ("127.0.0.1", 8443), "passthrough"),)
    assert config.services[0].is_catch_all
    assert config.limits.active_streams == 16384
    assert config.graceful_shutdown_duration == 30.0
    assert (config.log_level, config.log_format) == ("info", "text")


def test_client_ca_file_default_path_is_not_checked(write, env, home):
    path = write(CLIENT_MIN.replace("[client]\n", '[client]\nserver-trust = "ca-file"\n'))
    config = load_client_config(path, env=env)
    assert config.server_ca_file == home / ".local/share/runewarp/client/server-ca.crt"
    assert not config.server_ca_file.exists()


def test_material_folders_are_not_checked(write, env):
    # Missing material is the runtime's to report, with a hint how to create it.
    server = SERVER_MIN.replace("[server]\n", '[server]\ncert-dir = "/nonexistent/cert"\n')
    client = CLIENT_MIN.replace("[client]\n", '[client]\nidentity-dir = "/nonexistent/identity"\n')
    assert load_server_config(write(server), env=env).cert_dir == Path("/nonexistent/cert")
    assert load_client_config(write(client), env=env).identity_dir == Path("/nonexistent/identity")


def test_loading_has_no_side_effects(write, env, home):
    server = SERVER_MIN + '[server.acme]\nemail = "ops@example.com"\n'
    load_server_config(write(server), env=env)
    load_client_config(write(CLIENT_MIN), env=env)
    assert list(home.iterdir()) == []


def test_one_file_holds_both_sides(write, env):
    path = write(SERVER_MIN + CLIENT_MIN)
    assert load_server_config(path, env=env).hostname == "tunnel.example.com"
    assert load_client_config(path, env=env).server_addresses == (("tunnel.example.com", 443),)


def test_server_loader_ignores_client_table(write, env):
    path = write(SERVER_MIN + "[client]\nbogus = 1\n")
    load_server_config(path, env=env)


def test_bind_addresses(write, env):
    for text, expected in [
        ("0.0.0.0:443", ("0.0.0.0", 443)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:443", ("::", 443)),
        ("[::1]:65535", ("::1", 65535)),
        ("[2001:DB8::1]:8443", ("2001:db8::1", 8443)),
    ]:
        path = write(SERVER_MIN.replace("[server]\n", f'[server]\npublic-bind-address = "{text}"\n'))
        assert load_server_config(path, env=env).public_bind_addresses == (expected,)


def test_backend_addresses(write, env):
    for text, expected in [
        ("localhost:80", ("localhost", 80)),
        ("Backend.Internal.:8443", ("backend.internal", 8443)),
        ("10.0.0.5:443", ("10.0.0.5", 443)),
        ("[fd00::5]:443", ("fd00::5", 443)),
    ]:
        path = write(CLIENT_MIN.replace("127.0.0.1:8443", text))
        assert load_client_config(path, env=env).services[0].backend_address == expected


# --- XDG and paths ---------------------------------------------------------


def test_xdg_defaults_without_variables(home):
    env = {"HOME": str(home)}
    assert xdg_config_home(env) == home / ".config"
    assert xdg_data_home(env) == home / ".local/share"
    assert xdg_state_home(env) == home / ".local/state"
    assert default_config_path(env) == home / ".config/runewarp/config.toml"
    assert default_server_cert_dir(env) == home / ".local/share/runewarp/server/cert"
    assert default_client_identity_dir(env) == home / ".local/share/runewarp/client/identity"
    assert default_client_public_cert_dir(env) == home / ".local/share/runewarp/client/public-cert"
    assert default_server_ca_file(env) == home / ".local/share/runewarp/client/server-ca.crt"


def test_xdg_variables(home, tmp_path):
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    assert default_config_path(env) == tmp_path / "cfg/runewarp/config.toml"
    assert xdg_data_home(env) == tmp_path / "data"
    assert xdg_state_home(env) == tmp_path / "state"


def test_relative_or_empty_xdg_variables_are_ignored(home):
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "relative/cfg", "XDG_DATA_HOME": "", "XDG_STATE_HOME": "x"}
    assert default_config_path(env) == home / ".config/runewarp/config.toml"
    assert xdg_data_home(env) == home / ".local/share"
    assert xdg_state_home(env) == home / ".local/state"


def test_xdg_variables_drive_config_defaults(write, tmp_path, home):
    env = {"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_STATE_HOME": str(tmp_path / "state")}
    server = load_server_config(write(SERVER_MIN + '[server.acme]\nemail = "a@b.example"\n'), env=env)
    assert server.cert_dir == tmp_path / "data/runewarp/server/cert"
    assert server.acme.state_dir == tmp_path / "state/runewarp/server/acme"
    client = load_client_config(
        write(CLIENT_MIN.replace("[client]\n", '[client]\nserver-trust = "ca-file"\n')), env=env
    )
    assert client.identity_dir == tmp_path / "data/runewarp/client/identity"
    assert client.server_ca_file == tmp_path / "data/runewarp/client/server-ca.crt"


def test_default_config_path_is_used_when_path_is_none(tmp_path, home):
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    path = tmp_path / "cfg/runewarp/config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(SERVER_MIN + CLIENT_MIN)
    assert load_server_config(None, env=env).source == path
    assert load_client_config(None, env=env).source == path


def test_relative_paths_resolve_against_the_config_folder(write, env, tmp_path):
    server = write(SERVER_MIN.replace("[server]\n", '[server]\ncert-dir = "material/cert"\n'))
    assert load_server_config(server, env=env).cert_dir == tmp_path / "etc/material/cert"
    client = write(
        CLIENT_MIN.replace("[client]\n", '[client]\nidentity-dir = "./id"\npublic-cert-dir = "../pc"\n').replace(
            'backend-address = "127.0.0.1:8443"',
            'public-hostnames = ["a.example.com"]\nbackend-address = "127.0.0.1:8443"\ntls-mode = "terminate"',
        )
    )
    config = load_client_config(client, env=env)
    assert config.identity_dir == tmp_path / "etc/id"
    assert config.public_cert_dir == tmp_path / "etc/../pc"


def test_relative_config_path_gives_absolute_results(write, env, tmp_path, monkeypatch):
    write(SERVER_MIN.replace("[server]\n", '[server]\ncert-dir = "cert"\n'))
    monkeypatch.chdir(tmp_path)
    config = load_server_config(Path("etc/config.toml"), env=env)
    assert config.source == tmp_path / "etc/config.toml"
    assert config.cert_dir == tmp_path / "etc/cert"


def test_tilde_expands_to_home(write, env, home):
    path = write(SERVER_MIN.replace("[server]\n", '[server]\ncert-dir = "~/cert"\n'))
    assert load_server_config(path, env=env).cert_dir == home / "cert"


# --- command-line overrides ------------------------------------------------


def test_overrides_without_a_file_make_one_catch_all_service(env, home):
    config = load_client_config(
        None, overrides={"server-address": "Tunnel.Example.com:9443", "backend-address": "127.0.0.1:8443"}, env=env
    )
    assert config.server_addresses == (("tunnel.example.com", 9443),)
    assert config.services == (ServiceConfig((), ("127.0.0.1", 8443), "passthrough"),)
    assert config.server_trust == "system"
    assert config.server_ca_file is None
    assert config.identity_dir == home / ".local/share/runewarp/client/identity"
    assert config.source is None


def test_overrides_ignore_none_values(env):
    config = load_client_config(
        None,
        overrides={
            "server-address": "tunnel.example.com",
            "backend-address": "localhost:80",
            "server-trust": None,
            "server-ca-file": None,
        },
        env=env,
    )
    assert config.server_trust == "system"


def test_override_server_ca_file_implies_ca_file_trust(env, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    config = load_client_config(
        None,
        overrides={"server-address": "t.example.com", "backend-address": "localhost:80", "server-ca-file": str(ca)},
        env=env,
    )
    assert (config.server_trust, config.server_ca_file) == ("ca-file", ca)


def test_override_server_trust_ca_file_uses_default_path(env, home):
    config = load_client_config(
        None,
        overrides={"server-address": "t.example.com", "backend-address": "localhost:80", "server-trust": "ca-file"},
        env=env,
    )
    assert config.server_ca_file == home / ".local/share/runewarp/client/server-ca.crt"


def test_override_server_address_replaces_the_files(write, env):
    path = write(CLIENT_MIN)
    config = load_client_config(path, overrides={"server-address": ["a.example.com", "b.example.com:1"]}, env=env)
    assert config.server_addresses == (("a.example.com", 443), ("b.example.com", 1))


def test_override_backend_address_with_a_file_without_services(write, env):
    path = write('[client]\nserver-address = "tunnel.example.com"\nserver-trust = "ca-file"\n')
    config = load_client_config(path, overrides={"backend-address": "127.0.0.1:9"}, env=env)
    assert config.services == (ServiceConfig((), ("127.0.0.1", 9), "passthrough"),)
    assert config.server_trust == "ca-file"


def test_override_server_address_alone_still_reads_the_default_file(tmp_path, home):
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with pytest.raises(ConfigError) as e:
        load_client_config(None, overrides={"server-address": "t.example.com"}, env=env)
    assert e.value.file == str(tmp_path / "cfg/runewarp/config.toml")
    assert "--backend-address" in e.value.message


# --- errors ----------------------------------------------------------------


def test_config_error_format(write, env):
    path = write(SERVER_MIN.replace('"tunnel.example.com"', '"bad_host"'))
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert str(e.value).startswith(f"{path}: server.hostname: ")
    assert "underscores" in str(e.value)


def test_explicit_missing_file(tmp_path, env):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.file == str(path)
    assert e.value.key is None
    assert "cannot read config" in e.value.message and "No such file" in e.value.message


@pytest.mark.parametrize("load", [load_server_config, load_client_config])
def test_directory_is_not_a_config(tmp_path, env, load):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, env=env)
    assert str(e.value).startswith(f"{tmp_path}: cannot read config: ")


def test_missing_default_file(env, home):
    with pytest.raises(ConfigError, match="No such file"):
        load_server_config(None, env=env)
    with pytest.raises(ConfigError) as e:
        load_client_config(None, env=env)
    assert e.value.file == str(home / ".config/runewarp/config.toml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(write, env):
    path = write(SERVER_MIN)
    path.chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_server_config(path, env=env)


@pytest.mark.parametrize("load", [load_server_config, load_client_config])
def test_invalid_toml_reports_the_line(write, env, load):
    path = write('[server]\nhostname = "x.example.com"\nhostname = "y.example.com"\n')
    with pytest.raises(ConfigError) as e:
        load(path, env=env)
    assert e.value.key is None
    assert "invalid TOML" in e.value.message and "line 3" in e.value.message


@pytest.mark.parametrize("load", [load_server_config, load_client_config])
def test_not_utf8(tmp_path, env, load):
    path = tmp_path / "c.toml"
    path.write_bytes(b'[server]\nhostname = "\xff"\n')
    with pytest.raises(ConfigError) as e:
        load(path, env=env)
    assert str(e.value) == f"{path}: invalid TOML: file is not UTF-8"


def _server_with(server_extra="", tunnel_extra=None, top=""):
    tunnel = (
        tunnel_extra
        if tunnel_extra is not None
        else f'public-hostnames = ["app.example.com"]\nclient-identity = "{ID1}"'
    )
    return f'{top}\n[server]\nhostname = "tunnel.example.com"\n{server_extra}\n[[server.tunnels]]\n{tunnel}\n'


TUNNEL_ID = f'client-identity = "{ID1}"'
TUNNEL_HOSTS = 'public-hostnames = ["app.example.com"]'

SERVER_ERRORS = [
    # top level
    ('log-level = "info"\n', "server", "missing [server]"),
    (_server_with(top='[sever]\nhostname = "x"'), "sever", "did you mean 'server'"),
    (_server_with(top='colour = "blue"'), "colour", "unknown key"),
    (_server_with(top='log-level = "verbose"'), "log-level", "must be one of off, error, warn, info, debug, trace"),
    (_server_with(top="log-level = 3"), "log-level", "expected a string"),
    (_server_with(top='log-format = "xml"'), "log-format", "must be one of text, json"),
    ('server = "tunnel.example.com"\n', "server", "expected a table"),
    # [server] keys
    (_server_with('hostnme = "x"'), "server.hostnme", "did you mean 'hostname'"),
    ('[server]\n[[server.tunnels]]\npublic-hostnames = ["a.example.com"]\n' + TUNNEL_ID, "server.hostname", "required"),
    (_server_with().replace('"tunnel.example.com"', "42"), "server.hostname", "expected a string, got an integer"),
    (_server_with().replace('"tunnel.example.com"', '""'), "server.hostname", "must not be empty"),
    (_server_with().replace('"tunnel.example.com"', '"bad_host.example.com"'), "server.hostname", "underscores"),
    (_server_with().replace('"tunnel.example.com"', '"*.example.com"'), "server.hostname", "wildcard"),
    (_server_with().replace('"tunnel.example.com"', '"192.0.2.1"'), "server.hostname", "IP"),
    (_server_with().replace('"tunnel.example.com"', '"tünnel.example.com"'), "server.hostname", "non-ASCII"),
    (_server_with().replace('"tunnel.example.com"', '"-tunnel.example.com"'), "server.hostname",
     "starts or ends with '-'"),
    (_server_with().replace('"tunnel.example.com"', '"::1"'), "server.hostname", "IP literals"),
    (_server_with().replace('"tunnel.example.com"', f'"{"a" * 64}.example.com"'), "server.hostname",
     "longer than 63"),
    (_server_with().replace('"tunnel.example.com"', '"' + ".".join(["a" * 60] * 5) + '"'), "server.hostname",
     "longer than 253"),
    (_server_with('public-bind = "127.0.0.1:443"'), "server.public-bind", "did you mean 'public-bind-address'"),
    # bind addresses
    (_server_with('public-bind-address = "example.com:443"'), "server.public-bind-address", "literal IP"),
    (_server_with('public-bind-address = "localhost:443"'), "server.public-bind-address", "literal IP"),
    (_server_with('public-bind-address = "0.0.0.0"'), "server.public-bind-address", "missing ':port'"),
    (_server_with('public-bind-address = "0.0.0.0:"'), "server.public-bind-address", "not a number"),
    (_server_with('public-bind-address = "0.0.0.0:https"'), "server.public-bind-address", "not a number"),
    (_server_with('public-bind-address = "0.0.0.0:-1"'), "server.public-bind-address", "not a number"),
    (_server_with('public-bind-address = "0.0.0.0:65536"'), "server.public-bind-address", "out of range 0-65535"),
    (_server_with('public-bind-address = "0.0.0.0:443"\ntunnel-bind-address = "0.0.0.0:443"'),
     "server.tunnel-bind-address", "shares a port with public-bind-address (omit it to share"),
    (_server_with('public-bind-address = "0.0.0.0:443"\ntunnel-bind-address = "127.0.0.1:443"'),
     "server.tunnel-bind-address", "shares a port with public-bind-address"),
    (_server_with('public-bind-address = "127.0.0.1:443"\n[server.metrics]\nbind-address = "[::]:443"'),
     "server.metrics.bind-address", "shares a port with a public or Tunnel listener"),
    (_server_with('public-bind-address = ":443"'), "server.public-bind-address", "missing host"),
    (_server_with('public-bind-address = "::1:443"'), "server.public-bind-address", "brackets"),
    (_server_with('public-bind-address = "[::1:443"'), "server.public-bind-address", "missing ']'"),
    (_server_with('public-bind-address = "[::1]443"'), "server.public-bind-address", "expected ':port'"),
    (_server_with('public-bind-address = "[127.0.0.1]:443"'), "server.public-bind-address", "only IPv6"),
    (_server_with("public-bind-address = 443"), "server.public-bind-address", "expected a string"),
    (_server_with('tunnel-bind-address = "tunnel.example.com:8443"'), "server.tunnel-bind-address", "literal IP"),
    (
        _server_with('public-bind-address = "0.0.0.0:443"\ntunnel-bind-address = "0.0.0.0:443"'),
        "server.tunnel-bind-address",
        "shares a port",
    ),
    # cert-dir / acme
    (_server_with('cert-dir = "/c"\n[server.acme]\nemail = "a@example.com"'), "server.cert-dir", "[server.acme]"),
    (_server_with("cert-dir = 5"), "server.cert-dir", "expected a string"),
    (_server_with('acme = "yes"'), "server.acme", "expected a table"),
    (_server_with("[server.acme]"), "server.acme.email", "required"),
    (_server_with('[server.acme]\nemail = "ops.example.com"'), "server.acme.email", "not an email"),
    (_server_with('[server.acme]\nemail = "@example.com"'), "server.acme.email", "not an email"),
    (_server_with('[server.acme]\nemail = "o ps@example.com"'), "server.acme.email", "not an email"),
    (
        _server_with('[server.acme]\nemail = "a@example.com"\ndirectory-url = "http://acme.example/dir"'),
        "server.acme.directory-url",
        "https://",
    ),
    (
        _server_with('[server.acme]\nemail = "a@example.com"\ndirectory-url = "acme.example/dir"'),
        "server.acme.directory-url",
        "https://",
    ),
    (
        _server_with('[server.acme]\nemail = "a@example.com"\nstate-dir = 1'),
        "server.acme.state-dir",
        "expected a string",
    ),
    (_server_with('[server.acme]\nemail = "a@example.com"\nstaging = true'), "server.acme.staging", "unknown key"),
    # graceful-shutdown-duration
    (_server_with("graceful-shutdown-duration = -1"), "server.graceful-shutdown-duration", ">= 0"),
    (_server_with("graceful-shutdown-duration = nan"), "server.graceful-shutdown-duration", "finite"),
    (_server_with("graceful-shutdown-duration = inf"), "server.graceful-shutdown-duration", "finite"),
    (_server_with('graceful-shutdown-duration = "30s"'), "server.graceful-shutdown-duration", "expected a number"),
    (_server_with("graceful-shutdown-duration = true"), "server.graceful-shutdown-duration", "expected a number"),
    # limits
    (_server_with("[server.limits]\nmax-streams = 1"), "server.limits.max-streams", "unknown key"),
    (
        _server_with("[server.limits]\nactive-stream = 1"),
        "server.limits.active-stream",
        "did you mean 'active-streams'",
    ),
    (_server_with("[server.limits]\nactive-streams = 0"), "server.limits.active-streams", "at least 1"),
    (_server_with("[server.limits]\npool-connections = -5"), "server.limits.pool-connections", "at least 1"),
    (
        _server_with('[server.limits]\nintake-connections = "10"'),
        "server.limits.intake-connections",
        "expected an integer",
    ),
    (
        _server_with("[server.limits]\nintake-per-source = 1.5"),
        "server.limits.intake-per-source",
        "expected an integer",
    ),
    (
        _server_with("[server.limits]\ntunnel-handshakes = true"),
        "server.limits.tunnel-handshakes",
        "expected an integer",
    ),
    (_server_with("limits = 5"), "server.limits", "expected a table"),
    (_server_with("[server.limits]\nintake-ipv4-prefix = 33"), "server.limits.intake-ipv4-prefix",
     "at most 32"),
    (_server_with("[server.limits]\nintake-ipv6-prefix = 129"), "server.limits.intake-ipv6-prefix",
     "at most 128"),
    (_server_with("[server.limits]\nstream-buffer-budget = 1000"),
     "server.limits.stream-buffer-budget", "at least 1048576"),
    (_server_with("[server.limits]\nstream-idle-timeout = -1"), "server.limits.stream-idle-timeout",
     ">= 0"),
    (_server_with('[server.limits]\nstream-first-byte-timeout = "30s"'),
     "server.limits.stream-first-byte-timeout", "expected a number"),
    (_server_with("[server.limits]\nactive-streams-per-tunnel = 0"),
     "server.limits.active-streams-per-tunnel", "at least 1"),
    (_server_with('strict-permissions = "yes"'), "server.strict-permissions", "expected true or false"),
    # tunnels: presence and shape
    ('[server]\nhostname = "tunnel.example.com"\n', "server.tunnels", "at least one"),
    ('[server]\nhostname = "tunnel.example.com"\ntunnels = []\n', "server.tunnels", "at least one"),
    ('[server]\nhostname = "tunnel.example.com"\ntunnels = "x"\n', "server.tunnels", "array of tables"),
    ('[server]\nhostname = "tunnel.example.com"\ntunnels = [1]\n', "server.tunnels", "array of tables"),
    (
        _server_with(tunnel_extra=f"{TUNNEL_HOSTS}\n{TUNNEL_ID}\nhostnames = []"),
        "server.tunnels[0].hostnames",
        "unknown key",
    ),
    (
        _server_with(tunnel_extra=f'public-hostname = ["a.example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostname",
        "did you mean 'public-hostnames'",
    ),
    # tunnels: names
    (
        _server_with(tunnel_extra=f"name = 7\n{TUNNEL_HOSTS}\n{TUNNEL_ID}"),
        "server.tunnels[0].name",
        "expected a string",
    ),
    (_server_with(tunnel_extra=f'name = "my tunnel"\n{TUNNEL_HOSTS}\n{TUNNEL_ID}'), "server.tunnels[0].name", "1-63"),
    (_server_with(tunnel_extra=f'name = "-x"\n{TUNNEL_HOSTS}\n{TUNNEL_ID}'), "server.tunnels[0].name", "1-63"),
    (
        _server_with(
            tunnel_extra=f'name = "web"\n{TUNNEL_HOSTS}\n{TUNNEL_ID}\n'
            f'[[server.tunnels]]\nname = "web"\npublic-hostnames = ["b.example.com"]\nclient-identity = "{ID2}"'
        ),
        "server.tunnels[1].name",
        "already the name of server.tunnels[0]",
    ),
    (
        _server_with(
            tunnel_extra=f'name = "tunnel-2"\n{TUNNEL_HOSTS}\n{TUNNEL_ID}\n'
            f'[[server.tunnels]]\npublic-hostnames = ["b.example.com"]\nclient-identity = "{ID2}"'
        ),
        "server.tunnels[1].name",
        "default name 'tunnel-2' is already used",
    ),
    # tunnels: public hostnames
    (_server_with(tunnel_extra=TUNNEL_ID), "server.tunnels[0].public-hostnames", "required"),
    (
        _server_with(tunnel_extra=f"public-hostnames = []\n{TUNNEL_ID}"),
        "server.tunnels[0].public-hostnames",
        "must not be empty",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = "app.example.com"\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames",
        "expected an array of strings",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["a.example.com", 1]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[1]",
        "expected a string",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["a.*.example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "wildcard",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["a.example.com", "ü.example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[1]",
        "non-ASCII",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["10.0.0.1"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "IP",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["[::1]"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "IP",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["a..example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "empty label",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["{"a" * 64}.example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "longer than 63",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["-a.example.com"]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "'-'",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["Tunnel.Example.com."]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[0]",
        "Server hostname",
    ),
    (
        _server_with(tunnel_extra=f'public-hostnames = ["a.example.com", "A.example.com."]\n{TUNNEL_ID}'),
        "server.tunnels[0].public-hostnames[1]",
        "already listed at server.tunnels[0].public-hostnames[0]",
    ),
    (
        _server_with(
            tunnel_extra=f'public-hostnames = ["a.example.com", "b.example.com"]\n{TUNNEL_ID}\n'
            f'[[server.tunnels]]\npublic-hostnames = ["c.example.com", "B.EXAMPLE.COM"]\nclient-identity = "{ID2}"'
        ),
        "server.tunnels[1].public-hostnames[1]",
        "already listed at server.tunnels[0].public-hostnames[1]",
    ),
    # tunnels: identities
    (_server_with(tunnel_extra=TUNNEL_HOSTS), "server.tunnels[0].client-identity", "required"),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\n{TUNNEL_ID}\nclient-identities = ["{ID2}"]'),
        "server.tunnels[0].client-identities",
        "not both",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "{ID1.upper()}"'),
        "server.tunnels[0].client-identity",
        "use lowercase",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "{ID1[:-1]}"'),
        "server.tunnels[0].client-identity",
        "64 lowercase hex",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "{ID1}0"'),
        "server.tunnels[0].client-identity",
        "64 lowercase hex",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "sha256:{ID1}"'),
        "server.tunnels[0].client-identity",
        "64 lowercase hex",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "{"g" * 64}"'),
        "server.tunnels[0].client-identity",
        "is not a Client identity (64 lowercase hex characters; see 'runewarp client identity show')",
    ),
    # the shipped template's placeholder must not start a Server
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = "{"0" * 64}"'),
        "server.tunnels[0].client-identity",
        "the all-zero placeholder is not a Client identity; paste the real one printed by "
        "'runewarp client identity show'",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identities = ["{ID1}", "{"0" * 64}"]'),
        "server.tunnels[0].client-identities[1]",
        "all-zero placeholder",
    ),
    (
        _server_with(tunnel_extra=f"{TUNNEL_HOSTS}\nclient-identity = 1"),
        "server.tunnels[0].client-identity",
        "expected a string",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identity = ["{ID1}"]'),
        "server.tunnels[0].client-identity",
        "expected a string",
    ),
    (
        _server_with(tunnel_extra=f"{TUNNEL_HOSTS}\nclient-identities = []"),
        "server.tunnels[0].client-identities",
        "must not be empty",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identities = "{ID1}"'),
        "server.tunnels[0].client-identities",
        "expected an array of strings",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identities = ["{ID1}", "{ID2.upper()}"]'),
        "server.tunnels[0].client-identities[1]",
        "use lowercase",
    ),
    (
        _server_with(tunnel_extra=f'{TUNNEL_HOSTS}\nclient-identities = ["{ID1}", "{ID1}"]'),
        "server.tunnels[0].client-identities[1]",
        "already listed at server.tunnels[0].client-identities[0]",
    ),
    (
        _server_with(
            tunnel_extra=f"{TUNNEL_HOSTS}\n{TUNNEL_ID}\n"
            f'[[server.tunnels]]\npublic-hostnames = ["b.example.com"]\nclient-identities = ["{ID2}", "{ID1}"]'
        ),
        "server.tunnels[1].client-identities[1]",
        "already listed at server.tunnels[0].client-identity; an identity belongs to one Tunnel",
    ),
]


@pytest.mark.parametrize("text, key, message", SERVER_ERRORS)
def test_server_errors(write, env, text, key, message):
    path = write(text)
    with pytest.raises(ConfigError) as e:
        load_server_config(path, env=env)
    assert e.value.file == str(path)
    assert e.value.key == key, e.value
    assert message in e.value.message, e.value


def _client_with(client_extra="", services=None, top=""):
    services = services if services is not None else '[[client.services]]\nbackend-address = "127.0.0.1:8443"'
    return f'{top}\n[client]\nserver-address = "tunnel.example.com"\n{client_extra}\n{services}\n'


def _service(*lines):
    return "\n".join(["[[client.services]]", *lines])


HOSTS_A = 'public-hostnames = ["a.example.com"]'
HOSTS_B = 'public-hostnames = ["b.example.com"]'
BACKEND = 'backend-address = "127.0.0.1:8443"'
TERMINATE = 'tls-mode = "terminate"'

CLIENT_ERRORS = [
    # top level and [client]
    ('log-level = "info"\n', "client", "missing [client]"),
    (_client_with(top="[clients]\nx = 1"), "clients", "did you mean 'client'"),
    (_client_with(top='log-format = "yaml"'), "log-format", "must be one of text, json"),
    (_client_with(top='log-level = "verbose"'), "log-level", "must be one of off, error, warn, info, debug, trace"),
    (_client_with(top="log-level = 3"), "log-level", "expected a string, got an integer"),
    (_client_with(top='colour = "blue"'), "colour", "unknown key"),
    ('client = ["x"]\n', "client", "expected a table"),
    (_client_with('server_address = "x.example.com"'), "client.server_address", "did you mean 'server-address'"),
    # server-address
    ('[client]\n[[client.services]]\nbackend-address = "127.0.0.1:1"\n', "client.server-address", "required"),
    (
        _client_with().replace('"tunnel.example.com"', '"192.0.2.1"'),
        "client.server-address",
        "must be a DNS name, not an IP address",
    ),
    (_client_with().replace('"tunnel.example.com"', '"192.0.2.1:443"'), "client.server-address", "not an IP address"),
    (_client_with().replace('"tunnel.example.com"', '"[::1]:443"'), "client.server-address", "not an IP address"),
    (_client_with().replace('"tunnel.example.com"', '"::1"'), "client.server-address", "brackets"),
    (_client_with().replace('"tunnel.example.com"', '"bad_host:443"'), "client.server-address", "underscores"),
    (_client_with().replace('"tunnel.example.com"', '"tun nel:443"'), "client.server-address", "whitespace"),
    (
        _client_with().replace('"tunnel.example.com"', '"t.example.com:0"'),
        "client.server-address",
        "out of range 1-65535",
    ),
    (_client_with().replace('"tunnel.example.com"', '"t.example.com:99999"'), "client.server-address", "out of range"),
    (_client_with().replace('"tunnel.example.com"', '"t.example.com:x"'), "client.server-address", "not a number"),
    (_client_with().replace('"tunnel.example.com"', '""'), "client.server-address", "missing host"),
    (
        _client_with().replace('"tunnel.example.com"', "443"),
        "client.server-address",
        "expected a string or an array of strings",
    ),
    (_client_with().replace('"tunnel.example.com"', "[]"), "client.server-address", "must not be empty"),
    (
        _client_with().replace('"tunnel.example.com"', '["a.example.com", 1]'),
        "client.server-address[1]",
        "expected a string",
    ),
    (
        _client_with().replace('"tunnel.example.com"', '["a.example.com", "10.1.1.1"]'),
        "client.server-address[1]",
        "not an IP address",
    ),
    (
        _client_with().replace('"tunnel.example.com"', '["a.example.com", "A.example.com.:443"]'),
        "client.server-address[1]",
        "same Server address as client.server-address[0]",
    ),
    # trust
    (_client_with('server-trust = "none"'), "client.server-trust", "must be one of system, ca-file"),
    (
        _client_with('server-ca-file = "/etc/ca.crt"'),
        "client.server-ca-file",
        'only allowed with server-trust = "ca-file"',
    ),
    (
        _client_with('server-trust = "system"\nserver-ca-file = "/etc/ca.crt"'),
        "client.server-ca-file",
        "only allowed",
    ),
    (
        _client_with('server-trust = "ca-file"\nserver-ca-file = "/nonexistent/ca.crt"'),
        "client.server-ca-file",
        "cannot read /nonexistent/ca.crt: No such file",
    ),
    (_client_with('server-trust = "ca-file"\nserver-ca-file = "."'), "client.server-ca-file", "cannot read"),
    (_client_with("identity-dir = []"), "client.identity-dir", "expected a string"),
    (_client_with('identity-dir = ""'), "client.identity-dir", "must not be empty"),
    # public-cert-dir / acme
    (
        _client_with(
            'public-cert-dir = "/pc"\n[client.acme]\nemail = "a@example.com"', _service(HOSTS_A, BACKEND, TERMINATE)
        ),
        "client.public-cert-dir",
        "[client.acme]",
    ),
    (
        _client_with('[client.acme]\nemail = "a@example.com"'),
        "client.acme",
        'needs at least one Service with tls-mode = "terminate"',
    ),
    (_client_with('public-cert-dir = "/pc"'), "client.public-cert-dir", "needs at least one Service"),
    (_client_with("[client.acme]", _service(HOSTS_A, BACKEND, TERMINATE)), "client.acme.email", "required"),
    (
        _client_with(
            '[client.acme]\nemail = "a@example.com"\ndirectory-url = "http://x"', _service(HOSTS_A, BACKEND, TERMINATE)
        ),
        "client.acme.directory-url",
        "https://",
    ),
    # graceful-shutdown-duration and limits in [client]
    (_client_with("graceful-shutdown-duration = -0.5"), "client.graceful-shutdown-duration", ">= 0"),
    (_client_with("[client.limits]\nactive-streams = 0"), "client.limits.active-streams", "at least 1"),
    (_client_with("[client.limits]\npool-connections = 4"), "client.limits.pool-connections", "unknown key"),
    (_client_with("[client.limits]\nstream-first-byte-timeout = 4"),
     "client.limits.stream-first-byte-timeout", "unknown key"),
    (_client_with("strict-permissions = 1"), "client.strict-permissions", "expected true or false"),
    # services: presence and shape
    ('[client]\nserver-address = "t.example.com"\n', "client.services", "at least one"),
    ('[client]\nserver-address = "t.example.com"\nservices = []\n', "client.services", "at least one"),
    ('[client]\nserver-address = "t.example.com"\nservices = "x"\n', "client.services", "array of tables"),
    (
        _client_with("", _service(BACKEND, 'tls_mode = "terminate"')),
        "client.services[0].tls_mode",
        "did you mean 'tls-mode'",
    ),
    (_client_with("", _service(BACKEND, "backend = 1")), "client.services[0].backend", "unknown key"),
    (_client_with("", _service('backend = "127.0.0.1:1"')), "client.services[0].backend",
     "unknown key; did you mean 'backend-address'?"),
    (_client_with("", _service('public-hostnames = ["äpp.example.com"]', BACKEND)),
     "client.services[0].public-hostnames[0]", "non-ASCII"),
    # services: hostnames
    (
        _client_with("", _service(HOSTS_A, BACKEND) + "\n" + _service(BACKEND)),
        "client.services[1].public-hostnames",
        "only a sole Service may be Catch-all",
    ),
    (
        _client_with("", _service(BACKEND) + "\n" + _service(HOSTS_B, BACKEND)),
        "client.services[0].public-hostnames",
        "required when there is more than one Service",
    ),
    (
        _client_with("", _service("public-hostnames = []", BACKEND)),
        "client.services[0].public-hostnames",
        "must not be empty",
    ),
    (
        _client_with("", _service('public-hostnames = "a.example.com"', BACKEND)),
        "client.services[0].public-hostnames",
        "expected an array of strings",
    ),
    (
        _client_with("", _service('public-hostnames = ["*foo.example.com"]', BACKEND)),
        "client.services[0].public-hostnames[0]",
        "wildcard",
    ),
    (
        _client_with("", _service('public-hostnames = ["192.0.2.1"]', BACKEND)),
        "client.services[0].public-hostnames[0]",
        "IP",
    ),
    (
        _client_with(
            "",
            _service('public-hostnames = ["a.example.com", "b.example.com"]', BACKEND)
            + "\n"
            + _service('public-hostnames = ["B.example.com."]', BACKEND),
        ),
        "client.services[1].public-hostnames[0]",
        "already listed at client.services[0].public-hostnames[1]",
    ),
    (
        _client_with("", _service('public-hostnames = ["a.example.com", "a.example.com"]', BACKEND)),
        "client.services[0].public-hostnames[1]",
        "already listed",
    ),
    # services: backend-address
    (_client_with("", _service(HOSTS_A)), "client.services[0].backend-address", "required"),
    (
        _client_with("", _service(HOSTS_A, "backend-address = 8443")),
        "client.services[0].backend-address",
        "expected a string",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "localhost"')),
        "client.services[0].backend-address",
        "missing ':port'",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "localhost:0"')),
        "client.services[0].backend-address",
        "out of range 1-65535",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "localhost:65536"')),
        "client.services[0].backend-address",
        "out of range",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "localhost:https"')),
        "client.services[0].backend-address",
        "port 'https' is not a number",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "bad_host:80"')),
        "client.services[0].backend-address",
        "underscores",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "::1:80"')),
        "client.services[0].backend-address",
        "brackets",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "[10.0.0.1]:80"')),
        "client.services[0].backend-address",
        "only IPv6",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "[backend]:80"')),
        "client.services[0].backend-address",
        "only IPv6",
    ),
    (
        _client_with("", _service(HOSTS_A, 'backend-address = "http://x:80"')),
        "client.services[0].backend-address",
        "brackets",
    ),
    # services: tls-mode
    (
        _client_with("", _service(HOSTS_A, BACKEND, 'tls-mode = "edge"')),
        "client.services[0].tls-mode",
        "passthrough, terminate",
    ),
    (
        _client_with("", _service(HOSTS_A, BACKEND, "tls-mode = true")),
        "client.services[0].tls-mode",
        "expected a string",
    ),
    (
        _client_with('public-cert-dir = "/pc"', _service(BACKEND, TERMINATE)),
        "client.services[0].tls-mode",
        "a Catch-all Service cannot terminate TLS",
    ),
]


@pytest.mark.parametrize("text, key, message", CLIENT_ERRORS)
def test_client_errors(write, env, text, key, message):
    path = write(text)
    with pytest.raises(ConfigError) as e:
        load_client_config(path, env=env)
    assert e.value.file == str(path)
    assert e.value.key == key, e.value
    assert message in e.value.message, e.value


def test_client_loader_ignores_server_table_but_not_unknown_tables(write, env):
    load_client_config(write(CLIENT_MIN + "[server]\nhostname = 1\n"), env=env)
    with pytest.raises(ConfigError) as e:
        load_client_config(write(CLIENT_MIN + "[servr]\n"), env=env)
    assert e.value.key == "servr"


def test_server_loader_rejects_unknown_top_level_even_with_valid_server(write, env):
    with pytest.raises(ConfigError) as e:
        load_server_config(write(SERVER_MIN + "[tunnels]\n"), env=env)
    assert e.value.key == "tunnels"


def test_quoted_unknown_key_is_shown_quoted(write, env):
    with pytest.raises(ConfigError) as e:
        load_server_config(write(SERVER_MIN.replace("[server]\n", '[server]\n"a.b" = 1\n')), env=env)
    assert e.value.key == 'server."a.b"'


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        ({"server-address": "192.0.2.1", "backend-address": "127.0.0.1:1"}, "--server-address", "not an IP address"),
        ({"server-address": "t.example.com:0", "backend-address": "127.0.0.1:1"}, "--server-address", "out of range"),
        (
            {"server-address": ["a.example.com", 5], "backend-address": "127.0.0.1:1"},
            "--server-address[1]",
            "expected a string",
        ),
        ({"server-address": "t.example.com", "backend-address": "127.0.0.1"}, "--backend-address", "missing ':port'"),
        ({"server-address": "t.example.com", "backend-address": "bad_host:80"}, "--backend-address", "underscores"),
        ({"server-address": "t.example.com", "backend-address": ""}, "--backend-address", "expected host:port"),
        (
            {"server-address": "t.example.com", "backend-address": "127.0.0.1:1", "server-trust": "insecure"},
            "--server-trust",
            "must be one of system, ca-file",
        ),
        (
            {"server-address": "t.example.com", "backend-address": "127.0.0.1:1", "server-ca-file": "/nonexistent/ca"},
            "--server-ca-file",
            "cannot read /nonexistent/ca",
        ),
        (
            {
                "server-address": "t.example.com",
                "backend-address": "127.0.0.1:1",
                "server-trust": "system",
                "server-ca-file": "/x/ca",
            },
            "--server-ca-file",
            "only allowed",
        ),
        (
            {"server-address": "t.example.com", "backend-address": "127.0.0.1:1", "hostname": "x"},
            "--hostname",
            "not a client",
        ),
    ],
)
def test_override_errors(env, overrides, key, message):
    with pytest.raises(ConfigError) as e:
        load_client_config(None, overrides=overrides, env=env)
    assert e.value.file == "command line"
    assert e.value.key == key, e.value
    assert message in e.value.message, e.value
    assert str(e.value).startswith(f"command line: {key}: ")


def test_override_backend_address_conflicts_with_file_services(write, env):
    path = write(CLIENT_MIN)
    with pytest.raises(ConfigError) as e:
        load_client_config(path, overrides={"backend-address": "127.0.0.1:9"}, env=env)
    assert (e.value.file, e.value.key) == ("command line", "--backend-address")
    assert str(path) in e.value.message


def test_override_server_address_skips_the_files_value(write, env):
    path = write(CLIENT_MIN.replace('"tunnel.example.com"', '"192.0.2.1"'))
    config = load_client_config(path, overrides={"server-address": "t.example.com"}, env=env)
    assert config.server_addresses == (("t.example.com", 443),)


def test_config_objects_are_frozen(write, env):
    config = load_server_config(write(SERVER_MIN), env=env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.active_streams = 1


def test_terminate_without_public_cert_dir_uses_the_xdg_default(write, env):
    text = _client_with("", _service(HOSTS_A, BACKEND) + "\n" + _service(HOSTS_B, BACKEND, TERMINATE))
    client = load_client_config(write(text), env=env)
    assert client.public_cert_dir == default_client_public_cert_dir(env)
    assert client.acme is None


def test_punycode_and_ipv6_backends_pass_for_both_roles(write, env):
    """Mixed case, one trailing dot and xn-- A-labels are valid spellings (the e2e control case)."""
    path = write(f"""
[server]
hostname = "Tunnel.Example.COM."
[[server.tunnels]]
public-hostnames = ["xn--bcher-kva.example", "App.Example.COM."]
client-identities = ["{ID1}", "{ID2}"]
[client]
server-address = "TUNNEL.example.com."
[[client.services]]
public-hostnames = ["xn--bcher-kva.example", "app.example.com."]
backend-address = "[::1]:8443"
""")
    assert load_server_config(path, env=env).tunnels[0].public_hostnames == ("xn--bcher-kva.example", "app.example.com")
    client = load_client_config(path, env=env)
    assert client.server_addresses == (("tunnel.example.com", 443),)
    assert client.services[0].backend_address == ("::1", 8443)


def test_terminate_hostnames(write, env):
    text = _client_with("", _service(HOSTS_A, BACKEND) + "\n" + _service(HOSTS_B, BACKEND, TERMINATE))
    assert load_client_config(write(text), env=env).terminate_hostnames == ["b.example.com"]


# --- peek: one key of a config that may be incomplete ------------------------


def test_peek_resolves_folder_keys_like_the_loaded_config(write, env, tmp_path, home):
    path = write('[server]\ncert-dir = "material/cert"\n[client]\nidentity-dir = "~/id"\n')
    assert peek(path, "server.cert-dir", env) == tmp_path / "etc/material/cert"
    assert peek(path, "client.identity-dir", env) == home / "id"


def test_peek_returns_other_values_as_written_and_none_when_absent(write, env):
    path = write('[server]\nhostname = "Tunnel.Example.com"\n')
    assert peek(path, "server.hostname", env) == "Tunnel.Example.com"
    assert peek(path, "server.cert-dir", env) is None
    assert peek(path, "client.services", env) is None
    assert peek(None, "server.cert-dir", env) is None


def test_peek_names_the_key_and_the_file(write, env):
    path = write("[server]\ncert-dir = 5\n")
    with pytest.raises(ConfigError) as e:
        peek(path, "server.cert-dir", env)
    assert str(e.value) == f"{path}: server.cert-dir: expected a string, got an integer"
    path = write("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        peek(path, "server.cert-dir", env)
