"""The configuration API's listener bounds each connection in time (docs/api.md): a caller that
never finishes its TLS handshake, or never finishes its request, is closed, and a caller that
does is answered meanwhile.  In-process, with real TLS from material our CLI made; the
deadlines are shortened here (5 s and 10 s in io/api.py)."""

import gc
from types import SimpleNamespace

import gevent
import pytest
from gevent import socket
from gevent import ssl

from runewarp import tls
from runewarp.io import api
from runewarp.io.listener import bind

from ..conftest import SERVER_HOSTNAME, run_cli

pytestmark = pytest.mark.timeout(30)


class Log:
    def __init__(self):
        self.lines = []

    def debug(self, event, **fields):
        self.lines.append((event, fields))


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-material")
    run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", root / "server")
    run_cli("client", "visitor-ca", "init", "--dir", root / "api-ca")
    run_cli("client", "visitor-cert", "issue", "--name", "operator", "--dir", root / "api-ca",
            "--out-dir", root / "caller")
    return root


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "3")])
    return [b"ok\n"]


@pytest.fixture
def served(material, monkeypatch):
    monkeypatch.setattr(api, "HANDSHAKE_DEADLINE", 0.5)
    monkeypatch.setattr(api._ApiHandler, "deadline", 1.0)
    monkeypatch.setattr(tls, "ssl", ssl)  # gevent's, as the entry point's monkey-patching makes it
    context = tls.api_server_context(material / "server" / "server.crt", material / "server" / "server.key",
                                 material / "api-ca" / "visitor-ca.crt")
    log = Log()
    http = api._TlsServer(bind(("127.0.0.1", 0), backlog=64), app, SimpleNamespace(current=lambda: context), log)
    http.start()
    yield http.address, log
    http.close()


def caller(material, address):
    """A TLS connection of a caller with a client certificate, handshake done."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # gevent's (its create_default_context is stdlib's)
    ctx.load_verify_locations(cafile=str(material / "server" / "server-ca.crt"))
    ctx.load_cert_chain(str(material / "caller" / "operator.crt"), str(material / "caller" / "operator.key"))
    return ctx.wrap_socket(socket.create_connection(address, timeout=5), server_hostname=SERVER_HOSTNAME)


def closed(conn, within):
    """Whether the peer closes `conn` within `within` s, having sent nothing."""
    conn.settimeout(within)
    try:
        return conn.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    finally:
        conn.close()


def test_a_caller_without_a_handshake_or_a_whole_request_is_closed_while_others_are_answered(
        material, served):
    address, log = served
    gc.disable()  # a socket left to the garbage collector must stay open here, and fail the test
    try:
        _closed_at_the_deadlines(material, address, log)
    finally:
        gc.enable()


def _closed_at_the_deadlines(material, address, log):
    silent = [socket.create_connection(address) for _ in range(3)]  # TCP only: no ClientHello
    slow = [caller(material, address) for _ in range(3)]
    for conn in slow:
        conn.sendall(b"GET /v1/tunn")  # and never the rest
    gevent.sleep(0.1)
    answered = caller(material, address)
    answered.sendall(b"GET /v1/tunnels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answered.recv(1024).startswith(b"HTTP/1.1 200")
    answered.close()
    assert all(closed(conn, within=5) for conn in silent + slow)
    assert [fields["reason"] for event, fields in log.lines
            if event == "api-connection-refused"] == ["no TLS handshake in time"] * 3
