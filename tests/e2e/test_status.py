"""`runewarp server status` / `runewarp client status` against a real running Server and
Client with their metrics listeners, and the exits when nothing answers."""

import json

import pytest

from ..conftest import Proc, free_port, run_cli
from .helpers import ECHO, echo_visitor

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(deployment, echo_backend):
    """A Server and a Client with metrics listeners, one Visitor stream held open."""
    identity = deployment.identity("client-a")
    server_metrics, client_metrics = free_port(), free_port()
    server = deployment.start_server(
        [("apps", [ECHO], [identity])],
        extra=f'[server.metrics]\nbind-address = "0.0.0.0:{server_metrics}"')
    client_path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    with client_path.open("a") as config:
        config.write(f'\n[client.metrics]\nbind-address = "127.0.0.1:{client_metrics}"\n')
    client = Proc(["client", "-c", client_path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    visitor = echo_visitor(deployment.public_port)
    server.wait_for("visitor-routed")
    yield deployment, server, client, identity, client_path, echo_backend
    visitor.close()


def test_server_status_shows_the_tunnel_its_member_and_the_certificate(pair):
    deployment, _server, _client, identity, _path, _backend = pair
    path = deployment.dir / "server.toml"
    out = run_cli("server", "status", "-c", path).stdout
    assert "apps" in out and ECHO in out
    assert identity[:12] in out and identity not in out
    assert "tunnel.example.com" in out  # the Server certificate, with its days left
    document = json.loads(run_cli("server", "status", "-c", path, "--json").stdout)
    assert document["role"] == "server" and document["ready"] is True
    (tunnel,) = document["tunnels"]
    assert tunnel["name"] == "apps" and tunnel["public_hostnames"] == [ECHO]
    (member,) = tunnel["members"]
    assert member["client_identity"] == identity and member["active_streams"] == 1
    assert [c["kind"] for c in document["certificates"]] == ["server"]


def test_client_status_shows_the_server_connection_and_the_service(pair):
    _deployment, _server, _client, _identity, path, backend = pair
    out = run_cli("client", "status", "-c", path).stdout
    assert "established" in out and backend.address in out and "passthrough" in out
    document = json.loads(run_cli("client", "status", "-c", path, "--json").stdout)
    assert document["role"] == "client" and document["ready"] is True
    (server,) = document["servers"]
    assert server["state"] == "established" and server["active_streams"] == 1
    (service,) = document["services"]
    assert service["backend"] == backend.address and service["tls_mode"] == "passthrough"


def test_status_of_a_stopped_server_says_it_is_not_running(pair):
    deployment, server, _client, _identity, _path, _backend = pair
    path = deployment.dir / "server.toml"
    server.stop()
    proc = run_cli("server", "status", "-c", path, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "error: the server is not running: nothing answers at" in proc.stderr
    assert "server.metrics.bind-address" in proc.stderr


def test_status_without_a_metrics_table_names_the_key(deployment):
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [ECHO], [identity])])
    proc = run_cli("server", "status", "-c", path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "[server.metrics]" in proc.stderr and "server.metrics.bind-address" in proc.stderr
