"""The Server's QUIC intake with real processes: a real Server with `public-quic`, a scripted
Client (tests/e2e/peers.py FakeClientEnd: the real mux over real mTLS) and UDP Visitors
sending client Initials sealed with the keys of their DCID (proto/quic.py seal_initial).

The full HTTP/3 path through a real Client and aioquic peers is tests/e2e/test_quic.py;
here the test holds the Client's end of every stream, so it sees the PROXY v2 header and
each framed datagram exactly as the Server wrote them.
"""

import json
import os
import signal
import socket
import sys
import time

import pytest

from runewarp import harness
from runewarp.proto import proxyv2
from tests import clienthellos
from runewarp.proto.datagrams import DatagramDecoder, frame
from runewarp.proto.mux import DataReceived, StreamOpened, StreamReset
from runewarp.proto.quic import VERSION_1, VERSION_2, crypto_frame, seal_initial

from ..conftest import free_port
from .helpers import recv_exactly, reload_by_signal
from .peers import APP, FakeClientEnd, assert_running_without_traceback, tunnel_tls
from .test_metrics import eventually, http, metrics_table, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
OTHER = "other.example.com"  # routed by the Server, served by no member


def client_hello_initials(hostname, pieces=1, version=VERSION_1, dcid=None, pad=0):
    """The Initial datagrams of one ClientHello for `hostname`, its CRYPTO stream cut into
    `pieces` packets (a `pad`-byte unknown extension makes it large, as post-quantum key
    shares do)."""
    extra = (0xFFAA).to_bytes(2) + pad.to_bytes(2) + bytes(pad) if pad else b""
    message = clienthellos.build(hostname, ("h3",), extra_extensions=extra, random=os.urandom(64))[5:]
    dcid = dcid or os.urandom(8)
    step = -(-len(message) // pieces)
    return [seal_initial(version, dcid, b"\x51" * 8, n, crypto_frame(n * step, message[n * step:(n + 1) * step]))
            for n in range(pieces)]


class Visitor:
    """A UDP Visitor on 127.0.0.1 sending to the Server's public port."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.address = self.sock.getsockname()

    def send(self, *datagrams):
        for datagram in datagrams:
            self.sock.sendto(datagram, ("127.0.0.1", self.port))

    def receive(self):
        data, source = self.sock.recvfrom(65536)
        assert source == ("127.0.0.1", self.port)  # from the public UDP socket
        return data

    def close(self):
        self.sock.close()


class Tunnel(FakeClientEnd):
    """The scripted Client: the Server's streams, their PROXY headers and datagrams.
    Credit is returned for every stream except those in `held` (a stalled Local backend)."""

    def __init__(self, deployment, hostnames=(APP,), port=None):
        super().__init__(tunnel_tls(port or deployment.public_port, deployment.ca_file,
                                    deployment.dir / "client-a"))
        self.held = set()
        self.unconsumed = {}
        self.streams = []  # stream ids the Server opened, in order
        self.join(hostnames=hostnames)

    def pump_until(self, done, timeout=15):
        deadline = time.monotonic() + timeout
        while not done():
            assert not self.closed, "the Server closed the Tunnel connection"
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out waiting on the Server"
            self.tls.settimeout(min(remaining, 0.5))
            try:
                data = self.tls.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                continue
            for event in self.session.receive_data(data, time.monotonic()):
                self.events.append(event)
                if isinstance(event, StreamOpened):
                    self.streams.append(event.stream_id)
                elif isinstance(event, DataReceived):
                    self.received[event.stream_id] += event.data
                    if event.stream_id in self.held:
                        self.unconsumed[event.stream_id] = self.unconsumed.get(event.stream_id, 0) + len(event.data)
                    else:
                        self.session.consumed(event.stream_id, len(event.data))
                elif isinstance(event, StreamReset):
                    self.reset.add(event.stream_id)
            self.flush()

    def release(self, stream_id):
        self.held.discard(stream_id)
        self.session.consumed(stream_id, self.unconsumed.pop(stream_id, 0))
        self.flush()

    def next_stream(self, seen=0):
        """The id of the Server's stream number `seen` (0: its first), once opened."""
        self.pump_until(lambda: len(self.streams) > seen)
        return self.streams[seen]

    def flow(self, stream_id, count):
        """The PROXY header of a QUIC stream and its first `count` datagrams."""
        def parsed():
            data = bytes(self.received[stream_id])
            found = proxyv2.decode(data) if len(data) >= 16 else None
            if found is None:
                return None
            header, size = found
            datagrams = DatagramDecoder().feed(data[size:])
            return (header, datagrams) if len(datagrams) >= count else None
        self.pump_until(lambda: parsed() is not None)
        return parsed()


def quic_server(deployment, extra="", metrics_port=None):
    identity = deployment.identity("client-a")
    text = "public-quic = true\n" + extra
    if metrics_port:
        text += "\n" + metrics_table("server", metrics_port)
    return deployment.start_server([("apps", [APP, OTHER], [identity])], extra=text)


def test_a_flow_carries_its_initials_and_datagrams_both_ways_beside_tcp_visitors(deployment):
    server = quic_server(deployment)
    tunnel = Tunnel(deployment)
    visitor = Visitor(deployment.public_port)
    initials = client_hello_initials(APP, pieces=3, pad=2500)  # a ClientHello in three Initials
    sent = [initials[2], initials[0], initials[0], initials[1]]  # out of order, one duplicated
    visitor.send(*sent)
    stream = tunnel.next_stream()
    header, datagrams = tunnel.flow(stream, len(sent))
    assert header.protocol == "udp"
    assert header.source == visitor.address
    assert header.destination == ("127.0.0.1", deployment.public_port)
    assert datagrams == sent  # every held datagram, in arrival order, nothing else
    later = [b"\x40" + os.urandom(8) + bytes([n]) * 50 for n in range(3)]
    visitor.send(*later)
    assert tunnel.flow(stream, len(sent) + 3)[1][len(sent):] == later
    # A TCP Visitor through the same Tunnel connection meanwhile.
    tcp = socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10)
    tcp.sendall(clienthellos.build(APP))
    tcp_stream = tunnel.next_stream(1)
    tunnel.pump_until(lambda: len(tunnel.received[tcp_stream]) > 16)
    assert proxyv2.decode(bytes(tunnel.received[tcp_stream]))[0].protocol == "tcp"
    tunnel.send(tcp_stream, b"tcp answer")
    answers = [b"\xc0answer-" + bytes([n]) * 30 for n in range(3)]
    tunnel.send(stream, b"".join(frame(d) for d in answers))
    assert [visitor.receive() for _ in answers] == answers
    assert recv_exactly(tcp, 10) == b"tcp answer"
    tcp.close()
    server.wait_for("quic-flow-routed .*public-hostname=app.example.com")
    assert_running_without_traceback(server)


def test_bad_datagrams_are_dropped_and_counted_and_v2_routes(deployment):
    metrics = free_port()
    server = quic_server(deployment, metrics_port=metrics)
    tunnel = Tunnel(deployment)
    visitor = Visitor(deployment.public_port)
    visitor.send(*client_hello_initials(OTHER))  # routed by the Server, no member serves it
    visitor.send(b"\x41" + os.urandom(40))  # a short header from an unknown address
    unknown_version = bytearray(client_hello_initials(APP)[0])
    unknown_version[1:5] = (0x1A2A3A4A).to_bytes(4)
    visitor.send(bytes(unknown_version))
    visitor.send(os.urandom(30), b"\xc0\x00\x00")  # garbage; a truncated long header
    unknown = Visitor(deployment.public_port)
    unknown.send(*client_hello_initials("nobody.example.net"))

    def dropped(reason):
        return value(metrics, "runewarp_quic_dropped_total", reason=reason) or 0

    assert eventually(lambda: dropped("unknown-hostname") == 1 and dropped("no-member") == 1
                      and dropped("short-header") >= 1 and dropped("unsupported-version") == 1
                      and dropped("malformed") >= 1)
    assert value(metrics, "runewarp_quic_flows_total", outcome="no-member") == 1
    assert value(metrics, "runewarp_quic_flows_total", outcome="routed") == 0
    assert tunnel.streams == [] and not tunnel.received.keys() - {1}
    v2 = Visitor(deployment.public_port)
    v2.send(*client_hello_initials(APP, version=VERSION_2, pieces=2))
    header, datagrams = tunnel.flow(tunnel.next_stream(), 2)
    assert header.source == v2.address and len(datagrams) == 2
    assert tunnel.streams == [tunnel.streams[0]]  # only the v2 flow reached the Client
    assert eventually(lambda: value(metrics, "runewarp_quic_flows_active") == 1)
    assert value(metrics, "runewarp_quic_datagrams_total", direction="to-client") == 2
    quic = json.loads(http(metrics, "/status")[1])["quic"]
    assert quic == {"addresses": [f"127.0.0.1:{deployment.public_port}"], "flows": 1, "pending_flows": 0}
    assert_running_without_traceback(server)


def test_an_idle_flow_is_reset_with_the_timeout_it_started_with(deployment):
    server = quic_server(deployment, "quic-idle-timeout = 600")
    tunnel = Tunnel(deployment)
    before = Visitor(deployment.public_port)
    before.send(*client_hello_initials(APP))
    first = tunnel.next_stream()
    tunnel.flow(first, 1)
    config = deployment.dir / "server.toml"
    config.write_text(config.read_text().replace("quic-idle-timeout = 600", "quic-idle-timeout = 1"))
    reload_by_signal(server, "server-reloaded")
    after = Visitor(deployment.public_port)
    after.send(*client_hello_initials(APP))
    second = tunnel.next_stream(1)
    tunnel.flow(second, 1)
    tunnel.pump_until(lambda: second in tunnel.reset)  # reset by the Server's idle timer
    assert first not in tunnel.reset  # older, but started with 600 s
    server.wait_for("quic-flow-closed .*reason=idle-timeout")
    after.send(b"\x40" + os.urandom(30))  # forgotten: an unknown address now
    before.send(b"\x40" + b"still here")
    assert tunnel.flow(first, 2)[1][1] == b"\x40still here"
    assert tunnel.streams == [first, second]
    assert_running_without_traceback(server)


def test_a_reset_from_the_client_ends_the_flow(deployment):
    server = quic_server(deployment)
    tunnel = Tunnel(deployment)
    visitor = Visitor(deployment.public_port)
    visitor.send(*client_hello_initials(APP))
    stream = tunnel.next_stream()
    tunnel.flow(stream, 1)
    tunnel.session.reset_stream(stream, 0)
    tunnel.flush()
    server.wait_for("quic-flow-closed .*reason=reset-by-client")
    visitor.send(*client_hello_initials(APP))  # a new Initial from the same address: a new flow
    assert tunnel.next_stream(1) != stream
    assert_running_without_traceback(server)


def test_a_full_queue_drops_the_oldest_and_never_blocks_another_flow(deployment):
    metrics = free_port()
    server = quic_server(deployment, metrics_port=metrics)
    tunnel = Tunnel(deployment)
    stalled = Visitor(deployment.public_port)
    stalled.send(*client_hello_initials(APP))
    slow = tunnel.next_stream()
    tunnel.held.add(slow)  # its Local backend reads nothing: no credit comes back
    flood = [n.to_bytes(4) + bytes(1196) for n in range(800)]  # ~1 MiB, 4x the stream window
    for datagram in flood:
        stalled.send(datagram)
        if datagram[3] % 64 == 0:
            time.sleep(0.005)  # let the Server read: the kernel's UDP buffer is small
    assert eventually(lambda: (value(metrics, "runewarp_quic_dropped_total", reason="queue-overflow") or 0) > 0)
    other = Visitor(deployment.public_port)
    other.send(*client_hello_initials(APP))
    fast = tunnel.next_stream(1)
    tunnel.flow(fast, 1)
    tunnel.send(fast, frame(b"\xc0for the other flow"))
    assert other.receive() == b"\xc0for the other flow"
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as tcp:
        tcp.sendall(clienthellos.build(APP))  # a TCP Visitor on the same Tunnel connection
        tcp_stream = tunnel.next_stream(2)
        tunnel.pump_until(lambda: len(tunnel.received[tcp_stream]) > 16)
        tunnel.send(tcp_stream, b"tcp answer")
        assert recv_exactly(tcp, 10) == b"tcp answer"
    last = b"LAST" + bytes(100)
    stalled.send(last)
    time.sleep(0.5)  # reading it is the Server's business; the assertion below waits for it
    tunnel.release(slow)
    header_size = proxyv2.decode(bytes(tunnel.received[slow]))[1]

    def stalled_datagrams():
        return DatagramDecoder().feed(bytes(tunnel.received[slow])[header_size:])

    tunnel.pump_until(lambda: stalled_datagrams()[-1:] == [last])
    numbers = [int.from_bytes(d[:4]) for d in stalled_datagrams()[1:-1]]
    assert numbers == sorted(numbers) and len(numbers) < len(flood)  # in order, oldest dropped
    assert_running_without_traceback(server)


def test_public_quic_off_opens_no_udp_socket_and_a_taken_udp_port_fails_the_start(deployment):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", deployment.public_port))  # nothing else holds the UDP port
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        path = deployment.server_config([("apps", [APP], [identity])], extra="public-quic = true")
        path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        from ..conftest import run_cli
        proc = run_cli("server", "-c", path, env=deployment.env, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"server.public-quic: 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_handover_passes_the_udp_socket_to_the_new_process(deployment):
    port = free_port()
    pid_file = deployment.dir / "server.pid"
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [APP], [identity])],
                                    extra=f'public-quic = true\npid-file = "{pid_file}"')
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    from ..conftest import Proc
    server = Proc(["server", "-c", path], env=deployment.env)
    deployment.processes.append(server)
    server.wait_for("server-ready .*public-quic=127.0.0.1:")
    deployment.public_port = port
    old = int(pid_file.read_text())
    os.kill(old, signal.SIGUSR2)
    server.wait_for("handover-complete")
    new = int(pid_file.read_text())
    try:
        assert server.popen.wait(timeout=20) == 0
        assert "address already in use" not in server.log()  # the socket was passed, not bound
        tunnel = Tunnel(deployment)
        visitor = Visitor(port)
        visitor.send(*client_hello_initials(APP))
        header, _ = tunnel.flow(tunnel.next_stream(), 1)
        assert header.source == visitor.address
    finally:
        os.kill(new, signal.SIGTERM)


def test_a_stop_stops_reading_udp_and_resets_the_open_flows(deployment):
    server = quic_server(deployment)
    tunnel = Tunnel(deployment)
    visitor = Visitor(deployment.public_port)
    visitor.send(*client_hello_initials(APP))
    tunnel.flow(tunnel.next_stream(), 1)
    server.signal(signal.SIGTERM)
    assert server.popen.wait(timeout=30) == 0
    server.wait_for("quic-flow-closed .*reason=server-stopping")
    assert "Traceback" not in server.log()


def test_a_reload_that_moves_the_public_listener_keeps_the_udp_socket_and_says_so(deployment):
    server = quic_server(deployment)
    config, moved = deployment.dir / "server.toml", free_port()
    config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{moved}"'))
    reload_by_signal(server, "server-reloaded")
    server.wait_for("reload-needs-restart key=public-quic")
    tunnel = Tunnel(deployment, port=moved)
    visitor = Visitor(deployment.public_port)  # the UDP socket of the start still serves
    visitor.send(*client_hello_initials(APP))
    assert tunnel.flow(tunnel.next_stream(), 1)[0].source == visitor.address


def test_a_visitor_that_moves_keeps_its_flow_by_the_server_connection_id(deployment):
    server = quic_server(deployment)
    tunnel = Tunnel(deployment)
    visitor = Visitor(deployment.public_port)
    visitor.send(*client_hello_initials(APP))
    stream = tunnel.next_stream()
    tunnel.flow(stream, 1)
    server_cid = os.urandom(8)
    handshake = bytes([0xE0]) + VERSION_1.to_bytes(4) + b"\x08" + b"\x51" * 8 + b"\x08" + server_cid + bytes(60)
    tunnel.send(stream, frame(handshake))  # the QUIC server's long header names its CID
    assert visitor.receive() == handshake
    moved = Visitor(deployment.public_port)  # a NAT rebinding: a new address and port
    moved.send(b"\x41" + server_cid + b"after the move")
    assert tunnel.flow(stream, 2)[1][1] == b"\x41" + server_cid + b"after the move"
    tunnel.send(stream, frame(b"\x41to the new address"))
    assert moved.receive() == b"\x41to the new address"
    stranger = Visitor(deployment.public_port)
    stranger.send(b"\x41" + os.urandom(8) + b"unknown connection id")
    moved.send(b"\x41" + server_cid + b"still here")
    assert tunnel.flow(stream, 3)[1][2] == b"\x41" + server_cid + b"still here"
    assert tunnel.streams == [stream]
    server.wait_for("quic-flow-migrated")


def test_pending_flows_are_bounded_and_expire(deployment):
    metrics = free_port()
    server = quic_server(deployment, metrics_port=metrics)
    tunnel = Tunnel(deployment)
    visitors = [Visitor(deployment.public_port) for _ in range(260)]
    try:
        for n, visitor in enumerate(visitors):  # the first half of a ClientHello each: pending
            visitor.send(client_hello_initials(APP, pieces=2, pad=1500)[0])
            if n % 32 == 31:
                time.sleep(0.01)  # the kernel's UDP buffer is small; the Server reads meanwhile

        def dropped(reason):
            return value(metrics, "runewarp_quic_dropped_total", reason=reason) or 0

        assert eventually(lambda: dropped("pending-full") == 4)
        server.wait_for("server-saturated scope=quic-pending-full")
        assert eventually(lambda: dropped("pending-expired") == 256)
        assert value(metrics, "runewarp_quic_flows_total", outcome="pending-expired") == 256
        visitors[0].send(*client_hello_initials(APP))  # room again
        assert tunnel.flow(tunnel.next_stream(), 1)[0].source == visitors[0].address
        assert tunnel.streams == [tunnel.streams[0]]
    finally:
        for visitor in visitors:
            visitor.close()
    assert_running_without_traceback(server)


# What systemd does for a socket unit with ListenStream= and ListenDatagram= on one port:
# fds 3 and 4, LISTEN_FDS/LISTEN_FDNAMES, LISTEN_PID of the process it execs.
ACTIVATE_BOTH = """
import os, socket, sys
port = int(sys.argv[1])
tcp = socket.socket(); tcp.bind(("127.0.0.1", port)); tcp.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", port))
fds = [os.dup(tcp.fileno()), os.dup(udp.fileno())]  # above 4: dup2 cannot be a no-op
for fd, target in zip(fds, (3, 4)):
    os.dup2(fd, target)
os.environ.update(LISTEN_FDS="2", LISTEN_FDNAMES="public:quic", LISTEN_PID=str(os.getpid()))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def test_a_socket_activated_server_serves_the_passed_udp_socket(deployment):
    """A socket unit with `ListenDatagram=` beside `ListenStream=` (docs/quic.md): the Server
    takes the passed UDP socket instead of binding one."""
    from ..conftest import ROOT, runewarp_cmd
    port = free_port()
    identity = deployment.identity("client-a")
    path = deployment.server_config([("apps", [APP], [identity])], extra="public-quic = true")
    path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
    cmd = runewarp_cmd("server", "-c", path)
    server = harness.Process([sys.executable, "-c", ACTIVATE_BOTH, str(port), *cmd],
                             env=deployment.env, cwd=ROOT, name="socket-activated server")
    deployment.processes.append(server)
    server.wait_for(f"server-ready .*public-quic=127.0.0.1:{port}")
    deployment.public_port = port
    tunnel = Tunnel(deployment)
    visitor = Visitor(port)
    visitor.send(*client_hello_initials(APP))
    header, _ = tunnel.flow(tunnel.next_stream(), 1)
    assert header.source == visitor.address and header.protocol == "udp"
    assert "inherited" in server.log() and "address already in use" not in server.log()


def test_quic_flows_take_at_most_half_of_active_streams_so_tcp_visitors_still_get_in(deployment):
    """A valid Initial is free to forge from any address: QUIC alone cannot fill active-streams."""
    server = quic_server(deployment, extra="[server.limits]\nactive-streams = 4\n")
    tunnel = Tunnel(deployment)
    visitors = [Visitor(deployment.public_port) for _ in range(3)]
    for n, visitor in enumerate(visitors[:2]):
        visitor.send(*client_hello_initials(APP))
        tunnel.next_stream(n)
    visitors[2].send(*client_hello_initials(APP))
    server.wait_for("quic-flow-dropped .*reason=active-streams-full")
    tcp = socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10)
    try:
        tcp.sendall(clienthellos.build(APP))
        tcp_stream = tunnel.next_stream(2)  # the third stream: the TCP Visitor's
        tunnel.pump_until(lambda: len(tunnel.received[tcp_stream]) > 16)
        assert proxyv2.decode(bytes(tunnel.received[tcp_stream]))[0].protocol == "tcp"
    finally:
        tcp.close()
    assert_running_without_traceback(server)


def test_initials_without_a_usable_sni_are_refused_by_the_tcp_rule(deployment):
    metrics = free_port()
    server = quic_server(deployment, metrics_port=metrics)
    Tunnel(deployment)
    Visitor(deployment.public_port).send(*client_hello_initials(None))
    Visitor(deployment.public_port).send(*client_hello_initials("bad_name.example.com"))
    for outcome in ("no-sni", "invalid-sni"):
        assert eventually(lambda outcome=outcome: value(
            metrics, "runewarp_quic_flows_total", outcome=outcome) == 1), outcome
    assert_running_without_traceback(server)
