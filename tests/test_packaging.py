"""Release surfaces tested as an operator would use them: wheel, make install, units, versions."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
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


@pytest.mark.timeout(900)
def test_make_install_into_destdir_keeps_existing_configs(tmp_path):
    destdir = tmp_path / "root"
    prefix = "/opt/rw"
    etc = destdir / "etc" / "runewarp"
    etc.mkdir(parents=True)
    (etc / "server.toml").write_text("# operator's own\n")
    make = ["make", "-C", str(ROOT), f"DESTDIR={destdir}", f"PREFIX={prefix}",
            "SYSCONFDIR=/etc", f"PYTHON={sys.executable}"]
    run([*make, "install"])
    staged = destdir / prefix.lstrip("/")
    link = staged / "bin" / "runewarp"
    assert os.readlink(link) == f"{prefix}/lib/runewarp/bin/runewarp"
    script = (staged / "lib" / "runewarp" / "bin" / "runewarp").read_text().splitlines()[0]
    assert script.startswith(f"#!{prefix}/lib/runewarp/bin/python"), "#! must name the final PREFIX"
    assert (etc / "server.toml").read_text() == "# operator's own\n"
    assert "[[client.services]]" in (etc / "client.toml").read_text()
    units = staged / "lib" / "systemd" / "system"
    assert (units / "runewarp-server.service").exists()
    assert (units / "runewarp-renew-acme.timer").exists()
    out = run([str(staged / "lib" / "runewarp" / "bin" / "python"), "-m", "runewarp", "--version"])
    assert out.stdout.strip() == f"runewarp {runewarp.__version__}"
    run([*make, "uninstall"])
    assert not (staged / "lib" / "runewarp").exists() and not link.exists()
    assert (etc / "server.toml").exists(), "uninstall must keep operator configs"


def test_example_configs_are_valid(tmp_path):
    from runewarp.config import load_client_config, load_server_config

    env = {"HOME": str(tmp_path)}
    server = load_server_config(ROOT / "conf" / "server.toml", env=env)
    assert server.public_bind_address == ("0.0.0.0", 443)
    client = load_client_config(ROOT / "conf" / "client.toml", env={
        **env, "XDG_DATA_HOME": str(tmp_path)})
    assert client.services[0].backend_address == ("127.0.0.1", 8443)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    for name in ("runewarp-server.service", "runewarp-client.service",
                 "runewarp-renew-acme.service", "runewarp-renew-acme.timer"):
        text = (ROOT / "conf" / name).read_text()
        if name in ("runewarp-server.service", "runewarp-client.service"):
            assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
        if name.endswith(".service"):
            assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
        (tmp_path / name).write_text(text.replace("/usr/local/bin/runewarp",
                                                  str(Path(sys.executable).parent / "runewarp")))
    units = sorted(map(str, tmp_path.glob("runewarp-*")))
    proc = subprocess.run(["systemd-analyze", "verify", *units],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unknown key" not in proc.stderr
