"""`[client] server-name`: dial an IP address, check the Server certificate for the Server hostname."""

import os

import pytest

from runewarp import harness

from ..conftest import SERVER_HOSTNAME, Proc
from .helpers import curl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]
APP = "app.example.com"


def start_client(deployment, server_name, backend):
    """A Client dialing 127.0.0.1 with `server-name`, and without RUNEWARP_RESOLVE."""
    path = deployment.dir / "client-a.toml"
    path.write_text(harness.config_text("client", {
        "server-address": f"127.0.0.1:{deployment.public_port}", "server-name": server_name,
        "server-trust": "ca-file", "server-ca-file": "server-cert/server-ca.crt",
        "identity-dir": "client-a",
    }, [{"public-hostnames": [APP], "backend-address": backend.address}], log_level="debug"))
    env = {k: v for k, v in os.environ.items() if k != harness.RESOLVE_ENV}
    proc = Proc(["client", "-c", path], env=env)
    deployment.processes.append(proc)
    return proc


def test_client_dials_an_ip_address_and_checks_the_server_name(deployment, backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    client = start_client(deployment, SERVER_HOSTNAME, backend)
    client.wait_for(f"tunnel-connection-established server-address=127.0.0.1:{deployment.public_port}")
    proc = curl(deployment.public_port, APP, backend.ca)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"backend=app\n"


def test_the_server_name_is_the_sni(deployment, backend):
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [APP], [identity])])
    client = start_client(deployment, "other.example.com", backend)
    client.wait_for("tunnel-connection-failed server-address=127.0.0.1")
    # Not the Server hostname: the Server takes it for a Visitor's and drops it.
    server.wait_for("visitor-rejected .*public-hostname=other.example.com reason=unknown-hostname")
    assert client.count("tunnel-connection-established") == 0
