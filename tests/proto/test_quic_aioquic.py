"""The Initial reader against the first datagrams of a real QUIC client (aioquic, the
test-only peer): v1 and v2, a ClientHello over several Initials, reordered,
duplicated and retransmitted (a probe timeout resends the CRYPTO data in new packets)."""

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion

from runewarp.proto.quic import VERSION_1, VERSION_2, InitialReader, QuicDropped, first_header

BIG_ALPN = ["h3", *(f"x{i:02}" + "y" * 196 for i in range(20))]  # about 4 KiB: four Initials


def client(version, alpn=("h3",)):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=list(alpn),
                                      server_name="App.Example.com", original_version=version)
    connection = QuicConnection(configuration=configuration)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return connection


def datagrams(connection, now=0.0):
    return [data for data, _ in connection.datagrams_to_send(now=now)]


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_a_real_client_hello_in_one_initial(version):
    sent = datagrams(client(QuicProtocolVersion(version)))
    assert len(sent) == 1
    header = first_header(sent[0])
    reader = InitialReader()
    hello = reader.feed(sent[0])
    assert (hello.server_name, hello.alpn_protocols) == ("App.Example.com", ("h3",))
    assert (reader.version, reader.dcid, header.initial) == (version, header.dcid, True)


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_a_real_multi_packet_client_hello_reordered_and_duplicated(version):
    sent = datagrams(client(QuicProtocolVersion(version), BIG_ALPN))
    assert len(sent) > 2
    reader = InitialReader()
    order = [sent[-1], sent[1], sent[-1], *reversed(sent[2:]), sent[0]]
    results = [reader.feed(d) for d in order]
    assert results[:-1] == [None] * (len(order) - 1)
    assert results[-1].server_name == "App.Example.com"
    assert results[-1].alpn_protocols == tuple(BIG_ALPN)


def test_retransmitted_initials_complete_the_same_client_hello():
    connection = client(QuicProtocolVersion.VERSION_1, BIG_ALPN)
    first = datagrams(connection)
    connection.handle_timer(now=connection.get_timer())
    again = datagrams(connection, now=connection.get_timer() or 1.0)
    assert again, "the probe timeout resends Initials"
    reader = InitialReader()
    assert all(reader.feed(d) is None for d in first[1:])
    hello = next(h for h in (reader.feed(d) for d in again) if h is not None)
    assert hello.alpn_protocols == tuple(BIG_ALPN)


def test_a_real_client_hello_cannot_be_read_with_another_dcid():
    reader = InitialReader()
    assert reader.feed(datagrams(client(QuicProtocolVersion.VERSION_1, BIG_ALPN))[0]) is None
    other = datagrams(client(QuicProtocolVersion.VERSION_1, BIG_ALPN))  # a new random DCID
    with pytest.raises(QuicDropped) as info:
        reader.feed(other[1])
    assert (info.value.reason, info.value.fatal) == ("undecryptable", False)
