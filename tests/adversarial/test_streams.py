"""Routed streams that never end or pin memory (issue 10, items 2 and 4).

- hung backend (item 2): 100 anonymous Visitors send a ClientHello to a backend
  that never answers, half-close and leave; the half-closed linger ends every
  stream, and the Server, the Client and the backend give back every fd.
- first byte (item 2): Visitors that stay open but never get a byte back are
  reset after stream-first-byte-timeout.
- idle (items 2 and 4): an established stream where nobody speaks is reset after
  stream-idle-timeout, not before.
- slow reader (item 4): 10 Visitors read 20 MB fast, then stop reading; the
  Server's buffering toward them stays within stream-buffer-budget (before:
  ~13 MiB per Visitor).

After a Visitor is routed the Server never looks at its bytes, so these
Visitors speak raw bytes after a built ClientHello where no TLS is needed.
"""

import concurrent.futures
import socket
import ssl
import time

import pytest

from tests import clienthellos

from ..e2e.peers import APP, read_until_closed
from .conftest import BulkBackend, SilentBackend, fd_count, rss_mib, wait_until

pytestmark = [pytest.mark.e2e]
HUNG = "hung.example.com"
BULK = "bulk.example.com"
SERVER_TIMEOUTS = "stream-half-closed-timeout = 1\nstream-first-byte-timeout = 2"


@pytest.fixture
def silent():
    started = SilentBackend()
    yield started
    started.stop()


@pytest.fixture
def bulk():
    started = BulkBackend()
    yield started
    started.stop()


def visitor(port, hostname):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(clienthellos.build(hostname, ("http/1.1",)))
    return sock


def fds_back(e, server_baseline, client_baseline, timeout=10, margin=3):
    return wait_until(lambda: fd_count(e.server) <= server_baseline + margin
                      and fd_count(e.client) <= client_baseline + margin, timeout)


@pytest.mark.timeout(60)
def test_visitors_that_leave_a_hung_backend_release_every_stream(edge, silent):
    e = edge(limits=SERVER_TIMEOUTS, client_limits="stream-half-closed-timeout = 1",
             services=[(HUNG, silent.address)])
    server_fds, client_fds = fd_count(e.server), fd_count(e.client)
    for _ in range(100):
        with visitor(e.port, HUNG) as sock:
            sock.shutdown(socket.SHUT_WR)
    assert wait_until(lambda: silent.accepted == 100, 15), f"backend accepted {silent.accepted}"
    assert wait_until(lambda: silent.closed == 100, 8), \
        f"the backend still holds {silent.accepted - silent.closed} of 100 connections"
    assert fds_back(e, server_fds, client_fds, timeout=8), \
        f"fds: Server {server_fds} -> {fd_count(e.server)}, Client {client_fds} -> {fd_count(e.client)}"
    assert e.server.count(f"visitor-closed public-hostname={HUNG} ") == 100
    e.assert_healthy()


@pytest.mark.timeout(60)
def test_visitors_that_get_no_first_byte_are_reset(edge, silent):
    e = edge(limits=SERVER_TIMEOUTS, services=[(HUNG, silent.address)])
    server_fds, client_fds = fd_count(e.server), fd_count(e.client)
    started = time.monotonic()
    socks = [visitor(e.port, HUNG) for _ in range(10)]
    try:
        for sock in socks:
            data, _ = read_until_closed(sock, max(0.1, started + 8 - time.monotonic()))
            assert data == b""
        seconds = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert 1.5 <= seconds < 5, f"closed after {seconds:.1f}s with stream-first-byte-timeout = 2"
    assert wait_until(lambda: silent.closed == 10, 8), f"backend closed {silent.closed} of 10"
    assert fds_back(e, server_fds, client_fds)
    e.assert_healthy()


@pytest.mark.timeout(40)
def test_a_silent_established_stream_is_reset_at_the_idle_timeout(edge, backend):
    e = edge(limits="stream-idle-timeout = 2")
    ctx = ssl.create_default_context(cafile=str(backend.ca))
    with socket.create_connection(("127.0.0.1", e.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=APP) as tls:  # established: TLS done end to end
            started = time.monotonic()
            tls.settimeout(8)
            try:
                while tls.recv(4096):  # the session tickets, then nothing until the reset
                    pass
            except (ssl.SSLError, ConnectionResetError):
                pass
            except TimeoutError:
                pytest.fail("an idle stream was still open after 8 s (stream-idle-timeout = 2)")
            seconds = time.monotonic() - started
    assert 1.5 <= seconds < 4.5, f"reset after {seconds:.2f}s with stream-idle-timeout = 2"
    e.server.wait_for(f"visitor-closed public-hostname={APP} .*idle", timeout=5)
    e.assert_healthy()


def read_then_stall(sock, total):
    """Read `total` bytes as fast as they come; then stop reading (keep the socket)."""
    got = 0
    while got < total:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {got} bytes"
        got += len(chunk)
    return got


@pytest.mark.timeout(90)
def test_visitors_that_read_fast_then_stop_pin_bounded_server_memory(edge, bulk):
    e = edge(limits="stream-buffer-budget = 4194304", services=[(BULK, bulk.address)])
    server_fds, client_fds = fd_count(e.server), fd_count(e.client)
    before = rss_mib(e.server)
    socks = [visitor(e.port, BULK) for _ in range(10)]
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            list(pool.map(read_then_stall, socks, [20 * 1024 * 1024] * 10, timeout=60))
        peak, client_peak, end = before, rss_mib(e.client), time.monotonic() + 5
        while time.monotonic() < end:  # nobody reads now: what does the Server hold?
            peak = max(peak, rss_mib(e.server))
            client_peak = max(client_peak, rss_mib(e.client))
            time.sleep(0.2)
        assert e.server.popen.poll() is None and e.client.popen.poll() is None
    finally:
        for sock in socks:
            sock.close()
    growth = peak - before
    assert growth < 40, f"Server RSS grew {growth:.0f} MiB ({before:.0f} -> {peak:.0f}) for " \
                        f"10 stalled Visitors (Client peak {client_peak:.0f} MiB)"
    assert fds_back(e, server_fds, client_fds)
    e.assert_healthy()
