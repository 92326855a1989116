"""Control stream codec: hostile lines end as ControlError, never as another exception."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runewarp.errors import RemoteProtocolError
from runewarp.proto import control
from runewarp.proto.control import ControlError, LineDecoder


def decode_one(line: bytes):
    return LineDecoder().feed(line + b"\n")


def control_error(line: bytes) -> str:
    with pytest.raises(ControlError) as info:
        decode_one(line)
    return str(info.value)


# --------------------------------------------------------------------------
# LineDecoder


def test_round_trip_in_pieces():
    data = control.encode(control.hello("1.0", "i-1", ["a.example"], False)) + \
        control.encode(control.welcome("apps", "1.0"))
    decoder = LineDecoder()
    messages = []
    for i in range(len(data)):
        messages += decoder.feed(data[i:i + 1])
    assert [m["type"] for m in messages] == ["hello", "welcome"]


def test_unknown_types_and_fields_pass_through():
    assert decode_one(b'{"type":"future","x":[1,{"y":2}]}') == [
        {"type": "future", "x": [1, {"y": 2}]}]


def test_control_error_is_a_remote_protocol_error_and_a_value_error():
    assert issubclass(ControlError, RemoteProtocolError)
    assert issubclass(ControlError, ValueError)


def test_deeply_nested_line_is_a_control_error_not_recursion():
    depth = 30_000  # 60 000 bytes: inside the line cap, far past the recursion limit
    line = b"[" * depth + b"]" * depth
    assert len(line) <= control.MAX_LINE
    assert "nested" in control_error(line)


def test_nesting_inside_an_object_is_counted():
    line = b'{"type":"x","a":' + b"[" * 200 + b"]" * 200 + b"}"
    assert "nested" in control_error(line)


def test_depth_limit_is_exact():
    ok = b'{"type":"x","a":' + b"[" * (control.MAX_DEPTH - 1) + b"]" * (control.MAX_DEPTH - 1) + b"}"
    assert decode_one(ok)[0]["type"] == "x"
    deep = b'{"type":"x","a":' + b"[" * control.MAX_DEPTH + b"]" * control.MAX_DEPTH + b"}"
    assert "nested" in control_error(deep)


def test_brackets_inside_strings_do_not_count():
    value = '[[[[[[{{{{{{\\"[[[[\\\\'
    line = b'{"type":"x","a":"' + value.encode() + b'"}'
    assert decode_one(line) == [{"type": "x", "a": json.loads(f'"{value}"')}]


def test_escaped_quote_does_not_end_the_string():
    # The \" keeps the scanner inside the string, so the brackets after it are text.
    line = b'{"type":"x","a":"\\"[[[[[[[[[["}'
    assert decode_one(line)[0]["a"] == '"[[[[[[[[[['


def test_huge_integer_is_a_control_error():
    line = b'{"type":"x","n":' + b"9" * 5000 + b"}"
    assert "not JSON" in control_error(line)


@pytest.mark.parametrize("line", [
    b"\xff\xfe{}", b'{"type":"x"', b"[]", b'"hello"', b"{}", b'{"type":1}',
    b'{"type":"x","n":NaN}', b'{"type":"x","n":-Infinity}', b"\x00\x00\x00{",
])
def test_malformed_lines(line):
    control_error(line)


def test_line_cap():
    with pytest.raises(ControlError, match="too long"):
        LineDecoder(max_line=10).feed(b"x" * 11)
    with pytest.raises(ControlError, match="too long"):
        LineDecoder(max_line=10).feed(b'{"type":"abcdefgh"}\n')


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_arbitrary_bytes_give_dicts_or_control_error(chunks):
    decoder = LineDecoder(max_line=256)
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message, dict) and isinstance(message["type"], str)
    except ControlError:
        pass


json_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                       st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_atoms, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=1, max_value=7), st.data())
def test_json_like_input_in_arbitrary_splits(value, pieces, data):
    """Near-valid JSON reaches deeper decoder paths than random bytes do."""
    text = json.dumps({"type": "x", "v": value}).encode()
    mutate = data.draw(st.booleans())
    if mutate and text:
        at = data.draw(st.integers(0, len(text) - 1))
        text = text[:at] + data.draw(st.sampled_from([b"[", b"]", b'"', b"\\", b"\n", b"9" * 5000])) \
            + text[at + 1:]
    payload = text + b"\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=pieces)))
    decoder = LineDecoder()
    try:
        previous = 0
        for cut in [*cuts, len(payload)]:
            for message in decoder.feed(payload[previous:cut]):
                assert isinstance(message, dict)
            previous = cut
    except ControlError:
        pass


# --------------------------------------------------------------------------
# typed hello / welcome


def test_parse_hello():
    message = decode_one(control.encode(control.hello("1.2", "host-1", ["a.example", "b.example"],
                                                      True)).rstrip(b"\n"))[0]
    assert control.parse_hello(message) == control.Hello("1.2", "host-1", ("a.example", "b.example"), True)


def test_parse_hello_ignores_unknown_fields():
    message = {**control.hello("1", "i", [], False), "future": {"x": 1}}
    assert control.parse_hello(message) == control.Hello("1", "i", (), False)


def test_parse_welcome():
    message = decode_one(control.encode(control.welcome(
        "apps", "1.0", ["b.example", "a.example"])).rstrip(b"\n"))[0]
    assert message["public_hostnames"] == ["a.example", "b.example"]  # sent sorted
    assert control.parse_welcome(message) == control.Welcome("apps", "1.0",
                                                             ("a.example", "b.example"))
    assert control.parse_welcome({**message, "extra": [1]}).tunnel == "apps"


def test_welcome_without_hostnames_is_a_server_from_before_the_field():
    message = control.welcome("apps", "1.0")
    assert "public_hostnames" not in message
    assert control.parse_welcome(message) == control.Welcome("apps", "1.0", None)
    assert control.parse_welcome(control.welcome("apps", "1.0", [])).public_hostnames == ()


@pytest.mark.parametrize("change, field", [
    ({"type": "welcome"}, "type"),
    ({"version": 1}, "version"),
    ({"version": "v" * 65}, "version"),
    ({"instance": None}, "instance"),
    ({"instance": "i" * 65}, "instance"),
    ({"hostnames": "a.example"}, "hostnames"),
    ({"hostnames": ["a.example", 7]}, "hostnames"),
    ({"hostnames": ["a" * 254]}, "hostnames"),
    ({"hostnames": ["a"] * 10_001}, "hostnames"),
    ({"catch_all": 1}, "catch_all"),
    ({"catch_all": "true"}, "catch_all"),
])
def test_parse_hello_rejects_wrong_fields(change, field):
    message = {**control.hello("1", "i", ["a.example"], False), **change}
    with pytest.raises(ControlError) as info:
        control.parse_hello(message)
    assert field in str(info.value)


@pytest.mark.parametrize("missing", ["version", "instance", "hostnames", "catch_all"])
def test_parse_hello_requires_every_field(missing):
    message = control.hello("1", "i", [], False)
    del message[missing]
    with pytest.raises(ControlError, match=missing):
        control.parse_hello(message)


@pytest.mark.parametrize("change, field", [
    ({"type": "hello"}, "type"),
    ({"tunnel": ["apps"]}, "tunnel"),
    ({"tunnel": "t" * 254}, "tunnel"),
    ({"version": {"v": 1}}, "version"),
    ({"public_hostnames": "a.example"}, "public_hostnames"),
    ({"public_hostnames": None}, "public_hostnames"),
    ({"public_hostnames": ["a.example", 7]}, "public_hostnames"),
    ({"public_hostnames": ["a" * 254]}, "public_hostnames"),
    ({"public_hostnames": ["a"] * 10_001}, "public_hostnames"),
])
def test_parse_welcome_rejects_wrong_fields(change, field):
    with pytest.raises(ControlError) as info:
        control.parse_welcome({**control.welcome("apps", "1"), **change})
    assert field in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "version", "instance", "hostnames", "catch_all",
                                        "tunnel", "public_hostnames", "x"]), json_values))
def test_parse_functions_only_raise_control_error(message):
    for parse in (control.parse_hello, control.parse_welcome):
        try:
            parse(message)
        except ControlError:
            pass
