"""The Tunnel connection's data path over real TLS (the Server's pyOpenSSL end, the Client's
stdlib end) on loopback pairs in this process: every byte arrives, in order, both ways,
while several connections share the engines' feed buffer (tlsconn._FEED)."""

import os

import gevent
import pytest

from runewarp.io.tlsconn import ClientTLSConnection, ServerTLSConnection
from runewarp.io.tunnel import TunnelSession
from runewarp.proto.mux import Role

from ..conftest import SERVER_HOSTNAME
from .test_splice import _Log, pair

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


def echo(_session, stream):
    """The Server's end: every byte of the stream back, then the end."""
    def run():
        while data := stream.recv():
            stream.consumed(len(data))
            stream.sendall(data)
        stream.end()
    gevent.spawn(run)


def connected(contexts):
    """A Client and a Server TunnelSession over real TLS on a loopback pair."""
    server_context, client_context = contexts
    near, far = pair()
    client_tls = ClientTLSConnection(near, client_context, SERVER_HOSTNAME)
    server_tls = ServerTLSConnection(far, server_context)
    accepting = gevent.spawn(server_tls.handshake)
    client_tls.handshake()
    accepting.get(timeout=10)
    sessions = (TunnelSession(client_tls, Role.CLIENT, on_stream=lambda s, st: st.reset(),
                              log=_Log()),
                TunnelSession(server_tls, Role.SERVER, on_stream=echo, log=_Log()))
    for session in sessions:
        session.start()
    return sessions


def round_trip(session, payload):
    """Send `payload` on a new stream in 100,000-byte writes and read the echo to its end."""
    stream = session.open_stream()

    def send():
        for offset in range(0, len(payload), 100_000):
            stream.sendall(payload[offset:offset + 100_000])
        stream.end()

    sender = gevent.spawn(send)
    received = bytearray()
    while data := stream.recv(timeout=20):
        stream.consumed(len(data))
        received += data
    sender.get(timeout=10)
    return bytes(received)


def test_every_byte_crosses_several_tunnel_connections_at_once_in_order(contexts):
    pairs = [connected(contexts) for _ in range(3)]
    payloads = [os.urandom(3 * MiB + 7) for _ in pairs]
    try:
        trips = [gevent.spawn(round_trip, client, payload)
                 for (client, _server), payload in zip(pairs, payloads, strict=True)]
        gevent.joinall(trips, timeout=40, raise_error=True)
        for trip, payload in zip(trips, payloads, strict=True):
            assert trip.value is not None, "a round trip did not finish"
            assert len(trip.value) == len(payload)
            assert trip.value == payload
    finally:
        for sessions in pairs:
            for session in sessions:
                session.close()
