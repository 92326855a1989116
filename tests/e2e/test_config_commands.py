"""`runewarp config …` as real processes: check beside a running Server and Client (no bind,
nothing written, the Server keeps serving), check of a certificate due for renewal, and
init → check → edit → show with exit statuses and exact first lines."""

import datetime as dt
import os
import stat
import sys
import tomllib

import pytest

from runewarp import material

from ..conftest import run_cli
from ..test_material_store import raw as snapshot
from .helpers import Backend, curl

pytestmark = pytest.mark.e2e
APP = "app.example.com"
DAY = dt.timedelta(days=1)


@pytest.fixture
def user_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "VISUAL", "EDITOR")}
    env["HOME"] = str(tmp_path / "home")
    return env


@pytest.mark.timeout(120)
def test_check_while_the_server_and_client_run(deployment, tmp_path):
    backend = Backend(tmp_path, "app", [APP])
    try:
        identity = deployment.identity("client-a")
        server = deployment.start_server([("apps", [APP], [identity])])
        deployment.start_client("client-a", [([APP], backend.address)])
        assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"
        # The file now names the port the Server holds: a check that bound would fail.
        server_toml = deployment.dir / "server.toml"
        server_toml.write_text(server_toml.read_text().replace(
            '"127.0.0.1:0"', f'"127.0.0.1:{deployment.public_port}"'))
        before = snapshot(deployment.dir)
        for role, path in (("server", server_toml), ("client", deployment.dir / "client-a.toml")):
            done = run_cli("config", "check", role, "-c", path, env=deployment.env, check=False)
            assert (done.returncode, done.stdout, done.stderr) == (0, f"ok: {path}\n", "")
        assert snapshot(deployment.dir) == before
        assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"
        assert server.popen.poll() is None
    finally:
        backend.stop()


@pytest.mark.timeout(120)
def test_check_leaves_a_due_certificate_to_the_start(deployment, processes):
    """Check passes a certificate a start renews, and writes nothing; the start then renews."""
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [APP], [identity])])
    aged = material.renew_server_cert(deployment.cert_dir,
                                      now=dt.datetime.now(dt.UTC) - 61 * DAY)
    before = snapshot(deployment.cert_dir)
    done = run_cli("config", "check", "-c", path, env=deployment.env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ok: {path}\n", "")
    assert snapshot(deployment.cert_dir) == before
    server = deployment.start_server([("apps", [APP], [identity])])
    server.wait_for("server-certificate-renewed")
    assert material.load_certificate(deployment.cert_dir / "server.crt").serial_number != aged.serial


@pytest.mark.timeout(120)
def test_init_check_edit_show(tmp_path, user_env):
    path = tmp_path / "home" / ".config" / "runewarp" / "config.toml"
    done = run_cli("config", "init", "server", "--hostname", "tunnel.example.com",
                   env=user_env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{path}\n", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    written = path.read_text()

    done = run_cli("config", "init", "client", env=user_env, check=False)
    assert done.returncode == 1 and done.stderr.splitlines()[0] == (
        f"error: {path} already exists; change it with 'runewarp config edit -c {path}'")
    assert path.read_text() == written

    done = run_cli("config", "check", env=user_env, check=False)
    assert done.returncode == 2 and done.stderr.splitlines()[0] == (
        f"error: {path}: server.tunnels[0].client-identity: the all-zero placeholder is not a "
        "Client identity; paste the real one printed by 'runewarp client identity show' on "
        "the Client")

    editor = tmp_path / "editor.py"
    editor.write_text("import sys\ntext = open(sys.argv[1]).read()\n"
                      "open(sys.argv[1], 'w').write(text.replace('hostname =', 'hostnam ='))\n")
    done = run_cli("config", "edit", env={**user_env, "EDITOR": f"{sys.executable} {editor}"},
                   check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"error: {path}: server.hostnam: unknown key; did you mean 'hostname'?"]
    assert "hostnam =" in path.read_text()

    editor.write_text("import sys\ntext = open(sys.argv[1]).read()\n"
                      "open(sys.argv[1], 'w').write(text.replace('hostnam =', 'hostname =')"
                      f".replace('0' * 64, {'a' * 64!r}))\n")
    done = run_cli("config", "edit", env={**user_env, "EDITOR": f"{sys.executable} {editor}"},
                   check=False)
    assert done.returncode == 2 and "runewarp server cert init" in done.stderr  # material next
    assert run_cli("server", "cert", "init", env=user_env).returncode == 0
    done = run_cli("config", "check", "server", env=user_env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ok: {path}\n", "")

    done = run_cli("config", "show", env=user_env, check=False)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == \
        f"# effective server config from {path}"
    shown = tomllib.loads(done.stdout)["server"]
    assert shown["hostname"] == "tunnel.example.com"
    assert shown["cert-dir"] == str(tmp_path / "home/.local/share/runewarp/server/cert")
