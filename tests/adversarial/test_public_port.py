"""Anyone on the Internet against the public port (issue 10, items 1, 3, 5 and 6).

- trickled hello (item 1): 200 ClientHellos cut into 1-byte records, sent a byte
  at a time, are closed at the record cap (reason too-many-records) while a
  normal Visitor stays fast.
- multiple SNI (item 6): a hello naming two host_names is dropped, never routed.
- slowloris (item 3): 4,400 connections from 20 addresses each send one byte
  and hold; a normal Visitor completes within 1 s, with the default table
  (per-source cap) and with a small one under shedding pressure.  4,400 rather
  than 4,000: more than the 4,096-slot table, as in the report's 4,300, so that
  without a per-source cap the table would be full.
- Tunnel handshake slots (item 5): one address holding 256 stalled Tunnel
  handshakes does not keep a listed Client out.

Attacker addresses are 127.0.0.2 and up; the normal Visitor comes from 127.0.0.1.
"""

import concurrent.futures
import os
import re
import selectors
import socket
import threading
import time

import pytest

from tests import clienthellos

from ..conftest import SERVER_HOSTNAME
from ..e2e.peers import APP, FakeClientEnd, read_until_closed
from .conftest import ROGUE, fd_count, peer_closed, wait_until

pytestmark = [pytest.mark.e2e]
OTHER = "other.example.com"


def attackers(count, first=2):
    return [f"127.0.0.{first + i}" for i in range(count)]


def connect_from(source, port, blocking=True):
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    if blocking:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    else:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    return sock


def close_all(socks):
    for sock in socks:
        sock.close()


def all_closed(socks, timeout):
    """Wait until the Server closed every socket; the ones still open after `timeout`."""
    wait_until(lambda: all(peer_closed(s) for s in socks), timeout, 0.2)
    return [s for s in socks if not peer_closed(s)]


def visits_meanwhile(edge, stop, times):
    while not stop.is_set():
        times.append(edge.visit())
        stop.wait(0.2)


@pytest.mark.timeout(60)
def test_trickled_hellos_are_closed_at_the_record_cap(edge):
    e = edge()
    baseline = fd_count(e.server)
    hello = clienthellos.build(APP, ("http/1.1",), record_size=1)
    socks = [connect_from(source, e.port) for source in attackers(10) for _ in range(20)]
    ports = {s.getsockname()[1] for s in socks}
    stop, times = threading.Event(), []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        visiting = pool.submit(visits_meanwhile, e, stop, times)
        open_socks = list(socks)
        for offset in range(len(hello)):  # one byte per write, round robin, ~10 ms a round
            still = []
            for sock in open_socks:
                try:
                    sock.send(hello[offset:offset + 1])
                    still.append(sock)
                except OSError:
                    pass
            open_socks = still
            if not open_socks:
                break
            time.sleep(0.01)
        stop.set()
        visiting.result(timeout=30)
    try:
        assert not all_closed(socks, 10), "trickling connections left open"
        # The whole hello was ~900 bytes; the cap (32 records) stops it after ~200.
        assert offset < len(hello) // 2, f"the Server took {offset} of {len(hello)} bytes"

        def rejected():
            return {int(m.group(1)) for line in e.server.lines if (m := re.search(
                r"visitor-rejected visitor=127\.0\.0\.\d+:(\d+) reason=too-many-records", line))}

        wait_until(lambda: ports <= rejected(), 5)
        assert ports <= rejected(), \
            f"{len(ports - rejected())} of 200 not rejected as too-many-records"
        assert e.server.count(r"visitor-routed visitor=127\.0\.0\.(?!1:)\d+:") == 0
    finally:
        close_all(socks)
    assert times and max(times) < 1.0, times
    assert wait_until(lambda: fd_count(e.server) <= baseline + 3, 10), \
        (fd_count(e.server), baseline)
    e.assert_healthy(within=1.0)


def hello_with_sni_list(names):
    """A ClientHello whose one server_name extension lists several host_name entries."""
    entries = b"".join(b"\x00" + len(n).to_bytes(2) + n.encode() for n in names)
    data = len(entries).to_bytes(2) + entries
    extension = (0).to_bytes(2) + len(data).to_bytes(2) + data
    return clienthellos.build(None, ("http/1.1",), extra_extensions=extension)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("names", [[OTHER, APP], [APP, OTHER]], ids=["other-first", "app-first"])
def test_multiple_sni_is_dropped_and_never_routed(edge, backend, names):
    e = edge(services=[(OTHER, backend.address)])
    with socket.create_connection(("127.0.0.1", e.port), timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(hello_with_sni_list(names))
        data, seconds = read_until_closed(sock, 5)
    assert data == b"" and seconds < 2, (data, seconds)
    e.server.wait_for(f"visitor-rejected visitor=127.0.0.1:{port} reason=multiple-sni", timeout=5)
    time.sleep(0.3)
    assert e.server.count(f"visitor-routed visitor=127.0.0.1:{port} ") == 0
    e.assert_healthy()


def hold_slowloris(port, sources, per_source, deadline=4.0):
    """Open per_source connections from each source, non-blocking, and send one byte on
    each as soon as it connects; the sockets (some already refused by the Server)."""
    socks = [connect_from(source, port, blocking=False)
             for _ in range(per_source) for source in sources]
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_WRITE)
        pending = len(socks)
        end = time.monotonic() + deadline
        while pending and time.monotonic() < end:
            for key, _ in selector.select(0.2):
                selector.unregister(key.fileobj)
                pending -= 1
                try:
                    key.fileobj.send(b"\x16")  # the first byte of a TLS handshake record
                except OSError:
                    pass
    return socks


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limits", ["", "intake-connections = 512"], ids=["default", "shedding"])
def test_slowloris_from_20_addresses_leaves_visitors_fast(edge, limits):
    e = edge(limits=limits)
    baseline = fd_count(e.server)
    started = time.monotonic()
    socks = hold_slowloris(e.port, attackers(20), 220)
    try:
        opened = time.monotonic() - started
        # While they are held (the 5 s intake deadline has not passed), Visitors are served:
        # one queued behind them would wait for that deadline.  No tighter bound: a loaded
        # machine is slower, not wrong (docs/testing.md: no timing assertions).
        times = [e.visit() for _ in range(3)]
        held_for = time.monotonic() - started
        assert held_for < 5, f"normal Visitors took {times} under slowloris, not served inside " \
                             f"the intake deadline (4400 connections opened in {opened:.1f}s)"
        left = all_closed(socks, 12)
        assert not left, f"{len(left)} slowloris connections never closed"
    finally:
        close_all(socks)
    if limits:
        assert e.server.count("connection-shed ") > 0
    else:
        assert e.server.count("server-saturated scope=source-full") >= 1
    assert wait_until(lambda: fd_count(e.server) <= baseline + 3, 10), \
        (fd_count(e.server), baseline)
    e.assert_healthy(within=1.0)


def stalled_tunnel_hello():
    """A Tunnel ClientHello the Server answers with its whole flight, then waits on."""
    share = (0x001D).to_bytes(2) + (32).to_bytes(2) + os.urandom(32)  # x25519, any point
    key_share = (51).to_bytes(2) + (len(share) + 2).to_bytes(2) + len(share).to_bytes(2) + share
    return clienthellos.build(SERVER_HOSTNAME, ("runewarp/1",), extra_extensions=key_share)


@pytest.mark.timeout(60)
def test_stalled_tunnel_handshakes_from_one_address_leave_room_for_clients(edge):
    e = edge()
    baseline = fd_count(e.server)
    stall = stalled_tunnel_hello()
    socks = []
    for _ in range(256):
        sock = connect_from("127.0.0.2", e.port)
        try:
            sock.sendall(stall)  # the hello, then nothing: a Tunnel handshake left hanging
        except OSError:
            pass
        socks.append(sock)
    attacked = time.monotonic()
    try:
        joined = []
        for _ in range(30):  # the real thing: TLS, control hello, welcome
            end = FakeClientEnd(e.rogue_tls())
            end.join(hostnames=[ROGUE])
            joined.append(end)
        seconds = time.monotonic() - attacked
        for end in joined:
            end.tls.close()
        assert seconds < 4, f"30 Tunnel joins took {seconds:.1f}s: the stalls may have expired"
        # The Server logs each join right after its welcome, in the same loop turn.
        e.server.wait_count("tunnel-connection-established .*tunnel=rogue", 30, timeout=5)
        assert e.server.count("tunnel-connection-established .*tunnel=rogue") == 30
        assert e.server.count("server-saturated scope=tunnel-handshakes-per-source") >= 1
        left = all_closed(socks, 12)
        assert not left, f"{len(left)} stalled Tunnel handshakes never closed"
    finally:
        close_all(socks)
    assert wait_until(lambda: fd_count(e.server) <= baseline + 3, 10), \
        (fd_count(e.server), baseline)
    e.assert_healthy()
