"""The Server's QUIC flow table (proto/quicflows.py), with a scripted InitialReader.

The reader's own parsing is tested in tests/proto/test_quic*.py; here a fake reader
whose answer is written at the end of each datagram lets any sequence of outcomes
(need more, ClientHello, fatal or harmless drop) be generated, so the table's
bounds and ordering are checked for every one of them.
"""

from hypothesis import given, settings, strategies as st

from runewarp.proto.clienthello import ClientHello
from runewarp.proto.quic import VERSION_1, QuicDropped
from runewarp.proto.quicflows import (Dropped, Expired, FlowTable, Forward, Held, Routable)

HELLO = ClientHello("app.example.com", ("h3",), 0x0303, 300)
SERVER_CID = bytes(range(1, 9))
VISITOR = ("192.0.2.1", 4433)


class FakeReader:
    """An InitialReader whose answer is the datagram's last byte: H hello, F fatal, N harmless."""

    version = VERSION_1
    dcid = b"\xaa" * 8  # long_header's default

    def feed(self, datagram):
        mark = datagram[-1:]
        if mark == b"H":
            return HELLO
        if mark in (b"F", b"N"):
            raise QuicDropped("undecryptable" if mark == b"N" else "malformed", fatal=mark == b"F")
        return None


def long_header(kind, tail=b"", version=VERSION_1, dcid=b"\xaa" * 8, scid=b"\xbb" * 8, size=1200):
    """A well-formed long-header packet (kind 0 Initial, 1 0-RTT, 2 Handshake) ending in `tail`."""
    token = b"\x00" if kind == 0 else b""
    head = (bytes([0xC0 | kind << 4 | 0x03]) + version.to_bytes(4) + bytes([len(dcid)]) + dcid
            + bytes([len(scid)]) + scid + token)
    payload_size = max(size - len(head) - 2, 4 + len(tail) + 1)
    payload = b"\x00\x00\x00\x01" + b"\x00" * (payload_size - 4 - len(tail)) + tail
    return head + (0x4000 | payload_size).to_bytes(2) + payload


def initial(tail=b"", **kwargs):
    return long_header(0, tail, **kwargs)


def short_header(dcid):
    return bytes([0x43]) + dcid + b"\x00" * 40


def table(**kwargs):
    kwargs.setdefault("new_reader", FakeReader)
    return FlowTable(30.0, **kwargs)


def test_initial_then_hello_routes_with_every_held_datagram_in_order():
    flows = table()
    first, zero_rtt, last = initial(b"1"), long_header(1, b"z"), initial(b"H")
    assert isinstance(flows.receive(VISITOR, first, 0.0), Held)
    assert isinstance(flows.receive(VISITOR, zero_rtt, 0.1), Held)  # held, not parsed
    event = flows.receive(VISITOR, last, 0.2)
    assert isinstance(event, Routable)
    assert event.hello is HELLO and event.datagrams == (first, zero_rtt, last)
    assert not flows.pending and flows.open_flows == 1
    later = flows.receive(VISITOR, b"\x40anything", 0.3)
    assert later == Forward(event.flow, b"\x40anything")
    assert flows.receive(VISITOR, b"", 0.4) == Dropped("malformed")


def test_unknown_address_drops_short_headers_other_long_headers_and_garbage():
    flows = table()
    assert flows.receive(VISITOR, short_header(b"\x01" * 8), 0) == Dropped("short-header")
    assert flows.receive(VISITOR, long_header(2), 0) == Dropped("not-initial")
    assert flows.receive(VISITOR, long_header(1), 0) == Dropped("not-initial")
    assert flows.receive(VISITOR, b"\xc0\x00", 0) == Dropped("malformed")
    assert flows.receive(VISITOR, b"", 0) == Dropped("malformed")
    assert flows.receive(VISITOR, initial(version=0x1A2A3A4A), 0) == Dropped("unsupported-version")
    assert flows.receive(VISITOR, initial(version=0), 0) == Dropped("unsupported-version")
    assert not flows.flows


def test_a_fatal_drop_ends_the_pending_flow_and_a_harmless_one_keeps_it():
    flows = table()
    flows.receive(VISITOR, initial(b"1"), 0)
    assert flows.receive(VISITOR, initial(b"N"), 0) == Dropped("undecryptable")
    assert VISITOR in flows.pending
    event = flows.receive(VISITOR, initial(b"F"), 0)
    assert event.reason == "malformed" and event.flow is not None
    assert not flows.flows and not flows.pending


def test_an_initial_its_reader_cannot_read_takes_no_pending_slot():
    """A flood of undecryptable Initials from ever new ports must not fill the pending table."""
    flows = table(max_pending=2)
    for port in range(10):
        assert flows.receive(("192.0.2.1", port), initial(b"N"), 0.0) == Dropped("undecryptable")
    assert not flows.flows and not flows.pending
    assert isinstance(flows.receive(VISITOR, initial(b"1"), 0.0), Held)
    assert isinstance(flows.receive(VISITOR, initial(b"H"), 0.0), Routable)


def test_pending_flows_are_bounded_and_expire():
    flows = table(max_pending=2, pending_deadline=3.0)
    assert isinstance(flows.receive(("192.0.2.1", 1), initial(), 0.0), Held)
    assert isinstance(flows.receive(("192.0.2.1", 2), initial(), 1.0), Held)
    assert flows.receive(("192.0.2.1", 3), initial(), 1.5) == Dropped("pending-full")
    assert [(e.reason, e.flow.peer) for e in flows.expire(3.5)] == [("pending-expired", ("192.0.2.1", 1))]
    assert isinstance(flows.receive(("192.0.2.1", 3), initial(), 3.5), Held)
    assert len(flows.pending) == 2


def test_a_pending_flow_holds_a_bounded_number_of_datagrams():
    flows = table(max_held=3)
    for _ in range(3):
        assert isinstance(flows.receive(VISITOR, initial(), 0), Held)
    event = flows.receive(VISITOR, initial(), 0)
    assert event.reason == "too-large" and not flows.flows
    flows = table(max_held_bytes=2500)
    flows.receive(VISITOR, initial(), 0)
    flows.receive(VISITOR, initial(), 0)
    assert flows.receive(VISITOR, initial(), 0).reason == "too-large"


def open_flow(flows, peer=VISITOR, now=0.0):
    return flows.receive(peer, initial(b"H"), now).flow


def test_an_open_flow_expires_after_its_own_idle_timeout():
    flows = table()
    flow = open_flow(flows)
    flows.idle_timeout = 5.0  # a reload: new flows only
    newer = open_flow(flows, ("192.0.2.2", 1))
    flows.receive(VISITOR, b"\x40x", 10.0)
    assert [(e.reason, e.flow) for e in flows.expire(20.0)] == [("idle", newer)]
    flows.learn(flow, b"\x40answer", 30.0)  # the Client side's datagrams count too
    assert flows.expire(59.0) == []
    assert flows.expire(60.0) == [Expired("idle", flow)]
    assert not flows.flows


def test_a_migrated_visitor_follows_its_flow_by_a_learned_server_cid():
    flows = table()
    flow = open_flow(flows)
    moved = ("198.51.100.7", 5555)
    assert flows.receive(moved, short_header(SERVER_CID), 1) == Dropped("short-header")
    flows.learn(flow, long_header(2, scid=SERVER_CID, dcid=b"\xcc" * 8), 1)
    event = flows.receive(moved, short_header(SERVER_CID), 2)
    assert event == Forward(flow, short_header(SERVER_CID), migrated=True)
    assert flow.peer == moved and VISITOR not in flows.flows
    assert flows.receive(moved, b"\x40y", 3) == Forward(flow, b"\x40y")
    flows.forget(flow)
    assert flows.receive(("203.0.113.1", 1), short_header(SERVER_CID), 4) == Dropped("short-header")
    assert not flows.by_cid and not flows.cid_lengths


def test_cids_are_learned_from_long_headers_of_open_flows_only_and_bounded():
    flows = table()
    flow = open_flow(flows)
    flows.learn(flow, short_header(b"\x01" * 8), 0)
    flows.learn(flow, b"\xc0", 0)  # truncated: ignored
    for i in range(10):
        flows.learn(flow, long_header(2, scid=bytes([i]) * (4 + i)), 0)
    assert len(flow.cids) == 4 and len(flows.by_cid) == 4


# -- any sequence of datagrams from any peers --

PEERS = [("192.0.2.1", p) for p in range(6)]
KINDS = st.sampled_from(["more", "hello", "fatal", "harmless", "zero-rtt", "handshake", "short",
                         "cid", "garbage", "empty"])


def make(kind, counter):
    tail = counter.to_bytes(4) + {"more": b"m", "hello": b"H", "fatal": b"F", "harmless": b"N"}.get(kind, b"m")
    if kind in ("more", "hello", "fatal", "harmless"):
        return initial(tail, size=400)
    if kind == "zero-rtt":
        return long_header(1, tail, size=300)
    if kind == "handshake":
        return long_header(2, tail, size=300)
    if kind == "short":
        return short_header(counter.to_bytes(8))
    if kind == "cid":
        return short_header(SERVER_CID)
    return b"" if kind == "empty" else bytes([counter % 256]) * (counter % 7)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PEERS), KINDS, st.floats(0, 2)), max_size=120))
def test_any_datagrams_keep_the_table_bounded_and_consistent(steps):
    flows = table(max_pending=3, max_held=4, max_held_bytes=1500, pending_deadline=3.0)
    flows.idle_timeout = 5.0
    now = 0.0
    delivered = {}  # flow -> datagrams the table gave the I/O layer, in order
    sent = {}  # flow -> datagrams it should have given (held, then forwarded)
    held = {}
    for i, (peer, kind, step) in enumerate(steps):
        now += step
        datagram = make(kind, i)
        flow_before = flows.flows.get(peer)
        event = flows.receive(peer, datagram, now)
        if isinstance(event, Routable):
            delivered[event.flow] = list(event.datagrams)
            sent[event.flow] = held.pop(event.flow, []) + [datagram]
            flows.learn(event.flow, long_header(2, scid=SERVER_CID), now)
        elif isinstance(event, Forward):
            delivered[event.flow].append(event.datagram)
            sent[event.flow].append(datagram)
        elif isinstance(event, Held):
            held.setdefault(event.flow, []).append(datagram)
        else:
            assert isinstance(event, Dropped)
            assert flow_before is None or flow_before.state == "pending" or event.flow is None
            assert event.flow is None or event.flow not in delivered
        for expired in flows.expire(now):
            assert expired.reason == ("idle" if expired.flow in delivered else "pending-expired")
        assert len(flows.pending) <= 3
        for peer_key, flow in flows.flows.items():
            assert flow.peer == peer_key
            assert len(flow.held) <= 4 and flow.held_bytes <= 1500
            assert (flow.state == "pending") == (peer_key in flows.pending)
        assert all(flows.flows.get(f.peer) is f for f in flows.by_cid.values())
        assert sum(flows.cid_lengths.values()) == len(flows.by_cid)
    assert delivered == sent


def test_the_real_reader_routes_a_clienthello_spread_over_initials_out_of_order():
    import os

    from tests import clienthellos
    from runewarp.proto.quic import crypto_frame, seal_initial

    message = clienthellos.build("app.example.com", ("h3",), random=os.urandom(64),
                                extra_extensions=(0xFFAA).to_bytes(2) + (2000).to_bytes(2) + bytes(2000))[5:]
    dcid, half = os.urandom(8), len(message) // 2
    first = seal_initial(VERSION_1, dcid, b"", 0, crypto_frame(0, message[:half]))
    second = seal_initial(VERSION_1, dcid, b"", 1, crypto_frame(half, message[half:]))
    flows = FlowTable(30.0)
    assert isinstance(flows.receive(VISITOR, second, 0), Held)
    assert flows.receive(VISITOR, b"\x40" + dcid, 0) == Dropped("short-header")  # not held
    tampered = bytearray(first)
    tampered[-1] ^= 1
    assert flows.receive(VISITOR, bytes(tampered), 0) == Dropped("undecryptable")
    event = flows.receive(VISITOR, first, 0)
    assert isinstance(event, Routable) and event.datagrams == (second, first)
    assert event.hello.server_name == "app.example.com" and event.hello.alpn_protocols == ("h3",)


def test_an_initial_for_another_connection_from_the_same_address_never_joins_the_open_flow():
    """A client reusing its port for a second connection (maybe to another Tunnel's hostname)."""
    flows = table()
    flow = open_flow(flows)
    assert flows.receive(VISITOR, initial(b"1", dcid=b"\xcc" * 8), 1.0) == Dropped("other-connection")
    assert isinstance(flows.receive(VISITOR, initial(b"1"), 1.0), Forward)  # its own DCID
    flows.learn(flow, long_header(2, scid=SERVER_CID), 1.0)
    assert isinstance(flows.receive(VISITOR, initial(b"1", dcid=SERVER_CID), 1.0), Forward)


def test_only_cids_of_the_flows_version_and_a_server_length_are_learned():
    flows = table()
    flow = open_flow(flows)
    flows.learn(flow, long_header(2, scid=b"\x41"), 0.0)  # 1 byte: would match any 0x41...
    flows.learn(flow, long_header(2, scid=SERVER_CID, version=0x1A2A3A4A), 0.0)
    assert flow.cids == [] and not flows.by_cid
    assert flows.receive(("192.0.2.9", 1), short_header(b"\x41" * 8), 0.0) == Dropped("short-header")


def test_nothing_is_learned_for_a_flow_that_ended():
    flows = table()
    flow = open_flow(flows)
    flows.forget(flow)
    flows.learn(flow, long_header(2, scid=SERVER_CID), 0.0)  # a late reply of the ended flow
    assert not flows.by_cid and not flows.cid_lengths
    again = open_flow(flows)  # the same Visitor connects again
    assert flows.receive(("192.0.2.9", 1), short_header(SERVER_CID), 0.0) == Dropped("short-header")
    assert flows.flows[VISITOR] is again
