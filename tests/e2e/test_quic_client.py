"""The Client's QUIC flows (io/quicbackend.py) against a scripted Server: the real Client
on its real mTLS Tunnel connection to a `FakeServer`, which opens QUIC flow streams (the
PROXY v2 header with transport DGRAM, then framed datagrams) as the real Server does, to
real UDP Local backends on 127.0.0.1 (docs/quic.md, "The Client side")."""

import os
import socket
import threading
import time

import pytest
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

from runewarp.material import public_cert_folder
from runewarp.proto import proxyv2
from tests import clienthellos
from runewarp.proto.datagrams import DatagramDecoder, frame
from runewarp.proto.mux import RESET_BEFORE_BACKEND, StreamReset
from runewarp.proto.quic import VERSION_1, VERSION_2, crypto_frame, seal_initial

from ..conftest import cli_material, free_port
from .helpers import reload_by_signal
from .peers import APP, FakeServer, assert_running_without_traceback
from .test_metrics import eventually, value
from ..backend import pattern as body
from ..h3peers import H3Backend, UdpEcho

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

NO_QUIC = "noquic.example.com"  # a passthrough Service without quic-backend-address
TERMINATE = "term.example.com"  # a terminate Service (which can have none)
DEAD = "dead.example.com"  # quic-backend-address where nothing listens
WILD = "*.wild.example.com"
UNRESOLVED = "unresolved.example.com"  # quic-backend-address a name that does not resolve
VISITOR, PUBLIC = ("203.0.113.7", 50123), ("192.0.2.1", 443)
DCID, SCID = bytes.fromhex("8394c8f03e515708"), bytes.fromhex("c0ffee00")


@pytest.fixture
def udp_backend():
    backend = UdpEcho(prefix=b"re:")
    yield backend
    backend.close()


@pytest.fixture
def fake(deployment, echo_backend, udp_backend):
    """The real Client with Services APP (TCP echo + UDP echo), NO_QUIC, TERMINATE, DEAD and
    WILD, connected to a FakeServer: (FakeServer, its end of the Tunnel connection, the
    Client's metrics port)."""
    metrics_port = free_port()
    extra = f"""quic-backend-address = "{udp_backend.address}"

[[client.services]]
public-hostnames = ["{NO_QUIC}"]
backend-address = "{echo_backend.address}"

[[client.services]]
public-hostnames = ["{TERMINATE}"]
backend-address = "127.0.0.1:9"
tls-mode = "terminate"

[[client.services]]
public-hostnames = ["{DEAD}"]
backend-address = "127.0.0.1:9"
quic-backend-address = "127.0.0.1:{free_udp_port()}"

[[client.services]]
public-hostnames = ["{UNRESOLVED}"]
backend-address = "127.0.0.1:10"
quic-backend-address = "nowhere.invalid:443"

[[client.services]]
public-hostnames = ["{WILD}"]
backend-address = "127.0.0.1:9"
quic-backend-address = "{udp_backend.address}"

[client.metrics]
bind-address = "127.0.0.1:{metrics_port}"
"""
    server = FakeServer(deployment, echo_backend, hostname=APP, client_extra=extra)
    end = server.accept()
    end.say_welcome()
    server.client.wait_for("tunnel-connection-established")
    yield server, end, metrics_port
    server.close()


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def initials(hostname, parts=1, order=None, version=VERSION_1):
    """A ClientHello for `hostname` (ALPN h3) in CRYPTO frames over `parts` client Initials,
    sent in `order` (indexes; default: in order)."""
    message = clienthellos.build(hostname, ("h3",), random=os.urandom(64))[5:]  # no record header
    size = -(-len(message) // parts)
    packets = [seal_initial(version, DCID, SCID, number, [crypto_frame(offset, message[offset:offset + size])])
               for number, offset in enumerate(range(0, len(message), size))]
    return [packets[i] for i in (order or range(len(packets)))]


def open_flow(end, datagrams=(), raw=b""):
    """A QUIC flow stream as the Server opens one: the header, the framed datagrams, `raw`."""
    return end.open_stream(proxyv2.encode(VISITOR, PUBLIC, "udp")
                           + b"".join(frame(d) for d in datagrams) + raw)


def send_datagrams(end, stream_id, datagrams):
    end.send(stream_id, b"".join(frame(d) for d in datagrams))


def replies(end, stream_id):
    return DatagramDecoder().feed(bytes(end.received[stream_id]))


def reset_code(end, stream_id):
    end.pump_until(lambda: stream_id in end.reset)
    return next(e.code for e in end.events if isinstance(e, StreamReset) and e.stream_id == stream_id)


def tcp_stream_still_works(end):
    """A passthrough TCP stream on the same Tunnel connection: the echo returns the hello."""
    hello = clienthellos.build(APP, ("http/1.1",))
    stream_id = end.open_stream(proxyv2.encode(VISITOR, PUBLIC) + hello)
    end.pump_until(lambda: len(end.received[stream_id]) >= len(hello))
    assert bytes(end.received[stream_id]) == hello


def corrupt(packet):
    """`packet` with its last byte flipped: its AEAD tag fails, so the reader drops it."""
    return packet[:-1] + bytes([packet[-1] ^ 0xFF])


def test_a_flow_reaches_the_backend_in_order_and_the_replies_come_back_framed(fake, udp_backend,
                                                                              echo_backend):
    server, end, metrics_port = fake
    hello = initials(APP, parts=3, order=[2, 0, 1])
    # The corrupt Initial is the Visitor's too, and so is what follows the ClientHello.
    held = [hello[0], corrupt(hello[1]), hello[1], hello[2], b"\x40short-header-0"]
    flow = open_flow(end, held)
    assert [d for _, d in udp_backend.wait(5)] == held  # all of them, in order
    later = [b"\x40short-header-1", b"\x40short-header-2"]
    send_datagrams(end, flow, later)
    received = udp_backend.wait(7)
    assert [d for _, d in received] == held + later
    assert len({sender for sender, _ in received}) == 1  # one socket per flow
    end.pump_until(lambda: len(replies(end, flow)) == 7)
    assert replies(end, flow) == [b"re:" + d for d in held + later]
    server.client.wait_for(f"stream-routed .*public-hostname={APP}.*visitor=203.0.113.7:50123"
                           f".*backend-address={udp_backend.address}.*transport=quic")
    assert flow not in end.reset
    tcp_stream_still_works(end)
    assert eventually(lambda: value(metrics_port, "runewarp_client_quic_datagrams_total",
                                    direction="to-backend") == 7)
    assert eventually(lambda: value(metrics_port, "runewarp_client_quic_datagrams_total",
                                    direction="to-server") == 7)
    assert value(metrics_port, "runewarp_client_streams_total", service=echo_backend.address,
                 outcome="quic-relayed") == 1
    # A second flow, QUIC v2, to a hostname under the wildcard: its own socket.
    other = open_flow(end, initials("a.wild.example.com", version=VERSION_2))
    received = udp_backend.wait(8)
    assert received[7][0] != received[0][0]
    end.pump_until(lambda: len(replies(end, other)) == 1)
    assert_running_without_traceback(server.client)


@pytest.mark.parametrize("hostname, outcome, service", [
    ("unknown.example.com", "no-service", ""),
    (NO_QUIC, "no-quic-backend", None),
    (TERMINATE, "no-quic-backend", "127.0.0.1:9"),
])
def test_a_flow_without_a_quic_backend_is_reset_before_backend(fake, udp_backend, hostname, outcome,
                                                             service):
    server, end, metrics_port = fake
    flow = open_flow(end, initials(hostname, parts=2))
    assert reset_code(end, flow) == RESET_BEFORE_BACKEND
    server.client.wait_for(f"stream-rejected .*public-hostname={hostname}.*reason={outcome}")
    if service is not None:
        assert eventually(lambda: value(metrics_port, "runewarp_client_streams_total",
                                        service=service, outcome=outcome) == 1)
    assert udp_backend.received == []
    tcp_stream_still_works(end)
    assert_running_without_traceback(server.client)


def test_a_quic_backend_that_does_not_resolve_is_reset_before_backend(fake):
    server, end, metrics_port = fake
    flow = open_flow(end, initials(UNRESOLVED))
    assert reset_code(end, flow) == RESET_BEFORE_BACKEND
    server.client.wait_for(f"backend-connect-failed public-hostname={UNRESOLVED} transport=quic "
                           "backend-address=nowhere.invalid:443")
    assert eventually(lambda: value(metrics_port, "runewarp_client_streams_total",
                                    service="127.0.0.1:10", outcome="backend-connect-failed") == 1)
    tcp_stream_still_works(end)
    assert_running_without_traceback(server.client)


def test_a_backend_port_with_nothing_listening_ends_the_flow(fake):
    server, end, _ = fake
    flow = open_flow(end, initials(DEAD))
    assert reset_code(end, flow) == 0
    server.client.wait_for(f"stream-closed .*public-hostname={DEAD}.*transport=quic.*reason=backend-refused")
    tcp_stream_still_works(end)
    assert_running_without_traceback(server.client)


@pytest.mark.parametrize("case, reason", [
    ("zero-length-frame", "malformed"),
    ("too-many-datagrams", "too-large"),
    ("too-many-initials", "too-many-packets"),
    ("garbage-then-end", "closed-before-client-hello"),
])
def test_bad_flows_are_reset_and_other_streams_go_on(fake, udp_backend, case, reason):
    server, end, _ = fake
    good = open_flow(end, initials(APP))
    udp_backend.wait(1)
    if case == "zero-length-frame":
        bad = open_flow(end, initials(APP, parts=2)[:1], raw=b"\x00\x00")
    elif case == "too-many-datagrams":  # none of them decrypts: the flow may hold only so many
        first, second = initials(APP, parts=2)
        bad = open_flow(end, [first] + [corrupt(second)] * 40)
    elif case == "too-many-initials":  # the same half of a ClientHello, again and again
        bad = open_flow(end, initials(APP, parts=2)[:1] * 17)
    else:
        bad = open_flow(end, [os.urandom(60), corrupt(initials(APP)[0])])
        end.session.end_stream(bad)
        end.flush()
    assert reset_code(end, bad) == 0
    server.client.wait_for(f"stream-rejected reason={reason}")
    send_datagrams(end, good, [b"\x40after"])
    end.pump_until(lambda: len(replies(end, good)) == 2)
    assert good not in end.reset
    assert [d for _, d in udp_backend.received][1:] == [b"\x40after"]  # nothing of the bad flow
    tcp_stream_still_works(end)
    assert_running_without_traceback(server.client)


def test_a_zero_length_frame_after_the_hello_resets_the_flow(fake, udp_backend):
    server, end, _ = fake
    flow = open_flow(end, initials(APP))
    udp_backend.wait(1)
    end.send(flow, b"\x00\x00")
    assert reset_code(end, flow) == 0
    server.client.wait_for('stream-closed .*transport=quic.*reason="framing-error')
    assert_running_without_traceback(server.client)


def test_an_end_from_the_server_closes_the_flow_and_its_socket(fake, udp_backend):
    server, end, _ = fake
    flow = open_flow(end, initials(APP))
    sender, _ = udp_backend.wait(1)[0]
    end.session.end_stream(flow)
    end.flush()
    server.client.wait_for("stream-closed .*transport=quic.*reason=server-ended")
    assert_socket_closed(sender)


def assert_socket_closed(address):
    """Nothing is bound at `address` any more: a datagram to it comes back refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(5)
        probe.connect(address)
        probe.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            probe.recv(100)


def test_quic_idle_timeout_reloaded_ends_the_next_flows_and_closes_their_sockets(fake, udp_backend):
    server, end, _ = fake
    before = open_flow(end, initials(APP))  # started with the default, 30 s
    udp_backend.wait(1)
    path = server.client.args[2]
    path.write_text(path.read_text().replace("[client]\n", "[client]\nquic-idle-timeout = 1\n", 1))
    reload_by_signal(server.client, "client-reloaded")
    after = open_flow(end, initials(APP))
    sender, _ = udp_backend.wait(2)[1]
    assert reset_code(end, after) == 0
    server.client.wait_for("stream-closed .*transport=quic.*reason=idle-timeout")
    assert_socket_closed(sender)
    assert before not in end.reset  # 30 s from its start: far off
    send_datagrams(end, before, [b"\x40still-here"])
    end.pump_until(lambda: len(replies(end, before)) == 2)
    assert_running_without_traceback(server.client)


def test_quic_backend_address_reloaded_applies_to_the_next_flow(fake, udp_backend):
    server, end, _ = fake
    refused = open_flow(end, initials(NO_QUIC))
    assert reset_code(end, refused) == RESET_BEFORE_BACKEND
    path = server.client.args[2]
    text = path.read_text()
    path.write_text(text.replace(f'public-hostnames = ["{NO_QUIC}"]\n',
                                 f'public-hostnames = ["{NO_QUIC}"]\n'
                                 f'quic-backend-address = "{udp_backend.address}"\n', 1))
    reload_by_signal(server.client, "client-reloaded")
    relayed = open_flow(end, initials(NO_QUIC))
    udp_backend.wait(1)
    end.pump_until(lambda: len(replies(end, relayed)) == 1)
    assert relayed not in end.reset
    path.write_text(text)  # and removed again: the next flow is refused, the running one goes on
    reload_by_signal(server.client, "client-reloaded")
    again = open_flow(end, initials(NO_QUIC))
    assert reset_code(end, again) == RESET_BEFORE_BACKEND
    send_datagrams(end, relayed, [b"\x40still-here"])
    end.pump_until(lambda: len(replies(end, relayed)) == 2)
    assert_running_without_traceback(server.client)


def test_an_http3_exchange_with_an_aioquic_backend_through_the_client(deployment, echo_backend, tmp_path):
    """A real QUIC handshake and HTTP/3 request, the Visitor's side driven over the flow stream."""
    size = 200_000
    folder = tmp_path / "h3"
    cli_material(folder, "client", "public-cert", "init", "--hostname", APP)
    cert = folder / public_cert_folder(APP)
    backend = H3Backend(cert / "public.crt", cert / "public.key")
    server = FakeServer(deployment, echo_backend, hostname=APP,
                        client_extra=f'quic-backend-address = "{backend.address}"\n')
    try:
        end = server.accept()
        end.say_welcome()
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=APP)
        config.load_verify_locations(str(folder / "public-ca.crt"))  # the backend's, checked
        quic = QuicConnection(configuration=config)
        h3 = H3Connection(quic)
        quic.connect(PUBLIC, now=time.time())
        flow = open_flow(end, [d for d, _ in quic.datagrams_to_send(now=time.time())])
        decoder, seen, request, status, received, done = DatagramDecoder(), 0, None, None, b"", False
        deadline = time.monotonic() + 30
        while not done:
            assert time.monotonic() < deadline, "no HTTP/3 response"
            try:
                end.pump_until(lambda seen=seen: len(end.received[flow]) > seen or flow in end.reset,
                               timeout=0.2)
            except AssertionError:
                assert not end.closed
            assert flow not in end.reset
            data = bytes(end.received[flow][seen:])
            seen += len(data)
            for datagram in decoder.feed(data):
                quic.receive_datagram(datagram, PUBLIC, now=time.time())
            timer = quic.get_timer()
            if timer is not None and timer <= time.time():
                quic.handle_timer(now=time.time())
            while (event := quic.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    request = quic.get_next_available_stream_id()
                    h3.send_headers(request, [(b":method", b"GET"), (b":scheme", b"https"),
                                              (b":authority", APP.encode()),
                                              (b":path", f"/size/{size}".encode())],
                                    end_stream=True)
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived):
                        status = dict(h3_event.headers)[b":status"]
                    elif isinstance(h3_event, DataReceived):
                        received += h3_event.data
                        done = h3_event.stream_ended
            outgoing = [d for d, _ in quic.datagrams_to_send(now=time.time())]
            if outgoing:
                send_datagrams(end, flow, outgoing)
        assert status == b"200"
        assert received == body(size)
        server.client.wait_for(f"stream-routed .*public-hostname={APP}.*transport=quic")
        assert_running_without_traceback(server.client)
    finally:
        server.close()
        backend.stop()


class FloodBackend(UdpEcho):
    """UdpEcho, but b"flood" makes it send FLOOD numbered 1000-byte datagrams, then, once the
    Client has surely read them all, b"final"; `flooded` is set after that."""

    def __init__(self):
        self.flooded = threading.Event()
        super().__init__(prefix=b"re:")

    def answer(self, data, peer):
        if data != b"\x40flood":
            return super().answer(data, peer)
        for number in range(FLOOD):
            self.sock.sendto(number.to_bytes(4) + bytes(996), peer)
            if number % 50 == 0:
                time.sleep(0.001)  # paced: the kernel never drops, only the Client may
        time.sleep(0.3)
        self.sock.sendto(b"final", peer)
        self.flooded.set()


FLOOD = 2000


def test_a_slow_tunnel_connection_drops_the_oldest_datagrams_toward_the_server(fake, udp_backend):
    """The scripted Server reads nothing while the backend floods: the stream's window fills,
    the flow's queue drops its oldest datagrams, and the newest (b"final") still arrives."""
    server, end, metrics_port = fake
    flood = FloodBackend()
    try:
        path = server.client.args[2]
        path.write_text(path.read_text().replace(udp_backend.address, flood.address))
        reload_by_signal(server.client, "client-reloaded")
        flow = open_flow(end, initials(APP) + [b"\x40flood"])
        assert flood.flooded.wait(30)
        time.sleep(0.3)  # for the Client to take b"final" from its socket
        end.pump_until(lambda: b"final" in replies(end, flow), timeout=20)
        got = replies(end, flow)
        assert got[-1] == b"final"
        numbers = [int.from_bytes(d[:4]) for d in got if len(d) == 1000]
        assert numbers == sorted(set(numbers))  # in order, none twice
        assert len(numbers) < FLOOD
        dropped = value(metrics_port, "runewarp_client_quic_dropped_datagrams_total", direction="to-server")
        assert 0 < dropped <= FLOOD - len(numbers)  # (the rest, if any, the kernel dropped)
        assert flow not in end.reset
        tcp_stream_still_works(end)
        assert_running_without_traceback(server.client)
    finally:
        flood.close()
