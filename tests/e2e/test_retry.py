"""Retry before the first byte, with real Server and Client processes: a Visitor placed on a
member whose Local backend is down is placed again on another and its bytes replayed; a
stream that already answered, or whose backend got bytes, is never replayed."""

import shutil
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import clienthellos

from ..conftest import free_port
from .helpers import ECHO, Backend, TCPBackend, curl, recv_exactly
from .test_metrics import value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
A = "a.example.com"
RETRIES = "runewarp_visitor_retries_total"
ROUTED = "runewarp_visitor_connections_total"


# Passive health would take a member whose backend is down out of placement after three
# failures (tests/e2e/test_health.py); here it is off, so every Visitor placed on that member
# exercises the retry.  test_retry_and_health_together runs both, as shipped.
NO_HEALTH = {"unhealthy-after": 1_000_000}


def setup(deployment, services_a, services_b, limits="", health=False):
    """A Server (metrics on) and two Client instances of one Tunnel: (server, metrics port,
    client a, client b).  `services_*`: each instance's (hostnames, backend) Services."""
    identity = deployment.identity("client-a")
    (deployment.dir / "client-a.identity").write_text(identity)  # for a reload's new config
    metrics = free_port()
    server = deployment.start_server(*server_config(identity, metrics, limits))
    settings = None if health else NO_HEALTH
    first = deployment.start_client("client-a", services_a, settings=settings)
    shutil.copytree(deployment.dir / "client-a", deployment.dir / "client-b", symlinks=True)
    second = deployment.start_client("client-b", services_b, settings=settings)
    server.wait_count("tunnel-connection-established", 2)
    return server, metrics, first, second


def server_config(identity, metrics, limits):
    """The Server's Tunnels and extra config (start_server's and server_config's arguments)."""
    return ([("apps", [A, ECHO], [identity])],
            f'[server.limits]\n{limits}\n[server.metrics]\nbind-address = "127.0.0.1:{metrics}"')


def load(deployment, ca, seconds=10.0, workers=4, rate=30.0):
    """curl Visitors for `seconds` at about `rate` a second, each checking the body: the
    failures (empty when every one was served)."""
    deadline = time.monotonic() + seconds
    interval = workers / rate
    failures, count = [], [0]
    lock = threading.Lock()

    def worker():
        while time.monotonic() < deadline:
            started = time.monotonic()
            result = curl(deployment.public_port, A, ca, timeout=10)
            with lock:
                count[0] += 1
                if result.stdout != b"backend=good\n":
                    failures.append((result.returncode, result.stderr))
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    return count[0], failures


@pytest.fixture
def good(tmp_path):
    started = Backend(tmp_path, "good", [A])
    yield started
    started.stop()


def test_every_visitor_that_lands_on_the_member_with_its_backend_down_is_served_by_the_other(
        deployment, good):
    down = f"127.0.0.1:{free_port()}"  # nothing listens: the Client's connect is refused
    server, metrics, bad, _ = setup(deployment, [([A], down)], [([A], good.address)])
    visitors, failures = load(deployment, good.ca)
    assert visitors >= 150 and failures == [], failures[:3]
    retried = value(metrics, RETRIES, result="retried")
    # Placement alternates: about half the Visitors met the bad member first.
    assert retried >= visitors // 4, (retried, visitors)
    assert bad.count("backend-connect-failed") == retried
    assert not value(metrics, RETRIES, result="given-up")
    assert value(metrics, ROUTED, outcome="routed") == visitors
    server.wait_for(r"visitor-retry .*public-hostname=a\.example\.com tunnel=apps "
                    r"client-instance=\w+ stream=\d+ reason=failed-before-backend-data "
                    r"retry-on=\w+")


def test_retry_and_health_together_fail_no_visitor_from_the_very_first(deployment, good):
    """As shipped: the first Visitors on the member whose backend is down are retried on the
    other, then passive health takes that member out of placement; no Visitor fails."""
    down = f"127.0.0.1:{free_port()}"
    server, metrics, bad, _ = setup(deployment, [([A], down)], [([A], good.address)],
                                    health=True)
    visitors, failures = load(deployment, good.ca, seconds=6)
    assert visitors >= 90 and failures == [], failures[:3]
    bad.wait_for("service-unhealthy", timeout=5)
    retried = value(metrics, RETRIES, result="retried")
    assert 1 <= retried <= 3 + 2, retried  # unhealthy-after = 3, plus streams in flight
    assert bad.count("backend-connect-failed") == retried


def test_without_retries_the_visitors_on_the_bad_member_fail(deployment, good):
    down = f"127.0.0.1:{free_port()}"
    _, metrics, _, _ = setup(deployment, [([A], down)], [([A], good.address)], "retries = 0")
    visitors, failures = load(deployment, good.ca, seconds=3)
    assert len(failures) >= visitors // 4, (len(failures), visitors)
    assert not value(metrics, RETRIES, result="retried")


def test_with_every_backend_down_visitors_are_dropped_at_once_and_counted(deployment, good):
    down = [([A], f"127.0.0.1:{free_port()}")]
    _, metrics, _, _ = setup(deployment, down, [([A], f"127.0.0.1:{free_port()}")])
    for _ in range(6):
        started = time.monotonic()
        result = curl(deployment.public_port, A, good.ca, timeout=10)
        assert result.returncode != 0 and time.monotonic() - started < 2.0, result
    # Each Visitor tried one member, was placed on the other, then nobody was left.
    assert value(metrics, RETRIES, result="retried") == 6
    assert value(metrics, RETRIES, result="given-up") == 6


class CountingBackend(TCPBackend):
    """Reads the ClientHello, then resets the connection, after one byte or none: the
    Client's splice fails and resets the stream, unmarked."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        super().__init__()

    def serve(self, conn):
        self.connections += 1
        conn.recv(65536)
        if self.answer:
            conn.sendall(b"!")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("answer", [True, False], ids=["one-byte-then-reset", "reset-no-byte"])
def test_a_stream_whose_backend_got_the_bytes_is_never_replayed(deployment, answer):
    backend = CountingBackend(answer)
    try:
        _, metrics, _, _ = setup(deployment, [([ECHO], backend.address)],
                                 [([ECHO], backend.address)])
        for _ in range(8):
            got = exchange(deployment, clienthellos.build(ECHO))
            assert got in ((b"!", b"") if answer else (b"",))  # the reset may overtake it
        time.sleep(0.5)
        assert backend.connections == 8
        assert not value(metrics, RETRIES, result="retried")
    finally:
        backend.close()


def _recv(sock):
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def exchange(deployment, data):
    """A Visitor that sends `data` in one write: all it receives until the end."""
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
        sock.sendall(data)
        got = b""
        while chunk := _recv(sock):
            got += chunk
        return got


def unserved(deployment, data, visitors=8):
    """How many of `visitors` Visitors sending `data` were closed unserved; the others must
    get it echoed (by a LateEchoBackend)."""
    failed = 0
    for _ in range(visitors):
        got = exchange(deployment, data)
        assert got in (b"", data)
        failed += got == b""
    return failed


class LateEchoBackend(TCPBackend):
    """Reads for `delay` seconds before its first byte back, then echoes all it read."""

    delay = 0.6

    def serve(self, conn):
        got = b""
        conn.settimeout(self.delay)
        try:
            while data := conn.recv(65536):
                got += data
        except TimeoutError:
            pass
        conn.sendall(got)


def test_bytes_sent_while_waiting_for_the_answer_are_forwarded_and_a_large_amount_ends_retry(
        deployment):
    """Bytes after the ClientHello are forwarded in order before the first byte back; beyond
    retry-buffer the Visitor is no longer held (the bad member then fails it)."""
    late = LateEchoBackend()
    down = f"127.0.0.1:{free_port()}"
    try:
        _, metrics, bad, _ = setup(deployment, [([ECHO], down)], [([ECHO], late.address)],
                                   "retry-buffer = 1024")
        hello = clienthellos.build(ECHO)
        for _ in range(4):  # within retry-buffer: whichever member comes first, it is served
            with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as sock:
                sock.sendall(hello)
                time.sleep(0.2)
                sock.sendall(b"x" * 100)
                assert recv_exactly(sock, len(hello) + 100) == hello + b"x" * 100
        retried = value(metrics, RETRIES, result="retried") or 0
        assert retried >= 1 and bad.count("backend-connect-failed") == retried
        failed = unserved(deployment, hello + b"y" * 2048)  # over retry-buffer at once
        assert failed >= 1 and value(metrics, RETRIES, result="retried") == retried
    finally:
        late.close()


def test_retries_and_retry_buffer_reloaded_apply_to_the_next_visitors(deployment):
    late = LateEchoBackend()
    late.delay = 0.2
    down = f"127.0.0.1:{free_port()}"
    sent = clienthellos.build(ECHO) + b"y" * 2048

    try:
        server, metrics, _, _ = setup(deployment, [([ECHO], down)], [([ECHO], late.address)],
                                      "retries = 0")
        assert unserved(deployment, sent) >= 1
        for limits, failing in (("retries = 2\nretry-buffer = 1024", True), ("retries = 2", False)):
            identity = (deployment.dir / "client-a.identity").read_text()
            deployment.server_config(*server_config(identity, metrics, limits))
            mark = len(server.lines)
            server.signal(signal.SIGHUP)
            server.wait_for("server-reloaded", start=mark)
            assert (unserved(deployment, sent) >= 1) is failing, limits  # 2 KiB fits the default retry-buffer
        assert value(metrics, RETRIES, result="retried") >= 1
    finally:
        late.close()


class SilentBackend(TCPBackend):
    """Reads and never answers: the stream waits for its first byte."""

    def serve(self, conn):
        while conn.recv(65536):
            pass


@pytest.mark.parametrize("extra", [b"", b"early data"], ids=["hello-only", "hello-and-more"])
def test_a_member_that_dies_before_the_answer_is_retried_only_after_a_hello_alone(
        deployment, good, extra):
    """The Client holding the stream is killed: the Server retries a Visitor that sent its
    ClientHello alone on the other member; one that sent more is closed (its bytes may have
    reached the backend)."""
    silent = SilentBackend()
    try:
        identity = deployment.identity("client-a")
        metrics = free_port()
        server = deployment.start_server(
            [("apps", [A], [identity])],
            extra=f'[server.timeouts]\nclient-hello = 20\n[server.metrics]\n'
                  f'bind-address = "127.0.0.1:{metrics}"')
        doomed = deployment.start_client("client-a", [([A], silent.address)])
        with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=20) as sock:
            sock.sendall(clienthellos.build(A) + extra)
            doomed.wait_for("stream-routed")  # the silent backend holds the stream
            shutil.copytree(deployment.dir / "client-a", deployment.dir / "client-b", symlinks=True)
            deployment.start_client("client-b", [([A], good.address)])
            server.wait_count("tunnel-connection-established", 2)
            doomed.signal(signal.SIGKILL)
            got = _recv(sock)
        if extra:
            assert got == b""
            assert not value(metrics, RETRIES, result="retried")
        else:
            assert got  # the good backend's TLS answer
            assert value(metrics, RETRIES, result="retried") == 1
            server.wait_for("visitor-retry .*reason=tunnel-connection-closed")
    finally:
        silent.close()
