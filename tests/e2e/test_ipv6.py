"""IPv6 end to end: a Server bound on [::1], a Client that dials it over IPv6, a Local
backend on [::1], and the Visitor's IPv6 address carried to the Client in the PROXY v2
header; a dual-stack Server ([::]) passes an IPv4 Visitor on as its mapped address."""

import re
import socket

import pytest

from runewarp import harness

from ..conftest import SERVER_HOSTNAME, Proc
from .helpers import ECHO, EchoBackend, echo_visitor, round_trip


def _has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")]


def start_pair(deployment, bind):
    """Server on `bind` ("[::1]" or "[::]"), Client dialing [::1], echo backend on [::1]."""
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [ECHO], [identity])])
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"{bind}:0"'))
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    port = int(server.wait_for(harness.SERVER_READY.format(re.escape(bind))).group(1))
    deployment.public_port = port
    deployment.env = harness.resolve_env(SERVER_HOSTNAME, "::1")
    backend = EchoBackend("::1")
    client = deployment.start_client("client-a", [([ECHO], backend.address)])
    return server, client, backend, port


def test_ipv6_visitor_server_client_and_backend(deployment):
    server, client, backend, port = start_pair(deployment, "[::1]")
    try:
        server.wait_for(r"tunnel-connection-established tunnel=apps peer=\[::1\]:")
        with echo_visitor(port, host="::1") as visitor:
            assert round_trip(visitor, b"over IPv6", timeout=5) < 5
            seen = f"[::1]:{visitor.getsockname()[1]}"
        server.wait_for(f"visitor-routed visitor={re.escape(seen)} ")
        client.wait_for(f"stream-routed .*visitor={re.escape(seen)}")  # from the PROXY header
    finally:
        backend.close()


def test_dual_stack_server_passes_an_ipv4_visitor_as_its_mapped_address(deployment):
    server, client, backend, port = start_pair(deployment, "[::]")
    try:
        with echo_visitor(port, host="127.0.0.1") as visitor:
            assert round_trip(visitor, b"mapped", timeout=5) < 5
            seen = f"[::ffff:127.0.0.1]:{visitor.getsockname()[1]}"
        server.wait_for(f"visitor-routed visitor={re.escape(seen)} ")
        client.wait_for(f"stream-routed .*visitor={re.escape(seen)}")
    finally:
        backend.close()
