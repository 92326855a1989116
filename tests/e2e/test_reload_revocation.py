"""A reload that removes a Client identity from a Tunnel closes that identity's established
Tunnel connections and the Visitors spliced through them; other Tunnels are untouched,
and the removed identity cannot join again."""

import signal

import pytest

from .helpers import ECHO, closed_by_peer, echo_visitor, round_trip

pytestmark = pytest.mark.e2e
OTHER = "other.example.com"


def test_reload_revokes_an_established_member_and_its_visitors(deployment, echo_backend):
    revoked, kept, newcomer = (deployment.identity(n) for n in ("client-a", "client-b", "client-c"))
    server = deployment.start_server([("apps", [ECHO], [revoked]), ("other", [OTHER], [kept])])
    client_a = deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    deployment.start_client("client-b", [([OTHER], echo_backend.address)])
    server.wait_count("tunnel-connection-established", 2)
    port = deployment.public_port
    doomed = echo_visitor(port)
    survivor = echo_visitor(port, hostname=OTHER)
    try:
        assert round_trip(doomed, b"before", timeout=5) < 5
        assert round_trip(survivor, b"before", timeout=5) < 5
        deployment.server_config([("apps", [ECHO], [newcomer]), ("other", [OTHER], [kept])])
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_for("server-reloaded", start=mark)
        assert closed_by_peer(doomed, timeout=5) < 5
        server.wait_for(r"tunnel-connection-closed tunnel=apps .*reason=\"?identity no longer "
                        "authorized", start=mark)
        client_a.wait_for("tunnel-connection-(lost|draining)")
        server.wait_for(f"tunnel-connection-refused .*client-identity={revoked}", start=mark)
        assert round_trip(survivor, b"after", timeout=5) < 5
        assert not server.count(r"tunnel-connection-closed tunnel=other")
    finally:
        doomed.close()
        survivor.close()
    with pytest.raises((AssertionError, OSError)):  # nobody serves "apps" now
        echo_visitor(port).close()
