"""Release surfaces tested as an operator would use them: wheel, make install, units, versions."""

import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

import runewarp

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 600)
    proc = subprocess.run(cmd, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_one_version_everywhere():
    version = runewarp.__version__
    assert importlib.metadata.version("runewarp") == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)
    assert released and released[0] == version
    assert f'org.opencontainers.image.version="{version}"' in (ROOT / "Dockerfile").read_text()
    out = run([sys.executable, "-m", "runewarp", "--version"]).stdout
    assert out.strip() == f"runewarp {version}"


def test_changelog_has_an_unreleased_section_and_dated_form():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert text.index("## [Unreleased]") < text.index(f"## [{runewarp.__version__}]")


@pytest.mark.timeout(900)
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    wheels = list(dist.glob("runewarp-*.whl"))
    sdists = list(dist.glob("runewarp-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)])

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0])])
    cli = str(env_dir / "bin" / "runewarp")
    outside = tmp_path / "elsewhere"  # no access to the source tree
    outside.mkdir()
    assert run([cli, "--version"], cwd=outside).stdout.strip() == f"runewarp {runewarp.__version__}"
    assert "Usage:" in run([cli, "--help"], cwd=outside).stdout
    identity = run([cli, "client", "identity", "init", "--dir", str(tmp_path / "id")],
                   cwd=outside).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", identity)
    demo = run([cli, "demo"], cwd=outside, timeout=120)
    assert "TLS passed through" in demo.stdout
    imported = run([str(py), "-c", "import runewarp; print(runewarp.__file__)"], cwd=outside)
    assert str(env_dir) in imported.stdout


def test_example_configs_are_valid_once_completed(tmp_path):
    """conf/ as shipped refuses to start on its placeholder identity; completed, it loads."""
    from runewarp.config import load_client_config, load_server_config
    from runewarp.errors import ConfigError

    env = {"HOME": str(tmp_path)}
    with pytest.raises(ConfigError) as refused:
        load_server_config(ROOT / "conf" / "server.toml", env=env)
    assert str(refused.value).startswith(f"{ROOT / 'conf' / 'server.toml'}: server.tunnels[0].client-identity: ")
    assert "paste the real one printed by 'runewarp client identity show'" in str(refused.value)

    state = tmp_path / "state"
    (state / "client").mkdir(parents=True)
    (state / "client" / "server-ca.crt").write_text("")
    for name in ("server.toml", "client.toml"):
        text = (ROOT / "conf" / name).read_text().replace("/var/lib/runewarp", str(state))
        (tmp_path / name).write_text(text.replace("0" * 64, "ab" * 32))
    server = load_server_config(tmp_path / "server.toml", env=env)
    assert server.public_bind_addresses == (("0.0.0.0", 443),)
    assert server.cert_dir == state / "server" / "cert"
    client = load_client_config(tmp_path / "client.toml", env=env)
    assert client.services[0].backend_address == ("127.0.0.1", 8443)
    assert client.identity_dir == state / "client" / "identity"


@pytest.mark.parametrize("role", ["server", "client"])
def test_template_limits_comments_are_every_key_at_its_default(tmp_path, role):
    """Uncommenting the whole [<role>.limits] block changes nothing (and misses no key)."""
    from dataclasses import replace

    from runewarp import config

    lines, block = [], False
    for line in (ROOT / "conf" / f"{role}.toml").read_text().replace("0" * 64, "ab" * 32).splitlines():
        block = block and line.startswith("# ") or line == f"# [{role}.limits]"
        lines.append(line[2:] if block else line)
    text = "\n".join(lines).replace("/var/lib/runewarp", str(tmp_path))
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "server-ca.crt").write_text("")
    (tmp_path / "c.toml").write_text(text)
    load = config.load_server_config if role == "server" else config.load_client_config
    limits = load(tmp_path / "c.toml", env={"HOME": str(tmp_path)}).limits
    table = tomllib.loads(text)[role]["limits"]
    known = config._SERVER_LIMITS if role == "server" else config._CLIENT_LIMITS
    assert set(table) == set(known), "the template lists every limit key"
    # active-streams-per-tunnel has no fixed default (all with one Tunnel, half with several).
    assert replace(limits, active_streams_per_tunnel=0) == config.Limits()


def test_untouched_template_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runewarp", "server", "-c", str(ROOT / "conf" / "server.toml")],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME=str(tmp_path)))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        f"error: {ROOT / 'conf' / 'server.toml'}: server.tunnels[0].client-identity: the all-zero placeholder")


# -- make demo / runewarp demo --

def test_make_demo_uses_a_runtime_only_venv():
    dry = run(["make", "-n", "-C", str(ROOT), "demo", "VENV_RUN=/nonexistent/venv"]).stdout
    assert "pip install -q --disable-pip-version-check -e ." in dry
    assert "requirements-test" not in dry and "/nonexistent/venv/bin/runewarp demo" in dry


@pytest.mark.timeout(900)
def test_make_demo_installs_no_test_or_release_tools(tmp_path):
    venv_run = tmp_path / "venv-run"
    out = run(["make", "-C", str(ROOT), "demo", f"VENV_RUN={venv_run}", f"PYTHON={sys.executable}"],
              timeout=900).stdout
    assert "TLS passed through" in out
    installed = {line.split("==")[0].lower() for line in
                 run([str(venv_run / "bin" / "python"), "-m", "pip", "freeze", "--all"]).stdout.split()}
    assert "gevent" in installed and "certbot" in installed
    assert not installed & {"pytest", "hypothesis", "ruff", "build", "twine", "pytest-timeout"}


def test_demo_prints_its_configs_and_says_it_removed_them(tmp_path):
    out = run([sys.executable, "-m", "runewarp", "demo"], cwd=tmp_path, timeout=120).stdout
    folder = re.search(r"^demo folder: (\S+)$", out, re.M).group(1)
    assert f"--- {folder}/server.toml\n[server]\n" in out and 'hostname = "tunnel.example.com"' in out
    assert f"--- {folder}/client.toml\n[client]\n" in out and "[[client.services]]" in out
    assert f"removed the demo folder {folder}" in out and not Path(folder).exists()


# -- bind errors name the key and the address --

def _server_config(tmp_path, address, key="public"):
    cert = tmp_path / "cert"
    run([sys.executable, "-m", "runewarp", "server", "cert", "init", "--hostname", "tunnel.example.com",
         "--dir", str(cert)])
    path = tmp_path / "server.toml"
    binds = f'public-bind-address = "{address}"' if key == "public" else \
        f'public-bind-address = "127.0.0.1:0"\ntunnel-bind-address = "{address}"'
    path.write_text(f'[server]\nhostname = "tunnel.example.com"\n{binds}\n'
                    f'cert-dir = "{cert}"\n[[server.tunnels]]\npublic-hostnames = ["app.example.com"]\n'
                    f'client-identity = "{"ab" * 32}"\n')
    return path


@pytest.mark.parametrize("key", ["public", "tunnel"])
def test_address_in_use_names_file_key_and_address(tmp_path, key):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = _server_config(tmp_path, address, key)
        proc = subprocess.run([sys.executable, "-m", "runewarp", "server", "-c", str(config)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {config}: server.{key}-bind-address: {address}: address already in use\n"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_privileged_port_without_the_capability_says_how_to_grant_it(tmp_path):
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= 1023:
            pytest.skip("ports below 1024 need no capability on this host")
    port = next(p for p in range(1023, 900, -1) if _free(p))
    config = _server_config(tmp_path, f"127.0.0.1:{port}")
    proc = subprocess.run(["setpriv", "--bounding-set=-net_bind_service", sys.executable, "-m", "runewarp",
                           "server", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {config}: server.public-bind-address: 127.0.0.1:{port}: "
                                  "permission denied; ports below 1024 need CAP_NET_BIND_SERVICE")
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in proc.stderr
    assert "setcap cap_net_bind_service=+ep" in proc.stderr


def _free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
