"""Bad input from the network: fake Clients against the real Server, a fake Server for the real Client.

The fakes (tests/e2e/peers.py) are written with the Python stdlib (`ssl`) and
Runewarp's own sans-I/O mux Session (`runewarp.proto.mux`, no I/O, no gevent), so
the test controls every byte on the Tunnel connection.  Each test shows the clean outcome: the bad
connection or stream is closed, no traceback reaches the process logs, the
process keeps running, and a good Visitor (curl, through a real Client) still
works afterwards or in parallel.

Dead-peer detection (no frame for 60 s -> the Tunnel connection is dead) is
not waited for here: it is covered with a fake clock by
tests/proto/test_mux_session.py (test_keepalive_ping_and_dead_peer,
test_silence_after_traffic_kills), and io/tunnel.py's timer loop only turns
the Session's ConnectionDead event into close().
"""

import concurrent.futures
import json
import ssl
import struct
import time

import pytest

from runewarp.proto import proxyv2
from tests import clienthellos
from runewarp.proto.mux import (FLAG_RST, FLAG_SYN, GOAWAY_PROTOCOL_ERROR, TYPE_DATA,
                                TYPE_GO_AWAY, TYPE_WINDOW_UPDATE, encode_header)

from .helpers import curl
from .peers import (APP, FakeServer, assert_running_without_traceback, control_stream_with,
                    mux_frames, read_until_closed, tunnel_tls)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def tunnel(deployment, backend):
    """A Server whose one Tunnel lists a real Client (serving curl) and a fake one."""
    real = deployment.identity("client-a")
    fake = deployment.identity("fake-client")
    server = deployment.start_server([("apps", [APP], [real, fake])])
    client = deployment.start_client("client-a", [([APP], backend.address)])
    assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"
    return Tunnel(deployment, backend, server, client, fake)


class Tunnel:
    def __init__(self, deployment, backend, server, client, fake_identity):
        self.deployment = deployment
        self.backend = backend
        self.server = server
        self.client = client
        self.fake_identity = fake_identity

    def visit(self):
        return curl(self.deployment.public_port, APP, self.backend.ca, timeout=15)

    def fake_client_tls(self):
        """A Tunnel connection (TLS done) as the listed fake Client, for hand-made frames."""
        return tunnel_tls(self.deployment.public_port, self.deployment.ca_file,
                          self.deployment.dir / "fake-client")

    def assert_healthy(self):
        proc = self.visit()
        assert proc.returncode == 0 and proc.stdout == b"backend=app\n", proc.stderr
        assert_running_without_traceback(self.server, self.client)


# --- a fake Client ----------------------------------------------------------------


def assert_refused_in_log(tunnel, mark, reason, timeout=15):
    tunnel.server.wait_for(
        f"tunnel-connection-refused .*client-identity={tunnel.fake_identity}.*{reason}",
        timeout=timeout, start=mark)


def test_truncated_frame_header_then_close(tunnel):
    mark = len(tunnel.server.lines)
    tls = tunnel.fake_client_tls()
    tls.sendall(encode_header(0, 0x1, 1, 0)[:5])
    tls.close()
    # The Server drops the connection as soon as the Tunnel connection ends.
    assert_refused_in_log(tunnel, mark, "")
    tunnel.assert_healthy()


def test_bad_mux_version_gets_go_away_and_close(tunnel):
    mark = len(tunnel.server.lines)
    tls = tunnel.fake_client_tls()
    with tls:
        tls.sendall(struct.pack(">BBHII", 7, 0, 0x1, 1, 0) + b"garbage" * 10)
        data, seconds = read_until_closed(tls, 10)
    assert seconds < 5
    frames = mux_frames(data)
    assert [(f.type, f.stream_id, f.length) for f in frames] == \
        [(TYPE_GO_AWAY, 0, GOAWAY_PROTOCOL_ERROR)], frames
    assert_refused_in_log(tunnel, mark, "")
    tunnel.assert_healthy()


def test_server_logs_why_a_tunnel_connection_died_before_its_hello(tunnel):
    mark = len(tunnel.server.lines)
    tls = tunnel.fake_client_tls()
    with tls:
        tls.sendall(struct.pack(">BBHII", 7, 0, 0x1, 1, 0))
        _data, seconds = read_until_closed(tls, 10)
    assert seconds < 5  # the connection itself is closed at once ...
    # ... and the Server should say why, promptly (refused or closed, whatever the event).
    tunnel.server.wait_for(f"tunnel-connection-\\w+ .*client-identity={tunnel.fake_identity}"
                           ".*protocol error", timeout=5, start=mark)


def test_silent_client_is_dropped_at_the_hello_deadline(tunnel):
    mark = len(tunnel.server.lines)
    tls = tunnel.fake_client_tls()
    with tls, concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(read_until_closed, tls, 15)
        # While the silent Client holds its connection, Visitors are served.
        for _ in range(3):
            tunnel.assert_healthy()
        data, seconds = waiting.result(timeout=20)
    assert data == b""
    assert 8 <= seconds < 15, seconds
    assert_refused_in_log(tunnel, mark, "no control hello")
    tunnel.assert_healthy()


@pytest.mark.parametrize("line,reason", [
    (b"this is not json\n", "not JSON"),
    (b"[1, 2, 3]\n", "not an object"),
    (json.dumps({"type": "welcome", "tunnel": "x"}).encode() + b"\n", "expected 'hello'"),
    (b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper"),
    (json.dumps({"type": "hello", "version": 1, "instance": "i", "hostnames": [],
                 "catch_all": False}).encode() + b"\n", "'version' must be a string"),
], ids=["not-json", "not-an-object", "not-hello", "deep-json", "bad-field-type"])
def test_bad_control_hello_closes_the_connection(tunnel, line, reason):
    mark = len(tunnel.server.lines)
    tls = tunnel.fake_client_tls()
    with tls:
        tls.sendall(control_stream_with(line))
        data, seconds = read_until_closed(tls, 10)
    assert seconds < 5
    # At most the ACK of the control stream came back: never a welcome.
    assert all(f.type != 0 or not f.length for f in mux_frames(data)), data
    assert_refused_in_log(tunnel, mark, reason)
    assert tunnel.server.count("tunnel-connection-established") == 1
    tunnel.assert_healthy()


# --- refused Tunnel connections ---------------------------------------------------


def refused(tls):
    """The TLS 1.3 Server judges the Client certificate after the Client's Finished, so the
    refusal (an alert, then close) arrives on the Client's first read; returns that error."""
    with tls:
        tls.settimeout(10)
        with pytest.raises(ssl.SSLError) as info:
            data = tls.recv(65536)
            pytest.fail(f"the Server answered a refused Tunnel connection: {data!r}")
    return str(info.value)


def test_unlisted_identity_and_missing_certificate_are_refused(tunnel):
    deployment = tunnel.deployment
    stranger = deployment.identity("stranger")
    mark = len(tunnel.server.lines)
    error = refused(tunnel_tls(deployment.public_port, deployment.ca_file, deployment.dir / "stranger"))
    # protocol.md asks for access_denied; tls.py documents that OpenSSL can only send
    # bad_certificate from certificate verification, and the Client accepts both.
    assert "ALERT_BAD_CERTIFICATE" in error or "ALERT_ACCESS_DENIED" in error, error
    tunnel.server.wait_for(f"tunnel-connection-refused .*client-identity={stranger}"
                           ".*reason=unauthorized-client-identity", timeout=10, start=mark)
    tunnel.assert_healthy()

    error = refused(tunnel_tls(deployment.public_port, deployment.ca_file, identity_dir=None))
    assert "ALERT_CERTIFICATE_REQUIRED" in error, error
    # (Auth-failure warnings are rate-limited per source IP, so no second log line is asserted.)
    tunnel.assert_healthy()
    assert tunnel.server.count("tunnel-connection-established") == 1
    assert f"client-identity={stranger}" not in "\n".join(
        line for line in tunnel.server.lines if "tunnel-connection-established" in line)


# --- a fake Server ----------------------------------------------------------------


@pytest.fixture
def fake_server(deployment, backend):
    server = FakeServer(deployment, backend)
    yield server
    server.close()


def real_client_hello(hostname, ca_file):
    """A stdlib TLS client on memory BIOs: its first flight is a genuine ClientHello."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return tls, incoming, outgoing


ENVELOPE = proxyv2.encode(("203.0.113.7", 50123), ("192.0.2.1", 443))


def test_client_resets_bad_streams_and_keeps_its_tunnel_connection(fake_server, backend):
    client = fake_server.client
    end = fake_server.accept()
    hello = end.say_welcome()
    assert hello["type"] == "hello" and hello["hostnames"] == [APP]
    assert hello["catch_all"] is False
    client.wait_for("tunnel-connection-established .*tunnel=apps")

    # 0. An envelope and then nothing: reset at the 5 s intake deadline (checked at the end).
    stalled = end.open_stream(ENVELOPE)
    stalled_at = time.monotonic()

    # 1. A bad PROXY v2 header (version 3): that stream is reset, nothing else.
    bad_header = bytearray(ENVELOPE)
    bad_header[12] = 0x31
    bad = end.open_stream(bytes(bad_header) + clienthellos.build(APP, ("http/1.1",)))
    end.pump_until(lambda: bad in end.reset)
    client.wait_for("stream-rejected .*bad-proxy-header")

    # 2. A good envelope, but a hostname no Service serves: reset.
    unknown = end.open_stream(ENVELOPE + clienthellos.build("unknown.example.com", ("h2",)))
    end.pump_until(lambda: unknown in end.reset)
    client.wait_for("stream-rejected .*public-hostname=unknown.example.com.*reason=no-service")
    assert not end.closed and not end.session.closed

    # 3. A good envelope and a genuine ClientHello for a served hostname: spliced to the
    # backend, whose TLS answer (ServerHello first) comes back on the stream.
    visitor, incoming, outgoing = real_client_hello(APP, backend.ca)
    good = end.open_stream(ENVELOPE + outgoing.read())
    end.pump_until(lambda: len(end.received[good]) >= 6)
    answer = bytes(end.received[good])
    assert answer[0] == 0x16 and answer[1] == 0x03, answer[:8]  # TLS handshake record
    assert answer[5] == 0x02, answer[:8]  # ServerHello
    client.wait_for(f"stream-routed .*public-hostname={APP}.*visitor=203.0.113.7:50123")
    assert good not in end.reset

    # Finish the Visitor's handshake and one request through the stream: the backend's
    # certificate verifies for the hostname, so these are the backend's bytes.
    fed = 0

    def feed_visitor():
        nonlocal fed
        new = bytes(end.received[good][fed:])
        fed += len(new)
        if new:
            incoming.write(new)

    def handshake_done():
        feed_visitor()
        try:
            visitor.do_handshake()
            finished = True
        except ssl.SSLWantReadError:
            finished = False
        out = outgoing.read()
        if out:
            end.send(good, out)
        return finished

    end.pump_until(handshake_done)
    visitor.write(f"GET / HTTP/1.1\r\nHost: {APP}\r\nConnection: close\r\n\r\n".encode())
    end.send(good, outgoing.read())
    reply = bytearray()

    def replied():
        feed_visitor()
        try:
            while chunk := visitor.read(65536):
                reply.extend(chunk)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
            pass
        return reply.endswith(b"backend=app\n")

    end.pump_until(replied)
    assert reply.startswith(b"HTTP/1.1 200"), reply

    end.pump_until(lambda: stalled in end.reset, timeout=10)
    assert 4 <= time.monotonic() - stalled_at < 10
    client.wait_for("stream-rejected .*reason=intake-deadline")

    # The Tunnel connection survived every bad stream.
    assert not end.closed and not end.session.closed
    assert client.count("tunnel-connection-lost") == 0
    resets = [f.stream_id for f in mux_frames(bytes(end.raw)) if f.flags & FLAG_RST]
    assert sorted(resets) == sorted([stalled, bad, unknown]), resets
    assert_running_without_traceback(client)
    # From here the fake Server could go silent without closing; the Client would
    # declare the connection dead after 60 s without a frame.  That timer is covered
    # by tests/proto/test_mux_session.py with a fake clock rather than waited for here.


@pytest.mark.parametrize("attack", ["bad-version", "over-window", "wrong-parity"])
def test_client_answers_a_mux_protocol_error_with_go_away_and_reconnects(fake_server, attack):
    client = fake_server.client
    end = fake_server.accept()
    end.say_welcome()
    client.wait_for("tunnel-connection-established")
    if attack == "bad-version":
        wire = struct.pack(">BBHII", 9, 0, 0, 0, 0)
    elif attack == "over-window":
        # A new stream whose first data frame exceeds the 256 KiB initial window.  Its header
        # alone fails it, and the Client closes at once: sending the whole payload would race
        # that close (a write into a closed connection), so only its first KiB goes.
        size = 256 * 1024 + 1
        wire = encode_header(TYPE_DATA, FLAG_SYN, 2, size) + bytes(1024)
    else:
        wire = encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0)  # odd id: a Client's id
    mark = len(client.lines)
    end.tls.sendall(wire)
    data, seconds = read_until_closed(end.tls, 10)
    assert seconds < 5
    assert [(f.type, f.length) for f in mux_frames(data) if f.type == TYPE_GO_AWAY] == \
        [(TYPE_GO_AWAY, GOAWAY_PROTOCOL_ERROR)], mux_frames(data)
    client.wait_for("tunnel-connection-lost .*protocol error", start=mark)
    client.wait_for(r"tunnel-reconnect-scheduled .*next-retry-delay=(0(\.\d+)?|1)s", start=mark)
    again = fake_server.accept()  # the first backoff window is 1 s
    again.say_welcome()
    client.wait_for("tunnel-connection-established", start=mark)
    assert client.count("tunnel-connection-established") == 2
    assert_running_without_traceback(client)
