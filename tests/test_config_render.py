"""config/render.py: the effective config as TOML that loads back to an equal config, and
covers every key of the key table (a new key is shown, or this test names it)."""

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from runewarp import material
from runewarp.config import load_client_config, load_server_config, render as render_module, schema
from runewarp.config.render import NotShown, SHOWN_BY, render, toml_string

from .conftest import cli_material

ROOT = Path(__file__).resolve().parent.parent
IDENTITY_A = "a" * 64
IDENTITY_B = "b" * 64
LOADERS = {"server": load_server_config, "client": load_client_config}


def template(name, tmp_path):
    """A shipped template made loadable: its folders under tmp_path, its identity real,
    the CA bundle it names present."""
    text = (ROOT / "conf" / name).read_text().replace("/var/lib/runewarp", str(tmp_path / "lib"))
    ca = tmp_path / "lib" / "client" / "server-ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("")
    return text.replace("0" * 64, IDENTITY_A)


SERVER_ACME = f"""
log-level = "debug"
log-format = "json"
[server]
hostname = "Tunnel.Example.com."
public-bind-address = "[::1]:8443"
tunnel-bind-address = "127.0.0.1:0"
graceful-shutdown-duration = 2.5
strict-permissions = true
access-log = false
[server.acme]
email = "ops@example.com"
directory-url = "https://acme.example.net/dir"
[server.limits]
active-streams-per-tunnel = 7
stream-idle-timeout = 0
[server.metrics]
bind-address = "127.0.0.1:0"
statsd-address = "localhost:8125"
statsd-interval = 0.5
[[server.tunnels]]
public-hostnames = ["a.example.com", "B.example.com"]
client-identities = ["{IDENTITY_A}", "{IDENTITY_B}"]
[[server.tunnels]]
name = "two"
public-hostnames = ["c.example.com"]
client-identity = "{"c" * 64}"
"""

SERVER_ODD_PATH = f"""
[server]
hostname = "tunnel.example.com"
cert-dir = 'we"ird\\ dir/\u00fc\tx'
[[server.tunnels]]
public-hostnames = ["a.example.com"]
client-identity = "{IDENTITY_A}"
"""



def server_api(tmp):
    """[server.api] with every key, its files made (they must be readable)."""
    for name in ("etcd-ca.pem", "etcd.crt", "etcd.key"):
        (tmp / name).write_text("placeholder\n")
    cli_material(tmp / "api-ca", "client", "visitor-ca", "init")
    (tmp / "api-ca.pem").write_bytes((tmp / "api-ca" / "visitor-ca.crt").read_bytes())
    return f"""
[server]
hostname = "tunnel.example.com"
[server.api]
bind-address = "127.0.0.1:9470"
client-ca-file = "{tmp / 'api-ca.pem'}"
state-file = "api/tunnels.json"
etcd-endpoints = ["http://127.0.0.1:2379", "https://[::1]:2379"]
etcd-prefix = "/fleet/tunnels/"
etcd-ca-file = "{tmp / 'etcd-ca.pem'}"
etcd-cert-file = "{tmp / 'etcd.crt'}"
etcd-key-file = "{tmp / 'etcd.key'}"
"""


CLIENT_ACME = """
[client]
server-address = ["tunnel.example.com", "Tunnel2.example.com:4443", "tunnel3.example.com.:4444"]
identity-dir = "~/id"
[client.acme]
email = "ops@example.com"
state-dir = "acme"
[client.limits]
active-streams = 3
[client.metrics]
bind-address = "[::1]:0"
[[client.services]]
public-hostnames = ["a.example.com"]
backend-address = "localhost:8080"
tls-mode = "terminate"
[[client.services]]
public-hostnames = ["b.example.com"]
backend-address = "[::1]:8443"
health-check = { interval = 3, timeout = 1.5, kind = "tls" }
"""

CLIENT_TERMINATE = """
[client]
server-address = "tunnel.example.com:4443"
unhealthy-after = 5
[[client.services]]
public-hostnames = ["a.example.com"]
backend-address = "127.0.0.1:8080"
tls-mode = "terminate"
"""

CLIENT_CATCH_ALL = """
[client]
server-address = "tunnel.example.com"
[[client.services]]
backend-address = "127.0.0.1:8443"
"""

def managed(role, tmp_path):
    """A Server or Client with its managed table, on a real control-plane CA."""
    ca = material.init_control_plane_ca(tmp_path / "ca").cert_path
    if role == "server":
        return SERVER_ODD_PATH + f'[server.managed]\nclient-ca-file = "{ca}"\naccept-self-signed = true\n'
    return CLIENT_CATCH_ALL + f'[client.managed]\ncert-file = "{ca}"\n'


CASES = {
    "conf/server.toml": ("server", lambda tmp: template("server.toml", tmp)),
    "conf/client.toml": ("client", lambda tmp: template("client.toml", tmp)),
    "server-acme": ("server", lambda tmp: SERVER_ACME),
    "server-odd-path": ("server", lambda tmp: SERVER_ODD_PATH),
    "server-api": ("server", server_api),
    "client-acme": ("client", lambda tmp: CLIENT_ACME),
    "client-terminate": ("client", lambda tmp: CLIENT_TERMINATE),
    "client-catch-all": ("client", lambda tmp: CLIENT_CATCH_ALL),
    "server-managed": ("server", lambda tmp: managed("server", tmp)),
    "client-managed": ("client", lambda tmp: managed("client", tmp)),
}


def load(role, path, env):
    return LOADERS[role](path, env=env)


def comparable(cfg):
    """The config without where it came from (and whether the ACME folder was written out)."""
    acme = cfg.acme and dataclasses.replace(cfg.acme, state_dir_explicit=False)
    return dataclasses.replace(cfg, source=None, acme=acme)


def shown(case, tmp_path, env):
    role, text = CASES[case]
    path = tmp_path / "etc" / "in.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text(tmp_path))
    cfg = load(role, path, env)
    return role, cfg, render(role, cfg)


@pytest.mark.parametrize("case", CASES)
def test_show_loads_back_to_the_same_config(case, tmp_path, env):
    role, cfg, text = shown(case, tmp_path, env)
    tomllib.loads(text)
    again = tmp_path / "elsewhere" / "shown.toml"  # relative paths were resolved: any folder
    again.parent.mkdir()
    again.write_text(text)
    assert comparable(load(role, again, env)) == comparable(cfg)


@pytest.mark.parametrize("case", CASES)
def test_the_first_line_names_the_file(case, tmp_path, env):
    role, cfg, text = shown(case, tmp_path, env)
    assert text.splitlines()[0] == f"# effective {role} config from {tmp_path / 'etc' / 'in.toml'}"


def test_the_first_line_says_when_there_was_no_file(env):
    cfg = load_client_config(None, overrides={"server-address": "tunnel.example.com",
                                              "backend-address": "127.0.0.1:1"}, env=env)
    assert render("client", cfg).splitlines()[0] == \
        "# effective client config from defaults and the command line (no file)"


def test_unset_keys_and_tables_are_comments(tmp_path, env):
    _, _, text = shown("conf/client.toml", tmp_path, env)
    lines = text.splitlines()
    assert "# public-cert-dir = unset" in lines
    assert "# [client.acme] unset" in lines
    _, _, text = shown("server-odd-path", tmp_path, env)
    assert "# tunnel-bind-address = unset" in text.splitlines()
    assert "# active-streams-per-tunnel = all of active-streams" in text.splitlines()


def covered(text):
    """Key paths (arrays as `[]`) the text gives a value, or says are unset."""
    paths = set()

    def walk(value, prefix):
        for name, item in value.items():
            path = f"{prefix}.{name}" if prefix else name
            paths.add(path)
            if isinstance(item, dict):
                walk(item, path)
            elif isinstance(item, list) and item and isinstance(item[0], dict):
                for entry in item:
                    walk(entry, f"{path}[]")

    walk(tomllib.loads(text), None)
    table = None
    for line in text.splitlines():
        header = re.fullmatch(r"(\[\[?)([a-z.-]+)\]\]?", line)
        if header:
            table = header[2] + ("[]" if header[1] == "[[" else "")
        elif match := re.fullmatch(r"# \[([a-z.-]+)\] unset", line):
            paths.add(match[1])
        elif match := re.fullmatch(r"# ([a-z-]+) = .*", line):
            paths.add(f"{table}.{match[1]}" if table else match[1])
    return paths


def test_every_key_of_the_key_table_is_shown(tmp_path, env):
    """Each role's cases together set every table, so every key's own line is checked."""
    seen = {"server": set(), "client": set()}
    for case in CASES:
        folder = tmp_path / case.replace("/", "-")
        folder.mkdir()
        role, _, text = shown(case, folder, env)
        seen[role] |= covered(text)
    seen["server"] |= {"server", *(k for k in SHOWN_BY if k.startswith("server."))}
    seen["client"] |= {"client"}
    for key in schema.KEYS:
        if key.path.startswith("proxy."):
            continue  # a Visitor's `runewarp proxy` file: `config show` shows the two roles
        roles = [r for r in seen if key.path.startswith(f"{r}.") or key.path == r] or list(seen)
        for role in roles:
            assert key.path in seen[role], f"config show does not show {key.path} ({role})"


def test_a_key_the_config_does_not_hold_is_named(tmp_path, env, monkeypatch):
    _, cfg, _ = shown("client-catch-all", tmp_path, env)
    extra = schema.Key("client.no-such-key", "string", None, "", "")
    monkeypatch.setattr(render_module.schema, "KEYS", (*schema.KEYS, extra))
    with pytest.raises(NotShown, match=r"^client\.no-such-key: the loaded ClientConfig has no 'no_such_key'"):
        render("client", cfg)


@given(st.text())
def test_any_string_is_a_toml_string(text):
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text
