"""ECH on public traffic (docs/ech.md): a ClientHello with an encrypted_client_hello extension
is routed by its outer SNI, reaches the Local backend byte for byte (the backend holds the
ECH keys), and is counted in runewarp_visitor_ech_total."""

import os
import socket

import pytest

from tests import clienthellos

from ..proto.test_clienthello_ech import ech_ext, grease_ech
from .helpers import ECHO, recv_exactly, round_trip
from .test_metrics import deploy, eventually, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_an_ech_hello_goes_to_the_tunnel_of_its_outer_sni_and_is_counted(deployment, echo_backend):
    _, _, server_port, _ = deploy(deployment, echo_backend)
    assert value(server_port, "runewarp_visitor_ech_total") == 0
    drawn = os.urandom(64)
    hello = clienthellos.build(ECHO, ["h2"], extra_extensions=grease_ech(drawn), random=drawn)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(hello)
        assert recv_exactly(sock, len(hello)) == hello  # the extension reaches the backend untouched
        round_trip(sock, b"inner traffic", 10)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(clienthellos.build("other.example.com", extra_extensions=ech_ext()))  # an outer SNI of no Tunnel
        sock.settimeout(10)
        assert sock.recv(1) == b""

    def counted():
        return (value(server_port, "runewarp_visitor_ech_total") == 2
                and value(server_port, "runewarp_visitor_connections_total",
                          outcome="unknown-hostname") == 1)

    assert eventually(counted), value(server_port, "runewarp_visitor_ech_total")
    assert value(server_port, "runewarp_routed_streams_total", tunnel="apps", hostname=ECHO) == 1


def test_a_hello_without_ech_is_not_counted(deployment, echo_backend):
    _, _, server_port, _ = deploy(deployment, echo_backend)
    hello = clienthellos.build(ECHO)
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(hello)
        assert recv_exactly(sock, len(hello)) == hello
    assert eventually(lambda: value(server_port, "runewarp_routed_streams_total", tunnel="apps",
                                    hostname=ECHO) == 1)
    assert value(server_port, "runewarp_visitor_ech_total") == 0
