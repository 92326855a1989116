"""Fake peers on the Tunnel connection: stdlib `ssl` + Runewarp's sans-I/O mux Session.

A fake Client (`tunnel_tls` with a listed identity, then `FakeClientEnd`) talks to
the real Server, and a `FakeServer` listens for the real Client; either way the
test controls every byte on the Tunnel connection.  Used by tests/e2e/test_bad_peers.py
and the adversarial suite (tests/adversarial/).
"""

import collections
import json
import socket
import ssl
import time

from runewarp.proto import control
from runewarp.proto.mux import (DataReceived, FrameDecoder, GoAwayReceived, Role, Session,
                                StreamReset)

from ..conftest import SERVER_HOSTNAME, Proc

ALPN = "runewarp/1"
APP = "app.example.com"


def assert_running_without_traceback(*procs):
    for proc in procs:
        assert proc.popen.poll() is None, f"process exited:\n{proc.log()}"
        assert "Traceback" not in proc.log(), proc.log()


def tunnel_tls(port, ca_file, identity_dir=None, timeout=15, source=None):
    """TLS 1.3 + ALPN runewarp/1 to the Server hostname, as a Client would dial it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca_file))
    if identity_dir is not None:
        ctx.load_cert_chain(str(identity_dir / "client.crt"), str(identity_dir / "client.key"))
    ctx.set_alpn_protocols([ALPN])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                   source_address=(source, 0) if source else None)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
    except BaseException:
        raw.close()
        raise
    assert tls.selected_alpn_protocol() == ALPN
    assert tls.version() == "TLSv1.3"
    return tls


def read_until_closed(tls, timeout):
    """Everything the peer sends until it closes; (bytes, seconds).  Fails past `timeout`."""
    started = time.monotonic()
    chunks = []
    while True:
        remaining = timeout - (time.monotonic() - started)
        assert remaining > 0, f"peer still open after {timeout}s"
        tls.settimeout(remaining)
        try:
            chunk = tls.recv(65536)
        except TimeoutError:
            raise AssertionError(f"peer still open after {timeout}s") from None
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            return b"".join(chunks), time.monotonic() - started
        chunks.append(chunk)


def mux_frames(data):
    decoder = FrameDecoder()
    decoder.feed(data)
    return list(decoder)


def control_stream_with(line):
    """Wire bytes of a Client opening the control stream (id 1) and writing `line` on it."""
    session = Session(Role.CLIENT)
    stream_id = session.open_stream()
    assert stream_id == 1
    session.send_data(stream_id, line)
    return session.data_to_send()


class PeerEnd:
    """One end of a Tunnel connection: stdlib TLS + a sans-I/O mux Session."""

    def __init__(self, tls, role):
        self.tls = tls
        self.session = Session(role)
        self.received = collections.defaultdict(bytearray)
        self.reset = set()
        self.events = []  # every mux event, in order
        self.closed = False
        self.raw = bytearray()  # every byte the peer sent, for frame-level checks

    def flush(self):
        data = self.session.data_to_send()
        if data:
            self.tls.sendall(data)

    def send(self, stream_id, data):
        assert self.session.send_data(stream_id, data) == len(data)
        self.flush()

    def open_stream(self, data):
        stream_id = self.session.open_stream()
        self.send(stream_id, data)
        return stream_id

    def go_away_received(self):
        return any(isinstance(e, GoAwayReceived) for e in self.events)

    def pump_until(self, done, timeout=10):
        deadline = time.monotonic() + timeout
        while not done():
            assert not self.closed, "the peer closed the Tunnel connection"
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out waiting on the peer"
            self.tls.settimeout(remaining)
            try:
                data = self.tls.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLEOFError, ConnectionResetError):
                data = b""
            if not data:
                self.closed = True
                continue
            self.raw += data
            for event in self.session.receive_data(data, time.monotonic()):
                self.events.append(event)
                if isinstance(event, DataReceived):
                    self.received[event.stream_id] += event.data
                    self.session.consumed(event.stream_id, len(event.data))
                elif isinstance(event, StreamReset):
                    self.reset.add(event.stream_id)
            self.flush()


class FakeServerEnd(PeerEnd):
    """The Server's end of one Tunnel connection."""

    def __init__(self, tls):
        super().__init__(tls, Role.SERVER)

    def say_welcome(self, line=None):
        """Read the Client's control hello (stream 1) and answer it (with `line`, raw bytes,
        instead of a good welcome if given); returns the hello."""
        self.pump_until(lambda: b"\n" in self.received[1])
        hello = json.loads(bytes(self.received[1]).split(b"\n")[0])
        self.send(1, line if line is not None else control.encode(control.welcome("apps", "fake")))
        return hello


class FakeClientEnd(PeerEnd):
    """A listed Client's end of one Tunnel connection, after `tunnel_tls`."""

    def __init__(self, tls):
        super().__init__(tls, Role.CLIENT)

    def say_hello(self, line=None, hostnames=()):
        """Open the control stream with a hello (or the raw `line`)."""
        if line is None:
            line = control.encode(control.hello("0-fake", "fake", list(hostnames), False))
        assert self.open_stream(line) == 1

    def welcome(self, timeout=10):
        """Wait for the Server's welcome line; the decoded message."""
        self.pump_until(lambda: b"\n" in self.received[1], timeout)
        return json.loads(bytes(self.received[1]).split(b"\n")[0])

    def join(self, hostnames=(), timeout=10):
        self.say_hello(hostnames=hostnames)
        welcome = self.welcome(timeout)
        assert welcome["type"] == "welcome", welcome
        return welcome


class FakeServer:
    """A listener with the Server certificate from `runewarp server cert init`, and the
    real Client (Service `hostname` -> `backend.address`) dialing it."""

    def __init__(self, deployment, backend, hostname=APP, client_extra=""):
        deployment.identity("client-a")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        port = self.listener.getsockname()[1]
        path = deployment.client_config("client-a", [([hostname], backend.address)], port=port)
        if client_extra:
            path.write_text(path.read_text() + client_extra)
        self.client = Proc(["client", "-c", path], env=deployment.env)
        deployment.processes.append(self.client)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(str(deployment.cert_dir / "server.crt"),
                                     str(deployment.cert_dir / "server.key"))
        self.context.set_alpn_protocols([ALPN])
        self.connections = []

    def accept(self, timeout=20):
        self.listener.settimeout(timeout)
        raw, _address = self.listener.accept()
        raw.settimeout(10)
        tls = self.context.wrap_socket(raw, server_side=True)
        self.connections.append(tls)
        assert tls.selected_alpn_protocol() == ALPN
        return FakeServerEnd(tls)

    def close(self):
        for tls in self.connections:
            tls.close()
        self.listener.close()
