"""A listed (or compromised) Client against the Server, and a malicious Server against
the real Client (issue 10, items 7-12 and 15).

- ping flood (item 7): a peer sends pings for ~5 s and never reads the answers;
  it is closed, memory stays bounded (Server, and Client against a fake Server),
  and the Client dials again.
- oversized frame (item 8): a data header announcing 16 MiB on a stream with
  256 KiB credit ends the connection with go-away at once, payload never sent.
- per-Tunnel share (item 9): one Tunnel's hung streams cannot use up
  active-streams for the other Tunnels.
- deep JSON (item 10) and unchecked welcome (item 11): a control line 5,000
  brackets deep, as the hello or after the welcome on the Server, and as the
  welcome on the Client; a welcome of the wrong type or field types.
- log injection (item 12): control characters in hello and welcome fields never
  reach a log line raw.
- joining during a drain (item 15): a connection that says hello after SIGTERM
  gets its welcome, then go-away.

The fakes are tests/e2e/peers.py; the Server's fake Client is listed in Tunnel "rogue".
"""

import concurrent.futures
import json
import signal
import socket
import ssl
import threading
import time

import pytest

from runewarp.proto import control
from tests import clienthellos
from runewarp.proto.mux import (FLAG_SYN, GOAWAY_PROTOCOL_ERROR, TYPE_DATA, TYPE_PING,
                                DataReceived, GoAwayReceived, encode_header)

from ..e2e.helpers import get
from ..e2e.peers import (APP, FakeClientEnd, FakeServer, control_stream_with,
                         read_until_closed)
from .conftest import (ROGUE, assert_clean, fd_count, peer_closed, rss_mib,
                       wait_until)

pytestmark = [pytest.mark.e2e]
DEEP = b"[" * 5000 + b"]" * 5000 + b"\n"
PINGS = encode_header(TYPE_PING, FLAG_SYN, 0, 7) * 10_000  # 120 KB of ping requests


@pytest.fixture
def fake_server(deployment, backend):
    server = FakeServer(deployment, backend)
    yield server
    server.close()


def flood_without_reading(tls, proc, seconds=5):
    """Send pings from a thread for `seconds`, never reading; watch `proc`'s RSS meanwhile.

    Returns (closed by the peer, RSS growth in MiB)."""
    before = peak = rss_mib(proc)
    tls.settimeout(None)  # a send that blocks is the peer not reading, not an error

    def flood():
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                tls.sendall(PINGS)
        except OSError:  # EPIPE, ECONNRESET: the peer closed
            return True
        return False

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(flood)
        deadline = time.monotonic() + seconds + 5
        while not (sending.done() or time.monotonic() > deadline):
            peak = max(peak, rss_mib(proc))
            time.sleep(0.05)
        closed = sending.done() and sending.result() or wait_until(lambda: peer_closed(tls), 5)
        if not sending.done():  # the peer stopped reading and never closed: unblock sendall
            try:
                socket.socket.shutdown(tls, socket.SHUT_RDWR)
            except OSError:
                pass
        sending.result(timeout=10)
    return closed, peak - before


@pytest.mark.timeout(60)
def test_ping_flood_from_a_client_that_never_reads(edge):
    e = edge()
    baseline = fd_count(e.server)
    end = e.rogue_join()
    closed, growth = flood_without_reading(end.tls, e.server)
    end.tls.close()
    assert closed, "the Server kept a Tunnel connection that never reads its replies"
    assert growth < 32, f"Server RSS grew {growth:.0f} MiB during the flood"
    e.server.wait_for(f"tunnel-connection-closed tunnel=rogue .*client-identity={e.rogue_identity}",
                      timeout=5)
    assert wait_until(lambda: fd_count(e.server) <= baseline + 2, 5), (fd_count(e.server), baseline)
    e.assert_healthy()


@pytest.mark.timeout(60)
def test_ping_flood_from_a_server_that_never_reads(fake_server):
    client = fake_server.client
    end = fake_server.accept()
    end.say_welcome()
    client.wait_for("tunnel-connection-established")
    closed, growth = flood_without_reading(end.tls, client)
    assert closed, "the Client kept a Tunnel connection that never reads its replies"
    assert growth < 32, f"Client RSS grew {growth:.0f} MiB during the flood"
    client.wait_for("tunnel-connection-lost")
    fake_server.accept(timeout=10).say_welcome()
    assert wait_until(lambda: client.count("tunnel-connection-established") == 2, 10)
    assert_clean(client)


@pytest.mark.timeout(40)
def test_oversized_data_frame_is_refused_by_its_header(edge):
    e = edge()
    end = e.rogue_join()
    with end.tls:
        # Stream 1 (control) has 256 KiB of credit: announce 16 MiB and send no payload.
        end.tls.sendall(encode_header(TYPE_DATA, 0, 1, 16 * 1024 * 1024))
        data, seconds = read_until_closed(end.tls, 5)
    assert seconds < 2, f"closed after {seconds:.1f}s"
    events = end.session.receive_data(data, time.monotonic())
    assert GoAwayReceived(GOAWAY_PROTOCOL_ERROR) in events, events
    e.assert_healthy()


def serve_without_answering(end, stop):
    """A fake Client's session loop: ACK every stream the Server opens, never send data."""
    end.tls.settimeout(0.2)
    while not stop.is_set():
        try:
            data = end.tls.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return
        if not data:
            return
        end.session.receive_data(data, time.monotonic())
        end.flush()


@pytest.mark.timeout(60)
def test_one_tunnel_cannot_take_every_active_stream(edge):
    e = edge(limits="active-streams = 40")
    end = e.rogue_join()
    stop = threading.Event()
    pump = threading.Thread(target=serve_without_answering, args=(end, stop), daemon=True)
    pump.start()
    socks = []
    try:
        for _ in range(45):
            sock = socket.create_connection(("127.0.0.1", e.port), timeout=5)
            sock.sendall(clienthellos.build(ROGUE, ("http/1.1",)))
            socks.append(sock)
        # The rogue Tunnel gets its share (half of 40 with two Tunnels); the rest is closed.
        def refused():
            return sum(map(peer_closed, socks))

        def routed():
            return e.server.count("visitor-routed .*tunnel=rogue")

        wait_until(lambda: refused() >= 25 and routed() >= 20, 5)
        assert (routed(), refused()) == (20, 25), "(routed, refused) of 45 rogue Visitors"
        e.server.wait_for("server-saturated scope=active-streams-per-tunnel:rogue", timeout=5)
        for _ in range(3):  # while they are held, the other Tunnel is served
            e.assert_healthy()
    finally:
        stop.set()
        pump.join(5)
        for sock in socks:
            sock.close()
        end.tls.close()
    e.assert_healthy()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("where", ["as-hello", "after-welcome"])
def test_deep_json_on_the_servers_control_stream(edge, where):
    e = edge()
    mark = len(e.server.lines)
    if where == "as-hello":
        with e.rogue_tls() as tls:
            tls.sendall(control_stream_with(DEEP))
            _, seconds = read_until_closed(tls, 10)
        assert seconds < 5
        e.server.wait_for(f"tunnel-connection-refused .*client-identity={e.rogue_identity}",
                          start=mark, timeout=5)
    else:
        end = e.rogue_join()
        with end.tls:
            end.send(1, DEEP)
            end.pump_until(lambda: 1 in end.reset, timeout=5)  # the control stream is reset
            e.server.wait_for("control-stream-reset", start=mark, timeout=5)
    e.assert_healthy()


BAD_WELCOMES = {
    "deep-json": DEEP,
    "not-welcome": b'{"type": "nonsense"}\n',
    "wrong-types": b'{"type": "welcome", "tunnel": 5, "version": ["x"]}\n',
}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("line", BAD_WELCOMES.values(), ids=BAD_WELCOMES.keys())
def test_client_refuses_a_bad_welcome_and_dials_again(fake_server, line):
    client = fake_server.client
    first = fake_server.accept()
    first.say_welcome(line)
    _, seconds = read_until_closed(first.tls, 5)  # the Client hangs up at once
    assert seconds < 2
    client.wait_for("tunnel-connection-failed")
    assert client.count("tunnel-connection-established") == 0
    assert client.count("tunnel-connection-failed") == 1
    again = fake_server.accept(timeout=10)  # the first backoff is about 1 s
    again.say_welcome()
    client.wait_for("tunnel-connection-established")
    assert_clean(client)


@pytest.mark.timeout(40)
def test_hello_fields_with_control_characters_are_escaped_in_server_logs(edge):
    e = edge()
    end = FakeClientEnd(e.rogue_tls())
    hello = control.hello("1\x85x", "\r\x1b[2J", ["a\u2028b.example", "c\x9bd\u2029"], False)
    end.say_hello(control.encode(hello))
    end.pump_until(lambda: b"\n" in end.received[1] or end.closed, timeout=10)
    e.server.wait_for(f"tunnel-connection-(established|refused) .*client-identity={e.rogue_identity}",
                      timeout=5)
    end.tls.close()
    e.server.wait_for(f"tunnel-connection-(closed|refused) .*client-identity={e.rogue_identity}",
                      timeout=5)
    e.assert_healthy()  # assert_clean: no raw C0, DEL, C1, U+2028/2029 in any line


@pytest.mark.timeout(40)
def test_welcome_fields_with_control_characters_are_escaped_in_client_logs(fake_server):
    client = fake_server.client
    welcome = control.welcome("ap\r\x1b[2Jps\u2028", "9\x85\x07")
    fake_server.accept().say_welcome(control.encode(welcome))
    client.wait_for("tunnel-connection-(established|failed)")
    time.sleep(0.2)
    assert_clean(client)


@pytest.mark.timeout(60)
def test_a_client_that_joins_during_a_drain_gets_welcome_then_go_away(edge, backend):
    e = edge(grace=30)
    ctx = ssl.create_default_context(cafile=str(backend.ca))
    visitor = ctx.wrap_socket(socket.create_connection(("127.0.0.1", e.port), timeout=10),
                              server_hostname=APP)  # an established stream keeps the drain busy
    with visitor:
        end = FakeClientEnd(e.rogue_tls())  # TLS done; the hello is held back
        mark = len(e.server.lines)
        e.server.signal(signal.SIGTERM)
        e.server.wait_for("shutdown-started", start=mark, timeout=5)
        end.say_hello(hostnames=[ROGUE])
        end.pump_until(end.go_away_received, timeout=5)
        kinds = [type(ev) for ev in end.events if isinstance(ev, DataReceived | GoAwayReceived)]
        assert DataReceived in kinds and kinds.index(DataReceived) < kinds.index(GoAwayReceived)
        assert json.loads(bytes(end.received[1]).split(b"\n")[0])["type"] == "welcome"
        end.tls.close()
        visitor.sendall(get("/", APP))  # the draining Server still serves the held Visitor
        reply = b""
        try:
            while chunk := visitor.recv(65536):
                reply += chunk
        except ssl.SSLEOFError:
            pass
    assert reply.endswith(b"backend=app\n"), reply
    assert_clean(e.server, e.client)
