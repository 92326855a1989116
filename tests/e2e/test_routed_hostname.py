"""PP2_TYPE_AUTHORITY: a passthrough Client routes on the hostname the Server sends in the
PROXY v2 header and forwards the ClientHello without parsing it (docs/protocol.md).

The fake Server (tests/e2e/peers.py: stdlib TLS and Runewarp's sans-I/O mux) controls every
byte of the header, so the test can send what a real Server never would: a TLV naming one
hostname before a ClientHello for another, a TLV that is not a hostname, no TLV at all.
"""

import socket

import pytest

from runewarp.proto import proxyv2
from tests import clienthellos

from .peers import APP, FakeClientEnd, FakeServer, assert_running_without_traceback, tunnel_tls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

VISITOR, PUBLIC = ("203.0.113.7", 50123), ("192.0.2.1", 443)


@pytest.fixture
def end(deployment, backend):
    server = FakeServer(deployment, backend)
    try:
        end = server.accept()
        end.say_welcome()
        server.client.wait_for("tunnel-connection-established .*tunnel=apps")
        end.client = server.client
        yield end
    finally:
        server.close()


def backend_answered(end, stream):
    """The backend's first TLS record came back on the stream: a ServerHello, or an alert
    for a hello it would not complete (clienthellos.build's key share is not a real one)."""
    end.pump_until(lambda: len(end.received[stream]) >= 5 or stream in end.reset)
    answer = bytes(end.received[stream][:5])
    return answer[:1] in (b"\x15", b"\x16") and answer[1:3] == b"\x03\x03"


def test_the_authority_routes_and_the_hello_is_forwarded_unparsed(end):
    """The hello names a hostname no Service serves: only the TLV can have routed it."""
    header = proxyv2.encode(VISITOR, PUBLIC, authority=APP)
    stream = end.open_stream(header + clienthellos.build("unknown.example.com", ("http/1.1",)))
    assert backend_answered(end, stream)
    assert stream not in end.reset
    end.client.wait_for(f"stream-routed .*public-hostname={APP}.*visitor=203.0.113.7:50123")


def test_a_header_without_the_tlv_routes_on_the_hello(end):
    """An older Server's header: the Client reads the ClientHello, as before."""
    header = proxyv2.encode(VISITOR, PUBLIC)
    stream = end.open_stream(header + clienthellos.build(APP, ("http/1.1",)))
    assert backend_answered(end, stream)
    unknown = end.open_stream(header + clienthellos.build("unknown.example.com", ("h2",)))
    end.pump_until(lambda: unknown in end.reset)
    end.client.wait_for("stream-rejected .*public-hostname=unknown.example.com.*reason=no-service")


@pytest.mark.parametrize("value", [b"bad_name.example", b"*.example.com", b"\xff", b"x" * 300])
def test_an_invalid_authority_resets_the_stream_only(end, value):
    header = proxyv2.encode(VISITOR, PUBLIC, tlvs=proxyv2.tlv(proxyv2.PP2_TYPE_AUTHORITY, value))
    bad = end.open_stream(header + clienthellos.build(APP, ("http/1.1",)))
    end.pump_until(lambda: bad in end.reset)
    end.client.wait_for("stream-rejected .*bad-proxy-header: PP2_TYPE_AUTHORITY")
    good = end.open_stream(proxyv2.encode(VISITOR, PUBLIC, authority=APP)
                           + clienthellos.build(APP, ("http/1.1",)))
    assert backend_answered(end, good)  # the Tunnel connection carries on
    assert not end.closed and not end.session.closed
    assert_running_without_traceback(end.client)


def test_the_server_sends_the_routed_hostname(deployment):
    """A real Server, a fake Client: the stream's header names the hostname the Server routed
    on (normalized: the Visitor's SNI is in capitals), and the ClientHello follows verbatim."""
    fake = deployment.identity("fake-client")
    deployment.start_server([("apps", [APP], [fake])])
    end = FakeClientEnd(tunnel_tls(deployment.public_port, deployment.ca_file,
                                   deployment.dir / "fake-client"))
    end.join(hostnames=[APP])
    hello = clienthellos.build(APP.upper(), ("http/1.1",))
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as visitor:
        visitor.sendall(hello)
        end.pump_until(lambda: any(len(data) > len(hello) for data in end.received.values()))
    data = next(bytes(data) for sid, data in end.received.items() if sid != 1)
    header, length = proxyv2.decode(data)
    assert proxyv2.routed_hostname(header) == APP
    assert header.source[0] == "127.0.0.1" and header.destination[1] == deployment.public_port
    assert data[length:] == hello
