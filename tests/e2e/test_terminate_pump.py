"""The terminate pump (runewarp/io/terminate.py TLSEnd): a Visitor's close_notify reaches the
Local backend as a half-close and the reply still comes back; the backend's half-close
reaches the Visitor as close_notify (not a bare TCP close) and the Visitor can still send;
a Service without `alpn` agrees http/1.1 when the Visitor offers it (tests/e2e/test_terminate_alpn.py
covers the `alpn` key with real HTTP/2)."""

import concurrent.futures
import os
import queue
import socket
import ssl

import pytest

from ..conftest import Proc, run_cli
from .helpers import TCPBackend, sha256

pytestmark = pytest.mark.e2e
SITE = "site.example.com"


class ScriptedBackend(TCPBackend):
    """Runs the next queued script on each connection and queues what it returns."""

    def __init__(self):
        super().__init__()
        self.scripts = queue.Queue()
        self.results = queue.Queue()

    def serve(self, conn):
        conn.settimeout(10)
        script = self.scripts.get()
        try:
            self.results.put(script(conn))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.results.put(exc)

    def result(self):
        return self.results.get(timeout=15)


def read_to_eof(conn):
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


class Visitor:
    """TLS over memory BIOs on a blocking socket, so close_notify is sent and seen
    explicitly and the connection stays usable in the other direction."""

    def __init__(self, port, ca, alpn=None):
        ctx = ssl.create_default_context(cafile=str(ca))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=SITE)
        self._pump(self.tls.do_handshake)

    def _flush(self):
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _pump(self, operation, *args):
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
            else:
                self._flush()
                return result

    def send(self, data):
        self._pump(self.tls.write, data)

    def close_notify(self):
        try:
            self.tls.unwrap()  # sends ours; the peer's has not come yet
        except ssl.SSLWantReadError:
            pass
        self._flush()

    def read_to_end(self):
        """(bytes, how the peer ended): "close_notify" or "eof" (a bare TCP close)."""
        data = b""
        while True:
            try:
                chunk = self._pump(self.tls.read, 65536)
            except ssl.SSLZeroReturnError:
                return data, "close_notify"
            except ssl.SSLEOFError:
                return data, "eof"
            if not chunk:
                return data, "close_notify"
            data += chunk

    def close(self):
        self.sock.close()


@pytest.fixture
def site(deployment):
    """A Server and a Client with a terminate Service for SITE -> ScriptedBackend."""
    backend = ScriptedBackend()
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [SITE], [identity])])
    certs = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", SITE)
    path = deployment.client_config("client-a", [([SITE], backend.address, "terminate")],
                                    public_cert_dir=certs)
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    yield deployment.public_port, certs / "public-ca.crt", backend
    backend.close()


def test_visitor_close_notify_is_a_half_close_and_the_reply_still_arrives(site):
    port, ca, backend = site

    def reply_after_eof(conn):
        received = read_to_eof(conn)
        conn.sendall(b"got %d" % len(received))
        return received

    backend.scripts.put(reply_after_eof)
    visitor = Visitor(port, ca)
    try:
        visitor.send(b"ping" * 1000)
        visitor.close_notify()
        assert visitor.read_to_end() == (b"got 4000", "close_notify")
        assert backend.result() == b"ping" * 1000
    finally:
        visitor.close()


def test_backend_half_close_is_a_close_notify_and_the_visitor_can_still_send(site):
    port, ca, backend = site

    def banner_then_listen(conn):
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)
        return read_to_eof(conn)

    backend.scripts.put(banner_then_listen)
    visitor = Visitor(port, ca)
    try:
        assert visitor.read_to_end() == (b"banner", "close_notify")
        visitor.send(b"after the backend's FIN")
        visitor.close_notify()
        assert backend.result() == b"after the backend's FIN"
    finally:
        visitor.close()


def test_the_default_alpn_is_http1(site):
    port, ca, backend = site
    backend.scripts.put(lambda conn: conn.sendall(conn.recv(100)))
    visitor = Visitor(port, ca, alpn=["h2", "http/1.1"])
    try:
        assert visitor.tls.selected_alpn_protocol() == "http/1.1"
        visitor.send(b"hello")
        assert visitor.read_to_end() == (b"hello", "close_notify")
        assert backend.result() is None
    finally:
        visitor.close()


def test_visitors_sending_at_once_each_deliver_their_own_bytes(site):
    """The Client decrypts every terminated Visitor into one shared scratch buffer
    (tlsconn.ServerTLSConnection.recv): bytes must never cross between Visitors."""
    port, ca, backend = site
    payloads = [os.urandom(1024 * 1024 + n) for n in range(6)]
    for _ in payloads:
        backend.scripts.put(read_to_eof)

    def visit(payload):
        visitor = Visitor(port, ca)
        try:
            for offset in range(0, len(payload), 100_000):
                visitor.send(payload[offset:offset + 100_000])
            visitor.close_notify()
            assert visitor.read_to_end() == (b"", "close_notify")  # the backend read it all
        finally:
            visitor.close()

    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        for future in [pool.submit(visit, payload) for payload in payloads]:
            future.result(timeout=30)
    received = [backend.result() for _ in payloads]
    assert sorted(map(sha256, received)) == sorted(map(sha256, payloads))
