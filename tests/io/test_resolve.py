"""What a Server address resolves to (io/net.py): every address once, pinned names, the
re-read override file, and the first address for single-address callers."""

import pytest

from runewarp.io.net import RESOLVE_ENV, RESOLVE_FILE_ENV, resolve_all, resolve_override


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv(RESOLVE_ENV, raising=False)
    monkeypatch.delenv(RESOLVE_FILE_ENV, raising=False)
    return monkeypatch


def test_a_pinned_name_has_every_address_listed(env):
    env.setenv(RESOLVE_ENV, "other.example=10.0.0.1, Tunnel.Example.com=127.0.0.2|127.0.0.3 ")
    assert resolve_all("tunnel.example.com", 443) == ["127.0.0.2", "127.0.0.3"]
    assert resolve_override("tunnel.example.com") == "127.0.0.2"
    assert resolve_override("unpinned.example") == "unpinned.example"


def test_an_ip_literal_is_one_address(env):
    assert resolve_all("192.0.2.7", 443) == ["192.0.2.7"]
    assert resolve_all("::1", 443) == ["::1"]


def test_a_name_resolves_to_each_address_once(env):
    addresses = resolve_all("localhost", 443)  # one record per socket type would repeat it
    assert addresses and len(addresses) == len(set(addresses))
    assert set(addresses) <= {"127.0.0.1", "::1"}


def test_the_file_is_read_again_at_each_resolution(env, tmp_path):
    path = tmp_path / "resolve"
    env.setenv(RESOLVE_FILE_ENV, str(path))
    path.write_text("tunnel.example.com=127.0.0.2|127.0.0.3\n")
    assert resolve_all("tunnel.example.com", 443) == ["127.0.0.2", "127.0.0.3"]
    path.write_text("# not an entry\nother.example=10.0.0.1\ntunnel.example.com=127.0.0.4\n")
    assert resolve_all("tunnel.example.com", 443) == ["127.0.0.4"]
    path.write_text("tunnel.example.com=\n")
    with pytest.raises(OSError, match="pinned to no address"):
        resolve_all("tunnel.example.com", 443)


def test_the_environment_wins_over_the_file(env, tmp_path):
    path = tmp_path / "resolve"
    path.write_text("tunnel.example.com=127.0.0.4\n")
    env.setenv(RESOLVE_FILE_ENV, str(path))
    env.setenv(RESOLVE_ENV, "tunnel.example.com=127.0.0.2")
    assert resolve_all("tunnel.example.com", 443) == ["127.0.0.2"]


def test_a_missing_file_pins_nothing(env, tmp_path):
    env.setenv(RESOLVE_FILE_ENV, str(tmp_path / "absent"))
    assert resolve_all("192.0.2.7", 443) == ["192.0.2.7"]
    with pytest.raises(OSError):
        resolve_all("name.invalid", 443)
