import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runewarp.errors import LocalProtocolError, RemoteProtocolError
from runewarp.proto.mux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GOAWAY_INTERNAL_ERROR,
    GOAWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    ConnectionDead,
    DataReceived,
    Frame,
    FrameDecoder,
    GoAwayReceived,
    PingAcknowledged,
    Role,
    Session,
    StreamAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowBudget,
    WindowUpdated,
    encode_header,
)
from runewarp.proto.mux.inbound import MAX_OWED_ACKS

KiB = 1024
MiB = 1024 * KiB
GO_AWAY_PROTOCOL = encode_header(TYPE_GO_AWAY, 0, 0, GOAWAY_PROTOCOL_ERROR)
GO_AWAY_INTERNAL = encode_header(TYPE_GO_AWAY, 0, 0, GOAWAY_INTERNAL_ERROR)


class SessionPair:
    """Two connected Sessions and a fake clock, like h11's ConnectionPair."""

    def __init__(self, **kwargs):
        self.now = 0.0
        self.client = Session(Role.CLIENT, now=self.now, **kwargs)
        self.server = Session(Role.SERVER, now=self.now, **kwargs)

    def peer(self, session):
        return self.server if session is self.client else self.client

    def pump(self, chunk=None, acks=True):
        """Shuttle bytes both ways until both are quiet; returns (client events, server events).
        Owed ACKs go too (`acks`), as the Tunnel's timer sends them between exchanges."""
        got = {id(self.client): [], id(self.server): []}
        moving = True
        while moving:
            moving = False
            for sender in (self.client, self.server):
                if acks:
                    sender.flush_acks()
                data = sender.data_to_send()
                if not data:
                    continue
                moving = True
                receiver = self.peer(sender)
                step = chunk or len(data)
                for i in range(0, len(data), step):
                    got[id(receiver)] += receiver.receive_data(data[i:i + step], self.now)
        return got[id(self.client)], got[id(self.server)]


def frames(data):
    decoder = FrameDecoder()
    decoder.feed(data)
    return list(decoder)


def data_frame(stream_id, payload, flags=0):
    return encode_header(TYPE_DATA, flags, stream_id, len(payload)) + payload


def window_update(stream_id, delta=0, flags=0):
    return encode_header(TYPE_WINDOW_UPDATE, flags, stream_id, delta)


def received(events, stream_id):
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id)


# -- opening streams --

def test_open_streams_from_both_sides_with_correct_parity():
    pair = SessionPair()
    assert [pair.client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [pair.server.open_stream() for _ in range(2)] == [2, 4]
    client_events, server_events = pair.pump()
    assert [e for e in server_events if isinstance(e, StreamOpened)] == [
        StreamOpened(1), StreamOpened(3), StreamOpened(5)]
    assert [e for e in client_events if isinstance(e, StreamOpened)] == [StreamOpened(2), StreamOpened(4)]
    assert StreamAcknowledged(1) in client_events and StreamAcknowledged(2) in server_events
    assert sorted(pair.client.stream_ids()) == sorted(pair.server.stream_ids()) == [1, 2, 3, 4, 5]
    assert pair.client.active_streams == 5


def test_syn_and_ack_wire_format():
    pair = SessionPair()
    sid = pair.client.open_stream()
    assert pair.client.outbound_pending == 12
    syn = pair.client.data_to_send()
    assert syn == window_update(1, 0, FLAG_SYN)
    assert pair.client.data_to_send() == b"" and pair.client.outbound_pending == 0
    assert pair.server.receive_data(syn, 0.0) == [StreamOpened(sid)]
    assert pair.server.data_to_send() == b""  # owed until our first frame or the timer
    pair.server.handle_timer(0.0)
    assert pair.server.data_to_send() == window_update(1, 0, FLAG_ACK)


def test_the_ack_rides_with_the_first_frame_on_the_stream():
    """One write for the ACK and the answer: no Tunnel write of its own per stream."""
    pair = SessionPair(initial_window=1 * MiB)
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"hello")
    assert DataReceived(sid, b"hello") in pair.server.receive_data(pair.client.data_to_send(), 0.0)
    other = pair.client.open_stream()
    pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert pair.server.data_to_send() == b""
    pair.server.send_data(sid, b"answer")
    pair.server.end_stream(sid)
    assert frames(pair.server.data_to_send()) == [
        Frame(TYPE_WINDOW_UPDATE, FLAG_ACK, sid, 1 * MiB - INITIAL_WINDOW),
        Frame(TYPE_DATA, 0, sid, 6, b"answer"), Frame(TYPE_WINDOW_UPDATE, FLAG_FIN, sid, 0)]
    pair.server.end_stream(other)  # a FIN first: its ACK goes just before it
    assert frames(pair.server.data_to_send()) == [
        Frame(TYPE_WINDOW_UPDATE, FLAG_ACK, other, 1 * MiB - INITIAL_WINDOW),
        Frame(TYPE_WINDOW_UPDATE, FLAG_FIN, other, 0)]


def test_a_reset_needs_no_ack_and_a_backlog_is_acked_at_once():
    server = Session(Role.SERVER)
    server.receive_data(window_update(1, 0, FLAG_SYN), 0.0)
    server.reset_stream(1)
    assert frames(server.data_to_send()) == [Frame(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)]
    server.handle_timer(0.0)
    assert server.data_to_send() == b""
    ids = range(3, 3 + 2 * MAX_OWED_ACKS, 2)
    server.receive_data(b"".join(window_update(sid, 0, FLAG_SYN) for sid in ids), 0.0)
    assert [f.stream_id for f in frames(server.data_to_send())] == list(ids)


def test_data_before_ack():
    pair = SessionPair()
    sid = pair.client.open_stream()
    assert pair.client.send_data(sid, b"early") == 5
    wire = pair.client.data_to_send()
    assert frames(wire) == [Frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0), Frame(TYPE_DATA, 0, 1, 5, b"early")]
    events = pair.server.receive_data(wire, 0.0)
    assert events == [StreamOpened(1), DataReceived(1, b"early")]


def test_peer_opening_with_data_syn():
    server = Session(Role.SERVER)
    assert server.receive_data(data_frame(1, b"hi", FLAG_SYN), 0.0) == [StreamOpened(1), DataReceived(1, b"hi")]
    assert server.unconsumed(1) == 2


def test_bigger_initial_window_is_announced_in_syn_and_ack():
    pair = SessionPair(initial_window=1 * MiB)
    sid = pair.client.open_stream()
    syn = pair.client.data_to_send()
    assert syn == window_update(sid, 1 * MiB - INITIAL_WINDOW, FLAG_SYN)
    pair.server.receive_data(syn, pair.now)
    pair.pump()
    assert pair.server.send_credit(sid) == 1 * MiB
    assert pair.client.send_credit(sid) == 1 * MiB


def test_hashicorp_style_whole_window_frame_accepted():
    server = Session(Role.SERVER, initial_window=4 * MiB)
    server.receive_data(window_update(1, 0, FLAG_SYN), 0.0)
    server.flush_acks()
    assert frames(server.data_to_send()) == [Frame(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 4 * MiB - INITIAL_WINDOW)]
    payload = bytes(4 * MiB)
    assert server.receive_data(data_frame(1, payload), 0.0) == [DataReceived(1, payload)]


def test_send_data_respects_credit_and_frame_size():
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    assert pair.client.send_data(sid, memoryview(bytes(300 * KiB))) == INITIAL_WINDOW
    assert pair.client.send_data(sid, b"more") == 0
    assert pair.client.send_credit(sid) == 0
    sent = frames(pair.client.data_to_send())
    assert [f.length for f in sent] == [64 * KiB] * 4
    assert pair.client.send_credit(999) == 0
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(999, b"x")


# -- flow control --

N_STREAMS = 4
_ops = st.one_of(
    st.tuples(st.just("send"), st.booleans(), st.integers(0, N_STREAMS - 1),
              st.one_of(st.integers(0, 4 * KiB), st.integers(100 * KiB, 300 * KiB))),
    st.tuples(st.just("consume"), st.booleans(), st.integers(0, N_STREAMS - 1), st.sampled_from([0.0, 0.3, 0.5, 1.0])),
    st.tuples(st.just("pump"), st.sampled_from([None, 4093, 65536])),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_ops, max_size=40), max_frame_size=st.sampled_from([1000, 16 * KiB, 64 * KiB]),
       seed=st.integers(0, 2**32))
def test_windows_never_exceeded_and_bytes_arrive_in_order(ops, max_frame_size, seed):
    max_window = 1 * MiB
    pair = SessionPair(max_window=max_window, max_frame_size=max_frame_size)
    rng = random.Random(seed)
    sides = (pair.client, pair.server)
    sids = [pair.client.open_stream(), pair.server.open_stream(),
            pair.client.open_stream(), pair.server.open_stream()]
    # Per (sender index, stream): bytes the application wants to send and how many went out.
    outgoing = {(s, sid): bytearray() for s in (0, 1) for sid in sids}
    taken = dict.fromkeys(outgoing, 0)
    # Per (receiver index, stream): bytes received and how many were consumed.
    arrived = {key: bytearray() for key in outgoing}
    delivered = dict.fromkeys(outgoing, 0)

    def try_send(s, sid):
        key = (s, sid)
        n = sides[s].send_data(sid, memoryview(outgoing[key])[taken[key]:])
        assert n <= len(outgoing[key]) - taken[key]
        taken[key] += n

    def pump(chunk=None):
        events = pair.pump(chunk)
        for r in (0, 1):
            for e in events[r]:
                if isinstance(e, DataReceived):
                    arrived[(r, e.stream_id)] += e.data
        for r in (0, 1):
            for sid in sids:
                key = (r, sid)
                buffered = len(arrived[key]) - delivered[key]
                assert sides[r].unconsumed(sid) == buffered
                assert buffered <= sides[r].receive_window(sid) <= max_window

    def consume(r, sid, fraction):
        key = (r, sid)
        n = int((len(arrived[key]) - delivered[key]) * fraction)
        sides[r].consumed(sid, n)
        delivered[key] += n

    pump()
    for op in ops:
        if op[0] == "send":
            _, s, i, n = op
            outgoing[(int(s), sids[i])] += rng.randbytes(n)
            try_send(int(s), sids[i])
        elif op[0] == "consume":
            _, r, i, fraction = op
            consume(int(r), sids[i], fraction)
        else:
            pump(op[1])

    for _ in range(1000):
        for key in outgoing:
            try_send(*key)
        pump()
        for r in (0, 1):
            for sid in sids:
                consume(r, sid, 1.0)
        pump()
        if all(taken[k] == len(outgoing[k]) for k in outgoing):
            break
    # Sender s's bytes arrive at receiver 1 - s, byte-identical and in order.
    for (s, sid), data in outgoing.items():
        assert arrived[(1 - s, sid)] == data

    for session in sides:
        for sid in sids:
            session.end_stream(sid)
    pump()
    assert pair.client.active_streams == pair.server.active_streams == 0


def _transfer(pair, sid, total, consume):
    """Client sends `total` bytes on `sid`; the server consumes what `consume` decides.

    `consume(buffered, chunks)` gets the server's unconsumed byte count and this
    round's DataReceived sizes, and returns the sizes to pass to consumed().
    """
    payload = memoryview(bytes(total))
    offset = 0
    buffered = 0
    max_credit = 0
    for _ in range(10_000):
        if offset == total:
            break
        offset += pair.client.send_data(sid, payload[offset:])
        _, server_events = pair.pump()
        chunks = [len(e.data) for e in server_events if isinstance(e, DataReceived)]
        buffered += sum(chunks)
        for n in consume(buffered, chunks):
            pair.server.consumed(sid, n)
            buffered -= n
        assert pair.server.unconsumed(sid) == buffered <= pair.server.receive_window(sid)
        pair.pump()
        max_credit = max(max_credit, pair.client.send_credit(sid))
    return offset, max_credit


def _keeps_up(buffered, chunks):
    # Like the I/O layer: one consumed() per DataReceived, in arrival order.
    return chunks


def test_window_grows_for_fast_consumer():
    pair = SessionPair()
    sid = pair.client.open_stream()
    sent, max_credit = _transfer(pair, sid, 8 * MiB, _keeps_up)
    assert sent == 8 * MiB
    assert pair.server.receive_window(sid) > INITIAL_WINDOW
    assert max_credit > INITIAL_WINDOW


def test_window_capped_at_max_window():
    pair = SessionPair(max_window=1 * MiB)
    sid = pair.client.open_stream()
    _transfer(pair, sid, 16 * MiB, _keeps_up)
    assert pair.server.receive_window(sid) == 1 * MiB
    assert pair.client.send_credit(sid) <= 1 * MiB


def test_window_never_grows_for_stalled_consumer():
    pair = SessionPair()
    sid = pair.client.open_stream()
    # Consume only part of what is buffered: the reader never catches up.
    sent, max_credit = _transfer(pair, sid, 2 * MiB, lambda buffered, chunks: [buffered // 2])
    assert sent == 2 * MiB
    assert pair.server.receive_window(sid) == INITIAL_WINDOW
    assert max_credit <= INITIAL_WINDOW
    assert pair.server.unconsumed(sid) <= INITIAL_WINDOW


def test_window_update_event_carries_total_credit():
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    pair.client.send_data(sid, bytes(INITIAL_WINDOW))
    pair.pump()
    pair.server.consumed(sid, INITIAL_WINDOW // 2)
    client_events, _ = pair.pump()
    assert client_events == [WindowUpdated(sid, INITIAL_WINDOW // 2)]


def test_consuming_more_than_received_is_local_error():
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.client.send_data(sid, b"abc")
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.server.consumed(sid, 4)
    pair.server.consumed(12345, 10)  # gone stream: no-op


def test_credit_violation_is_protocol_error():
    server = Session(Role.SERVER)
    server.receive_data(window_update(1, 0, FLAG_SYN) + data_frame(1, bytes(INITIAL_WINDOW)), 0.0)
    server.data_to_send()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(data_frame(1, b"x"), 0.0)
    assert server.closed and server.go_away_sent
    assert server.data_to_send() == GO_AWAY_PROTOCOL
    assert server.receive_data(data_frame(1, b"x"), 0.0) == []
    with pytest.raises(LocalProtocolError):
        server.open_stream()


def test_credit_violation_in_one_frame():
    server = Session(Role.SERVER)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(window_update(1, 0, FLAG_SYN) + data_frame(1, bytes(INITIAL_WINDOW + 1)), 0.0)
    assert server.data_to_send().endswith(GO_AWAY_PROTOCOL)


# -- closing --

@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_both_orders(first):
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    a = getattr(pair, first)
    b = pair.peer(a)
    a.end_stream(sid)
    a.end_stream(sid)  # idempotent
    fin = a.data_to_send()
    assert fin == window_update(sid, 0, FLAG_FIN)
    assert b.receive_data(fin, pair.now) == [StreamEnded(sid)]
    with pytest.raises(LocalProtocolError):
        a.send_data(sid, b"nope")
    # The other direction stays open: b may still send and a still receives.
    assert b.send_data(sid, b"late reply") == 10
    assert a.receive_data(b.data_to_send(), pair.now) == [DataReceived(sid, b"late reply")]
    assert a.is_open(sid) and b.is_open(sid)
    b.end_stream(sid)
    assert not b.is_open(sid)
    assert a.receive_data(b.data_to_send(), pair.now) == [StreamEnded(sid)]
    assert not a.is_open(sid)
    assert a.active_streams == b.active_streams == 0
    a.end_stream(sid)  # gone: no-op
    assert a.data_to_send() == b""


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_through_pump(first):
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    a = getattr(pair, first)
    b = pair.peer(a)
    a.send_data(sid, b"request")
    a.end_stream(sid)
    events = pair.pump()
    b_events = events[1] if a is pair.client else events[0]
    assert b_events[-2:] == [DataReceived(sid, b"request"), StreamEnded(sid)]
    b.send_data(sid, b"response")
    b.end_stream(sid)
    events = pair.pump()
    a_events = events[0] if a is pair.client else events[1]
    assert a_events == [DataReceived(sid, b"response"), StreamEnded(sid)]
    assert pair.client.active_streams == pair.server.active_streams == 0


def test_reset():
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    pair.client.reset_stream(sid)
    assert not pair.client.is_open(sid)
    pair.client.reset_stream(sid)  # no-op
    pair.server.send_data(sid, b"in flight")
    client_events, server_events = pair.pump()
    # The client drops the late data and answers it with RST; the server ignores that.
    assert client_events == []
    assert server_events == [StreamReset(sid)]
    assert not pair.server.is_open(sid)
    with pytest.raises(LocalProtocolError):
        pair.server.send_data(sid, b"x")
    assert pair.pump() == ([], [])


def test_data_for_unknown_stream_is_answered_with_rst():
    server = Session(Role.SERVER)
    assert server.receive_data(data_frame(7, b"zz"), 0.0) == []
    assert server.data_to_send() == window_update(7, 0, FLAG_RST)
    assert server.receive_data(data_frame(7, b"zz", FLAG_RST) + window_update(9, 5), 0.0) == []
    assert server.data_to_send() == b""


def test_data_after_fin_is_protocol_error():
    server = Session(Role.SERVER)
    server.receive_data(window_update(1, 0, FLAG_SYN | FLAG_FIN), 0.0)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(data_frame(1, b"x"), 0.0)


# -- pings and keepalive --

def test_ping_echo():
    pair = SessionPair()
    pair.client.ping(42)
    assert pair.client.outbound_pending == 12
    pair.server.ping(0xFFFFFFFF)
    client_events, server_events = pair.pump()
    assert client_events == [PingAcknowledged(42)]
    assert server_events == [PingAcknowledged(0xFFFFFFFF)]
    pair.client.ping(7)
    ping = pair.client.data_to_send()
    assert ping == encode_header(TYPE_PING, FLAG_SYN, 0, 7)
    assert pair.server.receive_data(ping, 0.0) == []
    assert pair.server.data_to_send() == encode_header(TYPE_PING, FLAG_ACK, 0, 7)
    with pytest.raises(ValueError):
        pair.client.ping(1 << 32)


def test_keepalive_ping_and_dead_peer():
    client = Session(Role.CLIENT, now=100.0)
    assert client.next_timer() == 120.0
    assert client.handle_timer(119.9) == [] and client.data_to_send() == b""
    assert client.handle_timer(120.0) == []
    [ping] = frames(client.data_to_send())
    assert (ping.type, ping.flags, ping.stream_id) == (TYPE_PING, FLAG_SYN, 0)
    assert client.next_timer() == 140.0
    assert client.handle_timer(140.0) == []
    assert client.next_timer() == 160.0
    assert client.handle_timer(159.0) == []
    assert client.handle_timer(160.0) == [ConnectionDead()]
    assert client.handle_timer(200.0) == []
    assert client.closed


def test_keepalive_keeps_live_peer_alive():
    pair = SessionPair()
    for step in range(1, 40):
        pair.now = step * 5.0
        assert pair.client.handle_timer(pair.now) == []
        assert pair.server.handle_timer(pair.now) == []
        client_events, server_events = pair.pump()
        if step % 4 == 0:
            assert any(isinstance(e, PingAcknowledged) for e in client_events)
    assert not pair.client.closed and not pair.server.closed


def test_silence_after_traffic_kills():
    pair = SessionPair()
    pair.now = 30.0
    pair.client.ping(1)
    pair.pump()
    assert pair.client.handle_timer(89.0) == []
    assert pair.client.handle_timer(90.0) == [ConnectionDead()]


# -- go away --

def test_go_away_semantics():
    pair = SessionPair()
    sid = pair.client.open_stream()
    pair.pump()
    pair.server.go_away()
    pair.server.go_away()  # idempotent
    assert pair.server.data_to_send() == encode_header(TYPE_GO_AWAY, 0, 0, 0)
    pair.server.go_away()
    pair.client.receive_data(encode_header(TYPE_GO_AWAY, 0, 0, 0), 0.0)
    assert pair.client.go_away_received and pair.server.go_away_sent
    # Only the receiver of a go away stops opening streams (HashiCorp's rule).
    with pytest.raises(LocalProtocolError, match="peer sent go away"):
        pair.client.open_stream()
    late = pair.server.open_stream()
    pair.server.send_data(late, b"placed while draining")
    assert pair.pump() == ([StreamOpened(late), DataReceived(late, b"placed while draining")],
                           [StreamAcknowledged(late)])
    # Existing streams finish normally.
    pair.client.send_data(sid, b"still here")
    pair.client.end_stream(sid)
    _, server_events = pair.pump()
    assert server_events == [DataReceived(sid, b"still here"), StreamEnded(sid)]


def test_syn_that_crossed_our_go_away_is_accepted():
    """The peer opened the stream before it read our go away: it is served, not reset
    (a stopping Client still serves what the Server placed in the last round trip)."""
    pair = SessionPair()
    sid = pair.server.open_stream()
    pair.server.send_data(sid, b"placed just in time")
    pair.client.go_away(0)
    # The client's go away and the server's SYN cross on the wire.
    server_events = pair.server.receive_data(pair.client.data_to_send(), 0.0)
    assert server_events == [GoAwayReceived(0)]
    client_events = pair.client.receive_data(pair.server.data_to_send(), 0.0)
    assert client_events == [StreamOpened(sid), DataReceived(sid, b"placed just in time")]
    assert pair.client.is_open(sid)
    pair.client.flush_acks()
    ack = pair.client.data_to_send()
    assert ack == window_update(sid, 0, FLAG_ACK)
    assert pair.server.receive_data(ack, 0.0) == [StreamAcknowledged(sid)]
    pair.client.send_data(sid, b"served")
    pair.client.end_stream(sid)
    assert pair.server.receive_data(pair.client.data_to_send(), 0.0) == [
        DataReceived(sid, b"served"), StreamEnded(sid)]


# -- scale --

def test_thousand_streams_interleaved():
    pair = SessionPair()
    rng = random.Random(1)
    sides = (pair.client, pair.server)
    opened = [(s, sides[s].open_stream()) for s in (0, 1) for _ in range(500)]
    rng.shuffle(opened)
    payloads = {key: rng.randbytes(rng.randrange(1, 5000)) for key in opened}
    got = {key: bytearray() for key in opened}
    pending = dict(payloads)
    while pending:
        for key in list(pending):
            s, sid = key
            chunk = pending[key][:rng.randrange(1, 1500)]
            assert sides[s].send_data(sid, chunk) == len(chunk)
            rest = pending[key][len(chunk):]
            if rest:
                pending[key] = rest
            else:
                del pending[key]
                sides[s].end_stream(sid)
        client_events, server_events = pair.pump(chunk=32 * KiB)
        for r, events in ((0, client_events), (1, server_events)):
            for e in events:
                if isinstance(e, DataReceived):
                    got[(1 - r, e.stream_id)] += e.data
                    sides[r].consumed(e.stream_id, len(e.data))
    assert got == payloads
    for s, sid in opened:
        sides[1 - s].end_stream(sid)
    pair.pump()
    assert pair.client.active_streams == pair.server.active_streams == 0


# -- malformed input --

MALFORMED = {
    "bad version": bytes.fromhex("01 01 0001 00000001 00000000"),
    "bad type": bytes.fromhex("00 07 0000 00000000 00000000"),
    "ping on stream 3": encode_header(TYPE_PING, FLAG_SYN, 3, 1),
    "go away on stream 1": encode_header(TYPE_GO_AWAY, 0, 1, 0),
    "syn wrong parity": window_update(2, 0, FLAG_SYN),
    "syn stream 0": window_update(0, 0, FLAG_SYN),
    "duplicate syn": window_update(1, 0, FLAG_SYN) + window_update(1, 0, FLAG_SYN),
    "syn id going backwards": window_update(5, 0, FLAG_SYN) + window_update(3, 0, FLAG_SYN),
    "syn reusing finished id": (window_update(1, 0, FLAG_SYN | FLAG_RST) + window_update(1, 0, FLAG_SYN)),
    "oversize data": encode_header(TYPE_DATA, FLAG_SYN, 1, 32 * MiB),
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_are_protocol_errors(wire):
    server = Session(Role.SERVER)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(wire, 0.0)
    assert server.closed
    assert server.data_to_send().endswith(GO_AWAY_PROTOCOL)
    assert server.receive_data(window_update(9, 0, FLAG_SYN), 0.0) == []


# -- a peer that writes but never reads --

def _feed_without_reading(session, frames, limit, piece=64 * KiB):
    """Feed `frames` in `piece`-sized reads and never call data_to_send(), as a peer
    that writes but never reads makes the driver do; the queue must stay under `limit`."""
    batch = bytearray()
    for frame in frames:
        batch += frame
        if len(batch) >= piece:
            session.receive_data(batch, 0.0)
            assert session.outbound_pending <= limit
            del batch[:]
    session.receive_data(batch, 0.0)


REPLY_FLOODS = {
    "pings": lambda: (encode_header(TYPE_PING, FLAG_SYN, 0, i) for i in range(1_000_000)),
    "stray-data": lambda: (data_frame(7, b"x") for _ in range(1_000_000)),
}


@pytest.mark.parametrize("flood", REPLY_FLOODS.values(), ids=REPLY_FLOODS.keys())
def test_reply_flood_from_a_peer_that_never_reads_is_cut_off(flood):
    server = Session(Role.SERVER)  # default reply limit: 1 MiB
    with pytest.raises(RemoteProtocolError, match="not reading"):
        _feed_without_reading(server, flood(), limit=1 * MiB + HEADER_SIZE)
    assert server.closed and server.active_streams == 0
    out = server.data_to_send()
    assert len(out) <= 1 * MiB + 2 * HEADER_SIZE
    assert out.endswith(GO_AWAY_INTERNAL)
    assert server.receive_data(encode_header(TYPE_PING, FLAG_SYN, 0, 1), 0.0) == []
    assert server.data_to_send() == b""


def test_syn_flood_from_a_peer_that_never_reads_is_cut_off():
    server = Session(Role.SERVER, max_reply_backlog=64 * KiB)
    syns = (window_update(2 * i + 1, 0, FLAG_SYN) for i in range(1_000_000))
    with pytest.raises(RemoteProtocolError, match="not reading"):
        _feed_without_reading(server, syns, limit=64 * KiB + HEADER_SIZE, piece=4 * KiB)
    assert server.closed and server.active_streams == 0


def test_reply_limit_is_exact_and_counts_only_replies():
    pair = SessionPair(initial_window=4 * MiB, max_reply_backlog=1 * KiB)
    sid = pair.client.open_stream()
    pair.pump()
    # Our own data is held back by the driver, not by this limit.
    assert pair.client.send_data(sid, bytes(4 * MiB)) == 4 * MiB
    ping = encode_header(TYPE_PING, FLAG_SYN, 0, 5)
    pair.client.receive_data(ping * 85, 0.0)  # 1020 bytes of ACKs: within the limit
    assert pair.client.outbound_pending == 4 * MiB + 64 * HEADER_SIZE + 85 * HEADER_SIZE
    pair.client.data_to_send()  # the peer read: the count starts afresh
    pair.client.receive_data(ping * 85, 0.0)
    assert not pair.client.closed
    with pytest.raises(RemoteProtocolError, match="not reading"):
        pair.client.receive_data(ping, 0.0)
    assert pair.client.data_to_send() == encode_header(TYPE_PING, FLAG_ACK, 0, 5) * 85 + GO_AWAY_INTERNAL


# -- a data frame is judged by its header --

def _server_with_stream(stream_id=1):
    server = Session(Role.SERVER)
    server.receive_data(window_update(stream_id, 0, FLAG_SYN), 0.0)
    server.data_to_send()
    return server


def test_data_header_beyond_the_credit_fails_before_its_payload():
    server = _server_with_stream()
    with pytest.raises(RemoteProtocolError, match="receive window"):
        server.receive_data(encode_header(TYPE_DATA, 0, 1, 16 * MiB), 0.0)
    assert server.data_to_send() == GO_AWAY_PROTOCOL


def test_syn_data_header_beyond_the_initial_window_fails_before_its_payload():
    server = Session(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match="receive window"):
        server.receive_data(encode_header(TYPE_DATA, FLAG_SYN, 1, INITIAL_WINDOW + 1) + bytes(1000), 0.0)


def test_data_header_after_fin_fails_before_its_payload():
    server = Session(Role.SERVER)
    server.receive_data(window_update(1, 0, FLAG_SYN | FLAG_FIN), 0.0)
    with pytest.raises(RemoteProtocolError, match="after FIN"):
        server.receive_data(encode_header(TYPE_DATA, 0, 1, 1000), 0.0)


def test_data_within_the_credit_may_trickle_in():
    server = _server_with_stream()
    wire = data_frame(1, bytes(range(256)) * 1024)  # exactly the 256 KiB credit
    events = []
    for i in range(0, len(wire), 1000):
        events += server.receive_data(wire[i:i + 1000], 0.0)
    assert events == [DataReceived(1, bytes(range(256)) * 1024)]


def test_late_data_for_a_gone_stream_is_skipped_not_buffered():
    server = Session(Role.SERVER)
    assert server.receive_data(encode_header(TYPE_DATA, 0, 7, 16 * MiB), 0.0) == []
    assert server.data_to_send() == window_update(7, 0, FLAG_RST)
    piece = bytes(64 * KiB)
    for _ in range(16 * MiB // len(piece)):
        assert server.receive_data(piece, 0.0) == []
        assert server._decoder.buffered <= HEADER_SIZE
    # Answered once; the next frame is parsed normally.
    assert server.receive_data(encode_header(TYPE_PING, FLAG_SYN, 0, 3), 0.0) == []
    assert server.data_to_send() == encode_header(TYPE_PING, FLAG_ACK, 0, 3)


def test_rest_of_a_frame_is_skipped_once_we_reset_its_stream():
    server = _server_with_stream()
    wire = data_frame(1, bytes(200 * KiB)) + encode_header(TYPE_PING, FLAG_SYN, 0, 9)
    assert server.receive_data(wire[:50 * KiB], 0.0) == []
    server.reset_stream(1)
    assert server.receive_data(wire[50 * KiB:100 * KiB], 0.0) == []
    assert server._decoder.buffered == 0
    assert server.receive_data(wire[100 * KiB:], 0.0) == []
    assert server.data_to_send() == window_update(1, 0, FLAG_RST) * 2 + encode_header(TYPE_PING, FLAG_ACK, 0, 9)


# -- the window budget --

def test_window_budget_take_and_give():
    budget = WindowBudget(1000)
    assert budget.take(600) == 600
    assert budget.take(600) == 400
    assert budget.take(1) == 0 and budget.available == 0 and budget.in_use == 1000
    budget.give(1000)
    assert budget.available == 1000 and budget.in_use == 0
    with pytest.raises(ValueError):
        budget.give(1)
    with pytest.raises(ValueError):
        WindowBudget(-1)


def _grown_stream(pair, max_window):
    sid = pair.client.open_stream()
    _transfer(pair, sid, 2 * max_window, _keeps_up)
    assert pair.server.receive_window(sid) == max_window
    return sid


def test_window_shrinks_back_when_the_reader_falls_behind():
    pair = SessionPair(max_window=2 * MiB)
    sid = _grown_stream(pair, 2 * MiB)
    # The reader now takes only half of what is buffered each time.
    sent, _ = _transfer(pair, sid, 8 * MiB, lambda buffered, chunks: [buffered // 2])
    assert sent == 8 * MiB
    assert pair.server.receive_window(sid) == INITIAL_WINDOW
    assert pair.client.send_credit(sid) + pair.server.unconsumed(sid) <= INITIAL_WINDOW


def test_stalled_streams_pin_at_most_their_initial_windows_plus_the_budget():
    budget = WindowBudget(4 * MiB)
    pair = SessionPair(max_window=2 * MiB, window_budget=budget)
    sids = [pair.client.open_stream() for _ in range(10)]
    for sid in sids:
        _transfer(pair, sid, 4 * MiB, _keeps_up)  # each reader keeps up for a while...
    assert pair.server.receive_window(sids[0]) == 2 * MiB
    assert budget.available == 0
    for sid in sids:  # ...then stops reading, and the peer fills every window it can
        pair.client.send_data(sid, bytes(2 * MiB))
    pair.pump()
    windows = sum(pair.server.receive_window(sid) for sid in sids)
    pinned = sum(pair.server.unconsumed(sid) for sid in sids)
    assert pinned <= windows <= 10 * INITIAL_WINDOW + 4 * MiB
    assert budget.in_use == windows - 10 * INITIAL_WINDOW
    for sid in sids:
        pair.server.reset_stream(sid)
    assert budget.in_use == 0


def test_fast_reader_grows_to_max_window_when_the_budget_allows():
    budget = WindowBudget(16 * MiB - INITIAL_WINDOW)
    pair = SessionPair(window_budget=budget)  # max_window: 16 MiB
    first = _grown_stream(pair, 16 * MiB)
    assert budget.available == 0
    # A second stream finds the budget spent and keeps the protocol's window...
    second = pair.client.open_stream()
    _transfer(pair, second, 2 * MiB, _keeps_up)
    assert pair.server.receive_window(second) == INITIAL_WINDOW
    # ...until the first one is done and its growth comes back.
    pair.client.end_stream(first)
    pair.server.end_stream(first)
    pair.pump()
    assert budget.in_use == 0
    _transfer(pair, second, 32 * MiB, _keeps_up)
    assert pair.server.receive_window(second) == 16 * MiB


def test_initial_window_beyond_the_protocols_comes_from_the_budget():
    budget = WindowBudget(1 * MiB)
    pair = SessionPair(initial_window=1 * MiB, window_budget=budget)
    first, second = pair.client.open_stream(), pair.client.open_stream()
    pair.pump()
    assert budget.available == 0
    # The client's SYNs took 768 KiB and the last 256 KiB; the server's ACKs found nothing left.
    assert pair.client.receive_window(first) == pair.server.send_credit(first) == 1 * MiB
    assert pair.client.receive_window(second) == pair.server.send_credit(second) == INITIAL_WINDOW + 256 * KiB
    assert pair.server.receive_window(first) == pair.client.send_credit(first) == INITIAL_WINDOW
    assert pair.server.receive_window(second) == pair.client.send_credit(second) == INITIAL_WINDOW


def _fail_session(pair, sid):
    with pytest.raises(RemoteProtocolError):
        pair.server.receive_data(encode_header(TYPE_PING, FLAG_SYN, 3, 0), 0.0)


EXITS = {
    "ended-both-ways": lambda pair, sid: (pair.client.end_stream(sid), pair.server.end_stream(sid), pair.pump()),
    "reset-locally": lambda pair, sid: pair.server.reset_stream(sid),
    "reset-by-peer": lambda pair, sid: (pair.client.reset_stream(sid), pair.pump()),
    "session-failed": _fail_session,
    "connection-dead": lambda pair, sid: pair.server.handle_timer(1000.0),
    "closed": lambda pair, sid: pair.server.close(),
}


@pytest.mark.parametrize("leave", EXITS.values(), ids=EXITS.keys())
def test_window_growth_returns_to_the_budget_on_every_exit(leave):
    budget = WindowBudget(64 * MiB)
    pair = SessionPair(max_window=1 * MiB, window_budget=budget)
    sid = _grown_stream(pair, 1 * MiB)
    pair.client.send_data(sid, bytes(100))
    pair.pump()
    assert budget.in_use == 1 * MiB - INITIAL_WINDOW
    leave(pair, sid)
    assert not pair.server.is_open(sid)
    assert budget.in_use == 0
    pair.server.close()  # idempotent, and nothing is returned twice
    assert budget.in_use == 0 and pair.server.closed


def test_growth_is_given_back_as_a_finished_stream_drains():
    budget = WindowBudget(64 * MiB)
    pair = SessionPair(max_window=1 * MiB, window_budget=budget)
    sid = _grown_stream(pair, 1 * MiB)
    pair.client.send_data(sid, bytes(1 * MiB))  # whatever the credit allows
    pair.client.end_stream(sid)
    pair.pump()
    assert budget.in_use == 1 * MiB - INITIAL_WINDOW
    # No more data can come, so the window need not be kept for the peer.
    pair.server.consumed(sid, pair.server.unconsumed(sid))
    assert budget.in_use == 0
    assert pair.server.data_to_send() == b""


N_BUDGET_STREAMS = 3
_budget_ops = st.one_of(
    st.tuples(st.just("send"), st.booleans(), st.integers(0, N_BUDGET_STREAMS - 1),
              st.sampled_from([1, 10 * KiB, 200 * KiB, 1 * MiB])),
    st.tuples(st.just("consume"), st.booleans(), st.integers(0, N_BUDGET_STREAMS - 1),
              st.sampled_from([0.0, 0.1, 0.5, 1.0])),
    st.tuples(st.just("pump"), st.sampled_from([None, 4093])),
    st.tuples(st.just("end"), st.booleans(), st.integers(0, N_BUDGET_STREAMS - 1)),
    # Bursts, each read by a reader that keeps up, falls behind by a little, or halves its backlog.
    st.tuples(st.just("rounds"), st.booleans(), st.integers(0, N_BUDGET_STREAMS - 1),
              st.sampled_from(["all", "all-but-1k", "half"]), st.integers(1, 6)),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_budget_ops, max_size=60),
       styles=st.lists(st.sampled_from(["all", "all-but-1k", "half"]), max_size=30),
       budget_size=st.sampled_from([0, 100 * KiB, 700 * KiB, 3 * MiB]),
       initial_window=st.sampled_from([INITIAL_WINDOW, 400 * KiB]))
def test_window_budget_random_interleavings(ops, styles, budget_size, initial_window):
    """Both sessions share one budget: it is never exceeded, every stream's growth is
    accounted exactly, the peer's credit equals window - buffered - unacked, and no
    stream deadlocks (credit 0 with nothing left for the reader)."""
    budget = WindowBudget(budget_size)
    pair = SessionPair(max_window=1 * MiB, initial_window=initial_window, window_budget=budget)
    sides = (pair.client, pair.server)
    sids = [pair.client.open_stream(), pair.server.open_stream(), pair.client.open_stream()]
    backlog = {(s, sid): 0 for s in (0, 1) for sid in sids}  # bytes sender s still wants to send
    ended = set()

    def check(quiet):
        held = sum(s.recv_window - INITIAL_WINDOW for side in sides for s in side._streams.values())
        assert 0 <= held == budget.in_use <= budget_size
        for r in (0, 1):
            for sid, stream in sides[r]._streams.items():
                assert INITIAL_WINDOW <= stream.recv_window <= 1 * MiB
                assert stream.recv_credit == stream.recv_window - stream.buffered - stream.unacked >= 0
                peer = sides[1 - r]
                if quiet and not stream.remote_closed and peer.is_open(sid):
                    assert peer.send_credit(sid) == stream.recv_credit
                    if stream.buffered == 0:
                        assert stream.recv_credit > 0  # nothing for the reader: the sender can go on

    def send(s, sid):
        if (s, sid) not in ended and sides[s].is_open(sid):
            backlog[(s, sid)] -= sides[s].send_data(sid, bytes(backlog[(s, sid)]))

    def consume(r, sid, fraction):
        sides[r].consumed(sid, int(sides[r].unconsumed(sid) * fraction))

    def read(r, sid, style):
        n = sides[r].unconsumed(sid)
        sides[r].consumed(sid, {"all": n, "all-but-1k": max(0, n - KiB), "half": n // 2}[style])

    pair.pump()
    for op in ops:
        if op[0] == "send":
            backlog[(int(op[1]), sids[op[2]])] += op[3]
            send(int(op[1]), sids[op[2]])
        elif op[0] == "consume":
            consume(int(op[1]), sids[op[2]], op[3])
        elif op[0] == "rounds":
            s, sid = int(op[1]), sids[op[2]]
            for _ in range(op[4]):
                backlog[(s, sid)] += 1 * MiB
                send(s, sid)
                pair.pump()
                read(1 - s, sid, op[3])
                pair.pump()
                check(quiet=True)
        elif op[0] == "end":
            key = (int(op[1]), sids[op[2]])
            if key not in ended:
                ended.add(key)
                sides[key[0]].end_stream(key[1])
        else:
            pair.pump(op[1])
            check(quiet=op[1] is None)
        check(quiet=False)
    # Drain two bulk directions and whatever else is left, the readers in the drawn styles,
    # then keeping up: everything must get through.
    for key in [(0, sids[0]), (1, sids[1])]:
        backlog[key] += 6 * MiB
    for i in range(200):
        for s, sid in backlog:
            send(s, sid)
        pair.pump()
        check(quiet=True)
        for r in (0, 1):
            for sid in sids:
                read(r, sid, styles[i] if i < len(styles) else "all")
        pair.pump()
        check(quiet=True)
        if all(n == 0 or key in ended for key, n in backlog.items()):
            break
    else:
        raise AssertionError(f"deadlock: {backlog}")
    for s in (0, 1):
        for sid in sids:
            sides[s].end_stream(sid)
    pair.pump()
    assert pair.client.active_streams == pair.server.active_streams == 0
    assert budget.in_use == 0


def test_keepalive_round_trip_time_is_measured_from_the_ping_to_its_ack():
    client = Session(Role.CLIENT, keepalive_interval=10.0, idle_timeout=60.0, now=0.0)
    server = Session(Role.SERVER, now=0.0)
    assert client.ping_rtt is None
    client.handle_timer(10.0)  # the keepalive ping leaves at t=10
    server.receive_data(client.data_to_send(), 10.001)
    client.receive_data(server.data_to_send(), 10.025)  # its ack is back at t=10.025
    assert client.ping_rtt == pytest.approx(0.025)
    client.ping(7)  # an application ping is not a keepalive: it leaves the figure alone
    server.receive_data(client.data_to_send(), 11.0)
    client.receive_data(server.data_to_send(), 12.0)
    assert client.ping_rtt == pytest.approx(0.025)
