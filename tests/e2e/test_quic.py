"""Public QUIC passthrough end to end: a real Server (`public-quic = true`) and a real Client
whose Service has a `quic-backend-address`; aioquic HTTP/3 peers on both ends
(tests/h3peers.py), raw sealed Initials and garbage from plain UDP sockets."""

import random
import select
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from runewarp import harness
from runewarp.material import public_cert_folder
from runewarp.proto import quic

from ..backend import pattern
from ..conftest import Proc, cli_material, free_port
from ..h3peers import (H3Backend, Shim, UdpEcho, cert_sha256, fetch, initial_garbage,
                       sealed_initial)
from .helpers import Backend, curl, rss_kib, sha256
from .peers import assert_running_without_traceback
from .test_metrics import eventually, metrics_table, samples

pytestmark = pytest.mark.timeout(180)
H3 = "h3.example.com"
UDP = "udp.example.com"
VERSIONS = {"v1": quic.VERSION_1, "v2": quic.VERSION_2}


def with_quic_backends(path, backends):
    """Give each Service of the client.toml at `path` whose backend-address is a key of
    `backends` that value as its quic-backend-address."""
    lines = []
    for line in path.read_text().splitlines():
        lines.append(line)
        key, _, value = line.partition(" = ")
        if key == "backend-address" and (address := value.strip('"')) in backends:
            lines.append(f'quic-backend-address = "{backends[address]}"')
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def quic_deployment(deployment, tmp_path, echo_backend):
    """Server + Client; H3 has tests/backend.py on TCP and an aioquic HTTP/3 server (same
    certificate, from `runewarp client public-cert init`) on UDP; UDP has the TCP echo
    backend and a UDP echo backend."""
    tcp = Backend(tmp_path, "h3", [H3])
    h3 = H3Backend(tcp.cert, tcp.cert.parent / "public.key", "h3-backend")
    udp_echo = UdpEcho()
    metrics = free_port()
    identity = deployment.identity("c1")
    try:
        server = deployment.start_server([("apps", [H3, UDP], [identity])],
                                         extra="public-quic = true\n" + metrics_table("server", metrics))
        path = deployment.client_config("c1", [([H3], tcp.address), ([UDP], echo_backend.address)])
        with_quic_backends(path, {tcp.address: h3.address, echo_backend.address: udp_echo.address})
        client = Proc(["client", "-c", path], env=deployment.env)
        deployment.processes.append(client)
        client.wait_for(harness.CLIENT_READY)
        yield SimpleNamespace(server=server, client=client, tcp=tcp, h3=h3, udp_echo=udp_echo,
                              ca=tcp.ca, cert=tcp.cert, metrics=metrics,
                              port=deployment.public_port,
                              udp=("127.0.0.1", deployment.public_port))
    finally:
        tcp.stop()
        h3.stop()
        udp_echo.close()


def counters(port, name, label):
    """{label value: count} of the Server's counter `name` (without _total)."""
    found = {}
    for (sample, labels), count in samples(port).items():
        if sample == f"{name}_total":
            found[dict(labels)[label]] = count
    return found


def dropped(port):
    return counters(port, "runewarp_quic_dropped", "reason")


def flows(port):
    return counters(port, "runewarp_quic_flows", "outcome")


def gauge(port, name):
    return samples(port).get((name, ()), 0)


def grew(before, after):
    return {key: after[key] - before.get(key, 0) for key in after if after[key] > before.get(key, 0)}


def through(q, address, path, hostname=H3, **options):
    """`fetch` via `address`; a failure comes with the last lines of both logs."""
    try:
        return fetch(address, hostname, q.ca, path, **options)
    except (ConnectionError, TimeoutError) as exc:
        logs = "".join(f"\n--- {proc.name}:\n" + "\n".join(proc.lines[-40:])
                       for proc in (q.server, q.client))
        raise AssertionError(f"HTTP/3 GET {path} failed: {exc!r}{logs}") from exc


def assert_fetched(got, size, q, version=quic.VERSION_1):
    assert (got.status, got.backend, got.length) == (200, "h3-backend", size), got
    assert got.sha256 == sha256(pattern(size))
    assert got.cert_sha256 == cert_sha256(q.cert), "the Visitor did not see the backend's certificate"
    assert got.version == version


def udp_socket(address=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    if address:
        sock.connect(address)
    return sock


def readable(socks, wait):
    """The sockets of `socks` that received something within `wait` seconds."""
    return select.select(socks, [], [], wait)[0]


# -- the peers alone (no Runewarp): what every test below relies on -----------------------

def test_the_peers_work_directly(tmp_path):
    folder = tmp_path / "h3-cert"
    cli_material(folder, "client", "public-cert", "init", "--hostname", H3, copy_of="h3")
    ca, cert = folder / "public-ca.crt", folder / public_cert_folder(H3) / "public.crt"
    h3 = H3Backend(cert, cert.parent / "public.key", "direct")
    try:
        target = ("127.0.0.1", h3.port)
        got = fetch(target, H3, ca, "/size/300000")
        assert (got.status, got.backend, got.sha256) == (200, "direct", sha256(pattern(300000)))
        assert got.cert_sha256 == cert_sha256(cert)
        assert fetch(target, H3, ca, version=quic.VERSION_2).version == quic.VERSION_2
        shim = Shim(target)
        try:
            assert fetch(shim.address, H3, ca, big_hello=True).status == 200
        finally:
            shim.close()
        assert shim.sent[:3] == [1, 0, 0]
        first, second = (quic.first_header(d) for d in shim.received[:2])
        assert first.initial and second.initial and first.dcid == second.dcid
        with pytest.raises(ConnectionError):  # the certificate does not name it
            fetch(target, "other.example.com", ca, timeout=10)
    finally:
        h3.stop()


# -- HTTP/3 through Runewarp -----------------------------------------------------------------

def test_http3_get_through_runewarp_is_byte_identical_with_the_backend_certificate(quic_deployment):
    q = quic_deployment
    size = 5 * 1024 * 1024 + 7
    assert_fetched(through(q, q.udp, f"/size/{size}", timeout=90), size, q)
    assert flows(q.metrics).get("routed", 0) >= 1
    assert curl(q.port, H3, q.ca).stdout == b"backend=h3\n"
    assert_running_without_traceback(q.server, q.client)


@pytest.mark.parametrize("version", VERSIONS)
def test_multi_packet_reordered_and_duplicated_client_hellos(quic_deployment, version):
    q = quic_deployment
    number = VERSIONS[version]
    before = dropped(q.metrics)
    assert_fetched(through(q, q.udp, "/size/1000", version=number), 1000, q, number)
    assert_fetched(through(q, q.udp, "/size/2000", version=number, big_hello=True),
                   2000, q, number)
    shim = Shim(q.udp)
    try:
        got = through(q, shim.address, "/size/3000", version=number, big_hello=True)
    finally:
        shim.close()
    assert_fetched(got, 3000, q, number)
    # The second Initial went first, then the first twice; the ClientHello needed both.
    assert shim.sent[:3] == [1, 0, 0]
    reader = quic.InitialReader()
    assert reader.feed(shim.received[0]) is None
    assert reader.feed(shim.received[1]).server_name == H3
    assert flows(q.metrics).get("routed", 0) >= 3
    # Routed at the first try: no Initial was dropped and left for the client to resend.
    assert grew(before, dropped(q.metrics)) == {}
    assert_running_without_traceback(q.server, q.client)


# -- what the Server drops -------------------------------------------------------------------

def test_unroutable_and_bad_datagrams_are_dropped_counted_and_never_answered(quic_deployment):
    q = quic_deployment
    rng = random.Random(18)
    before_dropped, before_flows = dropped(q.metrics), flows(q.metrics)
    unknown_version = bytearray(initial_garbage(rng))
    unknown_version[1:5] = (0x1A2A3A4A).to_bytes(4)
    sent = {
        "unknown-hostname": sealed_initial("nobody.example.com"),
        "unsupported-version": bytes(unknown_version),
        "short-header": bytes([0x40 | rng.randrange(64)]) + rng.randbytes(1199),
        "undecryptable": initial_garbage(rng),
        "malformed": b"\xc0\x00\x00\x00\x01\x14",  # a long header cut inside the DCID
    }
    socks = {reason: udp_socket(q.udp) for reason in sent}
    try:
        for reason, datagram in sent.items():
            socks[reason].send(datagram)

        def counted():
            found = grew(before_dropped, dropped(q.metrics))
            found.update(grew(before_flows, flows(q.metrics)))
            return set(sent) <= set(found) and found

        assert eventually(counted), f"not all counted: {grew(before_dropped, dropped(q.metrics))}"
        # The Server itself never answers: no Retry, no Version Negotiation.
        assert readable(list(socks.values()), 1.0) == []
    finally:
        for sock in socks.values():
            sock.close()
    with pytest.raises(TimeoutError):
        fetch(q.udp, "nobody.example.com", q.ca, timeout=3)
    assert curl(q.port, H3, q.ca).stdout == b"backend=h3\n"
    assert_fetched(through(q, q.udp, "/size/5000"), 5000, q)
    assert_running_without_traceback(q.server, q.client)


# -- 500 flows and a flood ----------------------------------------------------------------------

FLOWS = 500
FLOOD = 60_000
FLOWS_CEILING_KIB = 64 * 1024   # per process, for all 500 flows
FLOOD_CEILING_KIB = 16 * 1024   # per process; the flood is ~69 MiB of datagrams


def open_flows(address, count, deadline):
    """`count` UDP flows to the UDP echo Service, each opened by a sealed Initial and then
    carrying small datagrams; resent (as a QUIC client would) until each got an echo of
    its own data back.  The sockets, still open."""
    socks = [udp_socket(address) for _ in range(count)]
    index = {sock: i for i, sock in enumerate(socks)}
    initials = [sealed_initial(UDP) for _ in socks]
    answered = set()
    while len(answered) < count and time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if i not in answered:
                sock.send(initials[i])
                sock.send(b"flow %d" % i)
                if i % 50 == 49:
                    time.sleep(0.01)
        wait_until = time.monotonic() + 1
        while time.monotonic() < wait_until:
            for sock in readable(socks, 0.2):
                if sock.recv(65536) == b"flow %d" % index[sock]:
                    answered.add(index[sock])
    assert len(answered) == count, f"{count - len(answered)} flows never answered"
    return socks


FLOOD_RATE = 3000  # datagrams/s: the pending table (256 flows, 3 s) would be full in 0.09 s


def flood(address, count, rng):
    """`count` Initial-looking garbage datagrams from fresh 4-tuples, 10 per socket."""
    for _ in range(count // 1000):
        batch = [udp_socket(address) for _n in range(100)]
        try:
            for n in range(1000):
                batch[n % 100].send(initial_garbage(rng))
                if n % 200 == 199:
                    time.sleep(0.01)
        finally:
            for sock in batch:
                sock.close()


@pytest.mark.timeout(300)
def test_500_flows_and_a_garbage_flood_keep_memory_bounded_and_tcp_working(quic_deployment):
    q = quic_deployment
    pids = {"server": q.server.pid, "client": q.client.pid}
    open_flows(q.udp, 1, time.monotonic() + 20)[0].close()  # warm up both paths
    assert curl(q.port, H3, q.ca).stdout == b"backend=h3\n"
    rss = {"start": {name: rss_kib(pid) for name, pid in pids.items()}}
    socks = open_flows(q.udp, FLOWS, time.monotonic() + 60)
    try:
        assert eventually(lambda: gauge(q.metrics, "runewarp_quic_flows_active") >= FLOWS)
        assert len(q.udp_echo.peers) >= FLOWS  # one backend socket per flow on the Client
        rss["flows"] = {name: rss_kib(pid) for name, pid in pids.items()}
        before = dropped(q.metrics)
        results, stop = [], threading.Event()

        def visitors():
            while not stop.is_set():
                results.append(curl(q.port, H3, q.ca, timeout=10).stdout)

        thread = threading.Thread(target=visitors, daemon=True)
        thread.start()
        try:
            flood(q.udp, FLOOD, random.Random(500))
        finally:
            stop.set()
            thread.join(30)
        rss["flood"] = {name: rss_kib(pid) for name, pid in pids.items()}
        counted = grew(before, dropped(q.metrics))
    finally:
        for sock in socks:
            sock.close()
    print(f"\nRSS KiB {rss}; dropped during the flood of {FLOOD}: {counted}; "
          f"curl Visitors during the flood: {len(results)}")
    assert results and all(r == b"backend=h3\n" for r in results), results
    assert sum(counted.values()) >= FLOOD // 3, "too little of the flood reached the Server"
    for name in pids:
        assert rss["flows"][name] - rss["start"][name] < FLOWS_CEILING_KIB, rss
        assert rss["flood"][name] - rss["flows"][name] < FLOOD_CEILING_KIB, rss
    assert_running_without_traceback(q.server, q.client)


def test_an_http3_visitor_gets_through_a_flood_of_undecryptable_initials(quic_deployment):
    """Undecryptable Initials from ever new source ports cost the Server a decryption
    each, never a pending flow that would keep a real Visitor out.  The flood is paced at
    FLOOD_RATE, ten times what fills the pending table within its deadline: unpaced, it
    measures how much CPU the machine has left, which is not this test's question."""
    q = quic_deployment
    stop, sent = threading.Event(), []

    def garbage():
        rng = random.Random(7)
        while not stop.is_set():
            began = time.monotonic()
            flood(q.udp, 1000, rng)
            sent.append(1000)
            time.sleep(max(0.0, began + 1000 / FLOOD_RATE - time.monotonic()))

    thread = threading.Thread(target=garbage, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        time.sleep(1)  # the flood is on before the Visitor comes
        assert_fetched(through(q, q.udp, "/size/4000", timeout=20), 4000, q)
    finally:
        stop.set()
        thread.join(30)
        print(f"\nflood: {sum(sent) / (time.monotonic() - started):.0f} datagrams/s; "
              f"dropped: {grew({}, dropped(q.metrics))}")
