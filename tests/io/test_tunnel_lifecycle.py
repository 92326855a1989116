"""A closed Tunnel connection gives its memory back at once, not at the next cyclic GC.

Real TLS (the Server's pyOpenSSL end, the Client's stdlib end, certificates made
by our own CLI) and real mux sessions over a loopback TCP pair, in this
process's gevent hub.  The cyclic garbage collector is disabled while the
sessions run and close: whatever is still alive afterwards is held by a
reference cycle (or a leak), which is what kept 100+ MiB per round of closed
connections on a busy Server.
"""

import gc
import weakref

import gevent
import pytest

from runewarp.io.tlsconn import ClientTLSConnection, ServerTLSConnection
from runewarp.io.tunnel import TunnelSession
from runewarp.io.tunnelstream import drain_control, read_control_messages
from runewarp.proto import control
from runewarp.proto.mux import Role
from runewarp.tls import client_tunnel_context, is_unauthorized_alert, server_tunnel_context

from ..conftest import SERVER_HOSTNAME, run_cli
from .test_splice import _Log, pair

pytestmark = pytest.mark.timeout(60)


def _one_round(contexts, closer):
    """Handshake, control hello both ways, some data, then close from `closer`'s side."""
    server_ctx, client_ctx = contexts
    near, far = pair()
    client_tls = ClientTLSConnection(near, client_ctx, SERVER_HOSTNAME)
    server_tls = ServerTLSConnection(far, server_ctx)
    delivered = []
    handshakes = [gevent.spawn(client_tls.handshake),
                  gevent.spawn(server_tls.handshake, delivered.append)]
    gevent.joinall(handshakes, raise_error=True, timeout=10)
    assert sum(delivered) > 200  # the Client's flights, counted for admission's shedding

    opened, received = [], []
    client = TunnelSession(client_tls, Role.CLIENT, on_stream=lambda s, st: received.append(st),
                           log=_Log())
    server = TunnelSession(server_tls, Role.SERVER, on_stream=lambda s, st: opened.append(st),
                           log=_Log())
    client.start()
    server.start()
    hello = client.open_stream()
    hello.sendall(control.encode(control.hello("0", "i", ["a.example.com"], False)))
    with gevent.Timeout(5):
        while not opened:
            gevent.sleep(0.01)
        decoder = control.LineDecoder()
        read_control_messages(opened[0], decoder)
    drainers = [gevent.spawn(drain_control, opened[0], decoder)]
    data = server.open_stream()
    sender = gevent.spawn(data.sendall, b"x" * 300_000)
    with gevent.Timeout(5):
        while not received:
            gevent.sleep(0.01)
        assert received[0].recv_consumed()  # a stream with bytes still buffered at close
    sender.kill()
    (client if closer == "client" else server).close("test done")
    with gevent.Timeout(5):
        client.wait()
        server.wait()
    gevent.joinall(drainers, timeout=5)
    gevent.sleep(0.05)  # the killed greenlets finish on the next loop turns
    return [weakref.ref(o) for o in (client, server, client_tls, server_tls,
                                     client.session, server.session)]


@pytest.mark.parametrize("closer", ["client", "server"])
def test_closed_sessions_are_freed_without_the_cyclic_collector(contexts, closer):
    gc.collect()
    gc.disable()
    try:
        refs = _one_round(contexts, closer)
        gevent.sleep(0.1)
        alive = [type(r()).__name__ for r in refs if r() is not None]
    finally:
        gc.enable()
    assert alive == [], f"still alive after close with the cyclic GC off: {alive}"


def test_a_refused_identity_is_known_by_the_alert_the_reader_got(tmp_path):
    """TLS 1.3 refuses a Client certificate after the Client's handshake completed: the
    refusal arrives as an alert on the first read, and it is judged by its reason code."""
    run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", tmp_path / "s")
    run_cli("client", "identity", "init", "--dir", tmp_path / "c")
    server_ctx = server_tunnel_context(tmp_path / "s" / "server.crt", tmp_path / "s" / "server.key",
                                       authorize=lambda identity: False)
    client_ctx = client_tunnel_context(tmp_path / "c" / "client.crt", tmp_path / "c" / "client.key",
                                       "ca-file", tmp_path / "s" / "server-ca.crt")
    near, far = pair()
    client_tls = ClientTLSConnection(near, client_ctx, SERVER_HOSTNAME)
    server_tls = ServerTLSConnection(far, server_ctx)
    refusing = gevent.spawn(server_tls.handshake)
    client_tls.handshake()
    client = TunnelSession(client_tls, Role.CLIENT, on_stream=lambda s, st: st.reset(), log=_Log())
    client.start()
    client.open_stream().sendall(b"hello\n")
    assert client.wait(5)
    refusing.join(5)
    far.close()
    assert is_unauthorized_alert(client.read_error), repr(client.read_error)
    assert not is_unauthorized_alert(ConnectionResetError("reset"))


class _DeadWriter:
    """A transport whose peer vanished: every write fails, reads never return."""

    def sendall(self, data):
        raise BrokenPipeError("peer gone")

    def recv_into(self, buffer):
        gevent.sleep(60)

    def close(self):
        pass


def test_a_connection_whose_writer_failed_takes_no_new_streams():
    """While the reader gets its grace to read the peer's last words, placement must not
    pick this connection: a Visitor put there would only be reset a second later."""
    session = TunnelSession(_DeadWriter(), Role.SERVER, on_stream=lambda s, st: None,
                            log=_Log())
    session.start()
    try:
        assert session.accepting
        session.open_stream()  # its SYN makes the writer write, and fail
        with gevent.Timeout(0.5):
            while session.accepting:
                gevent.sleep(0.01)
        assert not session.closed.is_set()  # still in its grace, yet refusing streams
    finally:
        session.close()
