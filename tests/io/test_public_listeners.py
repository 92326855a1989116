"""Several public listeners: the names that let a reload move only what the config moved,
the config key a failure names, and [::] beside 0.0.0.0 on one port."""

import socket
from types import SimpleNamespace

import pytest

from runewarp.io.listener import BindError, Listener, bind_addresses, by_key, config_key

pytestmark = pytest.mark.timeout(20)
A, B, C = ("127.0.0.1", 8443), ("127.0.0.2", 8443), ("127.0.0.1", 9443)


def handle(sock, _address):
    sock.close()


def config(*public, tunnel=None):
    return SimpleNamespace(public_bind_addresses=public, tunnel_bind_address=tunnel)


def running(named):
    return [SimpleNamespace(name=name, configured=address, address=address) for name, address in named.items()]


def test_names_at_start_follow_the_list():
    assert bind_addresses(config(A, B, C)) == {"public": A, "public-2": B, "public-3": C, "tunnel": None}


def test_a_reload_keeps_each_address_on_its_listener():
    now = running({"public": A, "public-2": B})
    assert bind_addresses(config(B, A), now) == {"public": A, "public-2": B, "tunnel": None}  # reordered
    # A new address takes the name of one the config dropped (a move), the rest stay.
    assert bind_addresses(config(B, C), now) == {"public": C, "public-2": B, "tunnel": None}
    assert bind_addresses(config(B, C, A), now) == {"public": A, "public-2": B, "public-3": C, "tunnel": None}
    assert bind_addresses(config(B), now) == {"public": None, "public-2": B, "tunnel": None}  # closed


def test_a_port_0_listener_is_matched_by_its_configured_address():
    now = [SimpleNamespace(name="public", configured=("127.0.0.1", 0), address=("127.0.0.1", 41234))]
    assert bind_addresses(config(("127.0.0.1", 0)), now)["public"] == ("127.0.0.1", 0)
    assert bind_addresses(config(("127.0.0.1", 41234)), now)["public"] == ("127.0.0.1", 41234)


def test_failures_name_the_key_the_operator_wrote():
    assert config_key(config(A), "public") == "server.public-bind-address"
    assert config_key(config(A, B), "public-2") == "server.public-bind-addresses"
    assert config_key(config(A, B), "tunnel") == "server.tunnel-bind-address"
    assert by_key(config(A, B), bind_addresses(config(A, B))) == {
        "server.public-bind-addresses[0]": A, "server.public-bind-addresses[1]": B,
        "server.tunnel-bind-address": None}
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(BindError, match=r"^server.public-bind-addresses: 127.0.0.1:\d+: address already"):
            Listener("public-2", taken.getsockname(), handle, 4, key="server.public-bind-addresses")
    finally:
        taken.close()


def test_ipv6_any_beside_ipv4_any_on_one_port():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    first = Listener("public", ("0.0.0.0", 0), handle, 4)
    port = first.address[1]
    try:
        try:
            second = Listener("public-2", ("::", port), handle, 4, v6only=True)
        except BindError as exc:
            if "cannot assign" in str(exc).lower() or "not available" in str(exc).lower():
                pytest.skip(f"no IPv6 here: {exc}")
            raise
        second.stop()
        with pytest.raises(BindError):  # dual-stack, the default, takes IPv4's port too
            Listener("public-2", ("::", port), handle, 4).stop()
    finally:
        first.stop()
