"""The access log end to end: a real Server, Client, echo backend and Visitor.

One `visitor-closed` (Server) and one `stream-closed` (Client) line per Visitor connection,
at info, joinable on the Visitor address; JSON carries numbers; `access-log = false`
moves both lines to debug.
"""

import json
import socket

import pytest

from ..conftest import Proc
from .helpers import ECHO, echo_visitor, recv_exactly

pytestmark = pytest.mark.e2e
PAYLOAD = b"x" * 70_000


def start_pair(deployment, echo_backend, server_extra="", client_extra="", log_format=None):
    identity = deployment.identity("client-a")
    server_path = deployment.server_config([("apps", [ECHO], [identity])], extra=server_extra)
    if log_format:
        server_path.write_text(f'log-format = "{log_format}"\n' + server_path.read_text())
    server = Proc(["server", "-c", server_path], env=deployment.env)
    deployment.processes.append(server)
    deployment.public_port = int(server.wait_for(
        r'server-ready.*public-bind-address"?[=:] ?"?127\.0\.0\.1:(\d+)').group(1))
    client_path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    text = client_path.read_text().replace("[client]\n", f"[client]\n{client_extra}\n")
    client_path.write_text((f'log-format = "{log_format}"\n' if log_format else "") + text)
    client = Proc(["client", "-c", client_path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    return server, client, identity


def visit(port):
    """One passthrough Visitor: ClientHello and PAYLOAD echoed back; its address."""
    sock = echo_visitor(port)
    try:
        sock.sendall(PAYLOAD)
        assert recv_exactly(sock, len(PAYLOAD)) == PAYLOAD
        return f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def fields(line):
    """key=value fields of a text line (our values here hold no spaces)."""
    return dict(part.split("=", 1) for part in line.split()[3:] if "=" in part)


def test_one_info_line_each_side_joined_on_the_visitor_address(deployment, echo_backend):
    server, client, identity = start_pair(deployment, echo_backend)
    visitor = visit(deployment.public_port)
    pattern = rf"INFO  {{}} .*visitor={visitor} "
    server_line = server.wait_for(pattern.format("visitor-closed")).string
    client_line = client.wait_for(pattern.format("stream-closed")).string
    s, c = fields(server_line), fields(client_line)
    after_hello = len(PAYLOAD)  # what the Client counts up
    assert s["public-hostname"] == c["public-hostname"] == ECHO
    assert s["tunnel"] == "apps"
    assert s["client-identity"] == identity[:12] and len(s["client-instance"]) == 12
    assert int(c["bytes-up"]) == after_hello
    assert int(s["bytes-up"]) == int(s["bytes-down"]) == int(c["bytes-down"]) > after_hello
    assert c["service"] == echo_backend.address and c["tls-mode"] == "passthrough"
    assert s["duration"].endswith("s") and float(s["duration"][:-1]) >= 0
    assert c["duration"].endswith("s") and float(c["duration"][:-1]) >= 0
    assert s["reason"] == c["reason"] == "done"
    assert server.count(f"visitor-closed .*visitor={visitor} ") == 1
    assert client.count(f"stream-closed .*visitor={visitor} ") == 1


def test_json_lines_carry_numbers(deployment, echo_backend):
    server, client, _ = start_pair(deployment, echo_backend, log_format="json")
    visitor = visit(deployment.public_port)
    records = {}
    for name, proc, event in (("server", server, "visitor-closed"),
                              ("client", client, "stream-closed")):
        line = proc.wait_for(rf'"event": "{event}".*"visitor": "{visitor}"').string
        records[name] = json.loads(line)
    for record in records.values():
        assert record["level"] == "info"
        assert isinstance(record["bytes-up"], int) and isinstance(record["bytes-down"], int)
        assert isinstance(record["duration"], float) and record["duration"] >= 0
    assert records["server"]["bytes-down"] == records["client"]["bytes-down"]
    assert records["client"]["bytes-up"] == len(PAYLOAD)


def test_access_log_false_moves_both_lines_to_debug(deployment, echo_backend):
    server, client, _ = start_pair(deployment, echo_backend, server_extra="access-log = false",
                                   client_extra="access-log = false")
    visitor = visit(deployment.public_port)
    server.wait_for(f"DEBUG visitor-closed .*visitor={visitor} ")
    client.wait_for(f"DEBUG stream-closed .*visitor={visitor} ")
    assert server.count("INFO  visitor-closed") == 0
    assert client.count("INFO  stream-closed") == 0


def test_rejected_visitors_stay_at_debug(deployment, echo_backend):
    server, _client, _ = start_pair(deployment, echo_backend)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(100) == b""
    server.wait_for("DEBUG visitor-rejected .*reason=not-tls")
    assert server.count("INFO  visitor-rejected") == 0
