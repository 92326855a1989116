"""Fixtures shared by the I/O tests."""

import pytest

from runewarp.tls import client_tunnel_context, server_tunnel_context

from ..conftest import SERVER_HOSTNAME, run_cli


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """(Server, Client) Tunnel TLS contexts from material our own CLI made."""
    root = tmp_path_factory.mktemp("material")
    run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", root / "server")
    run_cli("client", "identity", "init", "--dir", root / "client")
    server = server_tunnel_context(root / "server" / "server.crt", root / "server" / "server.key",
                                   authorize=lambda identity: True)
    client = client_tunnel_context(root / "client" / "client.crt", root / "client" / "client.key",
                                   "ca-file", root / "server" / "server-ca.crt")
    return server, client
