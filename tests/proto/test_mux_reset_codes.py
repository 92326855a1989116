"""The reset code an RST window update carries (RESET_BEFORE_BACKEND: the Server may
retry the Visitor elsewhere), and the retry rules of proto/retry.py, sans-I/O."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.mux import (FLAG_RST, RESET_BEFORE_BACKEND, RESET_PLAIN, TYPE_WINDOW_UPDATE,
                                Role, Session, StreamReset, WindowUpdated, encode_header)
from runewarp.proto.retry import CONNECTION_CLOSED, Held, Retries, retry_reason

CODES = st.integers(min_value=0, max_value=0xFFFFFFFF)


def opened():
    """A Server session with stream 2 open toward a Client session."""
    server, client = Session(Role.SERVER), Session(Role.CLIENT)
    stream_id = server.open_stream()
    client.receive_data(server.data_to_send(), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    return server, client, stream_id


@given(code=CODES, split=st.integers(min_value=0, max_value=12))
def test_a_reset_code_arrives_whole_however_the_bytes_are_split(code, split):
    server, client, stream_id = opened()
    client.reset_stream(stream_id, code)
    wire = client.data_to_send()
    assert wire == encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, code)
    events = server.receive_data(wire[:split], 0.0) + server.receive_data(wire[split:], 0.0)
    assert events == [StreamReset(stream_id, code)]
    assert not server.is_open(stream_id)


def test_the_code_is_not_taken_for_credit():
    server, client, stream_id = opened()
    credit = server.send_credit(stream_id)
    client.reset_stream(stream_id, RESET_BEFORE_BACKEND)
    events = server.receive_data(client.data_to_send(), 0.0)
    assert not any(isinstance(e, WindowUpdated) for e in events)
    assert events == [StreamReset(stream_id, RESET_BEFORE_BACKEND)]
    assert credit == 256 * 1024  # unchanged until the stream went


def test_a_plain_reset_and_one_from_a_peer_that_sends_no_code_are_code_zero():
    server, client, stream_id = opened()
    client.reset_stream(stream_id)  # HashiCorp's yamux sends exactly this
    assert server.receive_data(client.data_to_send(), 0.0) == [StreamReset(stream_id, RESET_PLAIN)]


def test_a_code_beyond_32_bits_is_refused():
    _, client, stream_id = opened()
    with pytest.raises(ValueError):
        client.reset_stream(stream_id, 1 << 32)


def test_only_the_clients_mark_or_a_closed_connection_after_a_hello_alone_is_retryable():
    assert retry_reason(RESET_BEFORE_BACKEND, hello_only=False) == "failed-before-backend-data"
    assert retry_reason(CONNECTION_CLOSED, hello_only=True) == "tunnel-connection-closed"
    assert retry_reason(CONNECTION_CLOSED, hello_only=False) is None  # a backend may have more
    assert retry_reason(RESET_PLAIN, hello_only=True) is None
    assert retry_reason(7, hello_only=True) is None  # a code we do not know


def test_held_bytes_are_the_objects_sent_and_stop_past_the_limit():
    envelope, more = b"h" * 100, b"x" * 50
    held = Held(envelope, 80, True, limit=160)
    assert held.add(more) and held.chunks[0] is envelope and held.chunks[1] is more
    assert not held.hello_only and held.size == 130
    assert not held.add(b"y" * 20)  # 170 > 160: nothing held any more
    assert held.chunks is None and held.size == 150
    assert not held.add(b"z")


def test_retries_stop_at_the_budget_the_deadline_or_when_nothing_is_held():
    held = Held(b"e", 1, True, limit=1024)
    retries = Retries(2, deadline=10.0)
    assert retries.possible(held, 0.0)
    assert retries.failed("m1") == ["m1"]
    assert retries.possible(held, 9.9) and not retries.possible(held, 10.0)
    retries.failed("m2")
    assert not retries.possible(held, 0.0)
    assert not Retries(0, 10.0).possible(held, 0.0)
    held.drop()
    assert not Retries(2, 10.0).possible(held, 0.0)
