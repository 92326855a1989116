"""More than one public port end to end: real Server and Client processes on loopback,
curl as the Visitor; (port, hostname) picks the Tunnel, the PROXY header names the real
destination port, and a reload moves only the listeners the config moved."""

import signal
import socket

import pytest

from runewarp import harness
from runewarp.proto import proxyv2
from tests import clienthellos

from ..conftest import SERVER_HOSTNAME, Proc, free_port
from . import test_passthrough
from .helpers import ECHO, curl, echo_visitor
from .peers import FakeClientEnd, tunnel_tls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
backends = test_passthrough.backends  # the fixture: TLS backends with our certificates
APP, ALL = "app.example.com", "all.example.com"


def server_config(deployment, ports, tunnels):
    """`tunnels`: (name, hostnames, identity, public-ports or None)."""
    path = deployment.dir / "server.toml"
    path.write_text(harness.config_text("server", {
        "hostname": SERVER_HOSTNAME, "cert-dir": "server-cert", "graceful-shutdown-duration": 3,
        "public-bind-addresses": [f"127.0.0.1:{port}" for port in ports],
    }, [{"name": name, "public-hostnames": hosts, "client-identity": identity, "public-ports": only}
        for name, hosts, identity, only in tunnels], log_level="debug"))
    return path


def refused(port, hostname, ca):
    proc = curl(port, hostname, ca)
    return proc.returncode != 0 and not proc.stdout


def test_the_same_hostname_on_two_ports_reaches_two_tunnels(deployment, backends):
    first, second = backends("first", [APP]), backends("second", ["*.example.com"])
    id_a, id_b = deployment.identity("client-a"), deployment.identity("client-b")
    p1, p2 = free_port(), free_port()
    path = server_config(deployment, [p1, p2], [("first", [APP], id_a, [p1]),
                                                ("second", [APP, ALL], id_b, [p2])])
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for(f"server-ready .*public-bind-address=127.0.0.1:{p1} "
                    f"public-bind-addresses=127.0.0.1:{p1},127.0.0.1:{p2}")
    deployment.public_port = p1
    deployment.start_client("client-a", [([APP], first.address)])
    deployment.public_port = p2  # the Tunnel connection may come in on either port
    deployment.start_client("client-b", [([APP, ALL], second.address)])

    assert curl(p1, APP, first.ca).stdout == b"backend=first\n"
    assert curl(p2, APP, second.ca).stdout == b"backend=second\n"
    assert curl(p2, ALL, second.ca).stdout == b"backend=second\n"
    assert refused(p1, ALL, second.ca)  # "second" takes port p2 only
    server.wait_for(f"visitor-rejected .*public-hostname={ALL} reason=unknown-hostname")


def _new_header(end, before):
    """The PROXY header that opens a stream the Server opened since `before`, or None."""
    for sid, data in sorted(end.received.items()):
        if sid % 2 == 0 and sid not in before:
            decoded = proxyv2.decode(bytes(data))
            if decoded is not None:
                return decoded[0]
    return None


def test_the_proxy_header_to_the_client_names_the_port_the_visitor_dialed(deployment):
    identity = deployment.identity("client-a")
    p1, p2 = free_port(), free_port()
    path = server_config(deployment, [p1, p2], [("apps", [APP], identity, None)])
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready")
    end = FakeClientEnd(tunnel_tls(p1, deployment.ca_file, deployment.dir / "client-a"))
    end.join(hostnames=[APP])
    for port in (p2, p1):
        before = set(end.received)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(clienthellos.build(APP))
            end.pump_until(lambda before=before: _new_header(end, before) is not None)
            header = _new_header(end, before)
            assert header.destination == ("127.0.0.1", port)
            assert header.source == sock.getsockname()


def test_a_reload_adds_and_removes_public_ports_and_keeps_the_rest(deployment, echo_backend):
    identity = deployment.identity("client-a")
    p1, p2, p3 = free_port(), free_port(), free_port()
    path = server_config(deployment, [p1, p2], [("apps", [ECHO], identity, None)])
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready")
    deployment.public_port = p1
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    server_config(deployment, [p2, p3], [("apps", [ECHO], identity, None)])
    server.signal(signal.SIGHUP)
    server.wait_for("server-reloaded")
    server.wait_for(f"listener-moved listener=public address=127.0.0.1:{p3} previous=127.0.0.1:{p1}")
    assert server.count("listener-moved") == 1  # p2 stayed as it was
    for port in (p2, p3):
        echo_visitor(port).close()
    with pytest.raises(OSError):
        echo_visitor(p1).close()


def test_a_reload_applies_a_tunnels_public_ports_to_the_next_visitor(deployment, echo_backend):
    """public-ports = [p1] refuses a Visitor on p2; the reload to [p1, p2] routes it."""
    identity = deployment.identity("client-a")
    p1, p2 = free_port(), free_port()
    path = server_config(deployment, [p1, p2], [("apps", [ECHO], identity, [p1])])
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready")
    deployment.public_port = p1
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    echo_visitor(p1).close()
    with pytest.raises((AssertionError, OSError)):
        echo_visitor(p2).close()
    server_config(deployment, [p1, p2], [("apps", [ECHO], identity, [p1, p2])])
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for("server-reloaded", start=mark)
    echo_visitor(p2).close()
