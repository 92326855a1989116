import pytest
from hypothesis import given
from hypothesis import strategies as st

from runewarp.proto.hostname import HostnameError, is_valid, normalize

VALID = [
    ("app.example.com", "app.example.com"),
    ("App.Example.COM", "app.example.com"),
    ("app.example.com.", "app.example.com"),
    ("localhost", "localhost"),
    ("LOCALHOST.", "localhost"),
    ("a", "a"),
    ("a-b.c-d.example", "a-b.c-d.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("123.example.com", "123.example.com"),
    ("1a.2b", "1a.2b"),
    ("example.a1", "example.a1"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
]

INVALID = [
    ("", "empty"),
    (".", "no labels"),
    ("..", "empty label"),
    ("a..b", "empty label"),
    (".example.com", "empty label"),
    ("example.com..", "empty label"),
    ("bücher.example", "non-ASCII"),
    ("app.exämple.com", "non-ASCII"),
    ("1.2.3.4", "IP"),
    ("10.0.0.1.", "IP"),
    ("foo.123", "IP"),
    ("123", "IP"),
    ("::1", "IP literal"),
    ("[::1]", "IP literal"),
    ("fe80::1%eth0", "IP literal"),
    ("example.com:443", "IP literal"),
    ("*.example.com", "wildcard"),
    ("a*.example.com", "wildcard"),
    ("app .example.com", "whitespace"),
    (" app.example.com", "whitespace"),
    ("app.example.com\n", "whitespace"),
    ("app\t.com", "whitespace"),
    ("_acme-challenge.example.com", "underscore"),
    ("my_host", "underscore"),
    ("-app.example.com", "'-'"),
    ("app-.example.com", "'-'"),
    ("app.-example.com", "'-'"),
    ("a" * 64 + ".com", "longer than 63"),
    (".".join(["a" * 63] * 4), "longer than 253"),
    ("app/path.com", "characters"),
    ("app@example.com", "characters"),
    ("app\x00.com", "characters"),
    ("a+b.example", "characters"),
]


@pytest.mark.parametrize(("name", "expected"), VALID)
def test_valid(name, expected):
    assert normalize(name) == expected
    assert is_valid(name)


@pytest.mark.parametrize(("name", "reason"), INVALID)
def test_invalid(name, reason):
    with pytest.raises(HostnameError, match=reason):
        normalize(name)
    assert not is_valid(name)


def test_max_length_is_253_without_trailing_dot():
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert normalize(name + ".") == name
    with pytest.raises(HostnameError, match="253"):
        normalize(name + "b")


def test_only_one_trailing_dot_is_stripped():
    with pytest.raises(HostnameError):
        normalize("example.com..")


def test_error_is_a_config_error_and_a_value_error():
    from runewarp.errors import ConfigError, RunewarpError
    assert issubclass(HostnameError, ConfigError) and issubclass(HostnameError, RunewarpError)
    assert issubclass(HostnameError, ValueError)
    assert str(HostnameError("'a_b': underscores are not allowed")) == "'a_b': underscores are not allowed"


def test_non_str():
    with pytest.raises(TypeError):
        normalize(b"example.com")
    assert not is_valid(b"example.com")
    assert not is_valid(None)


LDH = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.", max_size=300)


@given(st.one_of(st.text(max_size=300), LDH))
def test_any_text_is_normalized_or_rejected(name):
    try:
        result = normalize(name)
    except HostnameError:
        assert not is_valid(name)
    else:
        assert isinstance(result, str)
        assert is_valid(name)
        assert normalize(result) == result
        assert result == result.lower()
        assert not result.endswith(".")
        assert len(result) <= 253


@given(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=5))
def test_generated_hostnames_are_accepted(labels):
    if labels[-1].isdigit():
        labels.append("com")
    name = ".".join(labels)
    assert normalize(name.upper() + ".") == name
