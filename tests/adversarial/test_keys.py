"""Loose key files (issue 10, item 16): a private key readable by others is named in a
`key-permissions` warning at start, and with `strict-permissions = true` the process
refuses to start (exit 2, one error line naming the file and the key).

server.key at 0644 for the Server, client.key at 0666 for the Client; and
`identity renew` leaves client.key 0600 whatever its mode was.
"""

import re

import pytest

from ..conftest import run_cli
from ..e2e.helpers import curl
from ..e2e.peers import APP
from .conftest import assert_clean, start_client, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(40)]


def one_error_line(proc, key_file, key):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(key_file) in lines[0] and key in lines[0], lines


def test_server_warns_about_a_readable_key_and_serves(deployment, backend):
    key_file = deployment.cert_dir / "server.key"
    key_file.chmod(0o644)
    real = deployment.identity("client-a")
    server = start_server(deployment, [("apps", [APP], [real])])
    server.wait_for(f"key-permissions .*{re.escape(str(key_file))}", timeout=5)
    client = start_client(deployment, "client-a", [([APP], backend.address)])
    assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"
    assert_clean(server, client)


def test_server_with_strict_permissions_refuses_a_readable_key(deployment):
    key_file = deployment.cert_dir / "server.key"
    key_file.chmod(0o644)
    real = deployment.identity("client-a")
    path = deployment.server_config([("apps", [APP], [real])], "strict-permissions = true")
    proc = run_cli("server", "-c", path, env=deployment.env, check=False, timeout=20)
    one_error_line(proc, key_file, "server.strict-permissions")


def test_client_warns_about_a_readable_key_and_serves(deployment, backend):
    real = deployment.identity("client-a")
    key_file = deployment.dir / "client-a" / "client.key"
    key_file.chmod(0o666)
    server = start_server(deployment, [("apps", [APP], [real])])
    client = start_client(deployment, "client-a", [([APP], backend.address)])
    client.wait_for(f"key-permissions .*{re.escape(str(key_file))}", timeout=5)
    assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"
    assert_clean(server, client)


def test_client_with_strict_permissions_refuses_a_readable_key(deployment):
    deployment.identity("client-a")
    key_file = deployment.dir / "client-a" / "client.key"
    key_file.chmod(0o666)
    deployment.public_port = 443  # never dialed: the Client must stop before
    path = deployment.client_config("client-a", [([APP], "127.0.0.1:9")])
    path.write_text(path.read_text().replace("[client]\n", "[client]\nstrict-permissions = true\n", 1))
    proc = run_cli("client", "-c", path, env=deployment.env, check=False, timeout=20)
    one_error_line(proc, key_file, "client.strict-permissions")


def test_identity_renew_writes_the_key_owner_only(deployment):
    deployment.identity("client-a")
    key_file = deployment.dir / "client-a" / "client.key"
    key_file.chmod(0o666)
    run_cli("client", "identity", "renew", "--dir", deployment.dir / "client-a")
    assert key_file.stat().st_mode & 0o777 == 0o600
