"""Metrics end to end: a real Prometheus scrapes a real Server and Client; StatsD over UDP;
/readyz during a graceful shutdown; a flood of unknown SNIs adds no series; bind failure."""

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import clienthellos

from ..conftest import Proc, free_port, run_cli
from .helpers import ECHO, echo_visitor, round_trip

pytestmark = pytest.mark.timeout(120)
PROMETHEUS = shutil.which("prometheus")


def http(port, path, timeout=5):
    """(status, body) of GET `path` on the metrics listener at 127.0.0.1:`port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(port):
    """{(name, sorted labels): value} of one scrape."""
    body = http(port, "/metrics")[1].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(port, name, **labels):
    return samples(port).get((name, tuple(sorted(labels.items()))))


def eventually(check, timeout=20, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def metrics_table(role, port, extra=""):
    return f'[{role}.metrics]\nbind-address = "127.0.0.1:{port}"\n{extra}'


def deploy(deployment, echo_backend, server_extra="", client_extra=""):
    """A Server and a Client, both with a metrics listener: (server, client, server port,
    client port)."""
    server_port, client_port = free_port(), free_port()
    identity = deployment.identity("c1")
    server = deployment.start_server([("apps", [ECHO], [identity])],
                                     extra=metrics_table("server", server_port, server_extra))
    path = deployment.client_config("c1", [([ECHO], echo_backend.address)])
    path.write_text(path.read_text() + "\n" + metrics_table("client", client_port, client_extra))
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    return server, client, server_port, client_port


def visit(port, payload=b"ping" * 100):
    """One echo Visitor: (bytes sent, bytes received), counting the ClientHello."""
    sock = echo_visitor(port)
    with sock:
        round_trip(sock, payload, 10)
    hello = len(clienthellos.build(ECHO))
    return hello + len(payload), hello + len(payload)


@pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus package")
def test_a_real_prometheus_scrapes_the_server_and_the_client(deployment, echo_backend, tmp_path):
    _, _, server_port, client_port = deploy(deployment, echo_backend)
    web = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n"
        f"  - job_name: runewarp\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server_port}', '127.0.0.1:{client_port}']\n")
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3):
            visit(deployment.public_port)

        def query(expr):
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    result = json.load(resp)["data"]["result"]
            except (OSError, ValueError):
                return None
            return [float(r["value"][1]) for r in result]

        routed = 'runewarp_routed_streams_total{tunnel="apps",hostname="echo.example.com"}'
        assert eventually(lambda: query(routed) == [3.0], timeout=40), query(routed)
        assert query('runewarp_tunnel_connections{tunnel="apps"}') == [1.0]
        assert eventually(lambda: query(
            'runewarp_client_streams_total{outcome="served"}') == [3.0]), \
            query('runewarp_client_streams_total{outcome="served"}')
        assert query("runewarp_tunnel_connection_state") == [1.0]
        assert query('up{job="runewarp"}') == [1.0, 1.0]
    finally:
        prometheus.terminate()
        prometheus.wait(20)


def test_stream_bytes_equal_what_the_visitors_sent_and_received(deployment, echo_backend):
    _, _, server_port, _ = deploy(deployment, echo_backend)
    sent = received = 0
    for size in (1, 5000, 300_000):
        up, down = visit(deployment.public_port, b"x" * size)
        sent, received = sent + up, received + down

    def figures():
        return (value(server_port, "runewarp_stream_bytes_total", tunnel="apps",
                      direction="to-client"),
                value(server_port, "runewarp_stream_bytes_total", tunnel="apps",
                      direction="to-visitor"))

    assert eventually(lambda: figures() == (sent, received)), (figures(), sent, received)
    assert value(server_port, "runewarp_active_streams", tunnel="apps") == 0


def test_statsd_receives_the_counters_and_gauges(deployment, echo_backend):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(1)
        extra = f'statsd-address = "127.0.0.1:{udp.getsockname()[1]}"\nstatsd-interval = 0.3\n'
        deploy(deployment, echo_backend, server_extra=extra + 'statsd-prefix = "edge"\n')
        visit(deployment.public_port)
        visit(deployment.public_port)
        lines = []
        deadline = time.monotonic() + 20

        def routed():
            return sum(int(line.split(":")[1].split("|")[0]) for line in lines
                       if line.startswith("edge.routed_streams_total.apps.echo_example_com:"))

        # The two routings may land in one push or in two (a push between the visits):
        # read until the deltas add up, or the deadline.
        while time.monotonic() < deadline and not (
                routed() >= 2 and "edge.tunnel_connections.apps:1|g" in lines):
            try:
                lines += udp.recv(65536).decode().splitlines()
            except TimeoutError:
                continue
    assert routed() == 2, lines  # deltas: they add up to the counter
    assert "edge.tunnel_connections.apps:1|g" in lines
    assert any(line.startswith("edge.visitor_connections_total.routed:") for line in lines)
    assert not any(line.startswith("edge.process_") for line in lines)


def test_readyz_flips_at_the_start_of_a_graceful_shutdown(deployment, echo_backend):
    server, _, server_port, client_port = deploy(deployment, echo_backend)
    assert http(server_port, "/readyz")[0] == 200
    assert eventually(lambda: http(client_port, "/readyz")[0] == 200)
    visitor = echo_visitor(deployment.public_port)  # in flight across the shutdown
    server.signal(signal.SIGTERM)
    server.wait_for("shutdown-started")
    assert http(server_port, "/readyz")[0] == 503
    assert http(server_port, "/healthz")[0] == 200
    round_trip(visitor, b"still here", 10)  # the in-flight stream still works
    assert http(server_port, "/healthz")[0] == 200
    visitor.close()
    assert server.popen.wait(15) == 0
    with pytest.raises(OSError):
        http(server_port, "/healthz", timeout=2)


def test_a_flood_of_unknown_hostnames_adds_no_series(deployment, echo_backend):
    _, _, server_port, _ = deploy(deployment, echo_backend)
    visit(deployment.public_port)
    before = samples(server_port)
    size_before = len(http(server_port, "/metrics")[1])

    def flood(first, count):
        for i in range(first, first + count):
            with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as s:
                s.sendall(clienthellos.build(f"unknown-{i}.example.org"))
                s.settimeout(10)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass

    threads = [threading.Thread(target=flood, args=(n * 1000, 1000)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    after = samples(server_port)
    assert set(after) == set(before)
    key = ("runewarp_visitor_connections_total", (("outcome", "unknown-hostname"),))
    assert after[key] - before[key] == 3000
    body = http(server_port, "/metrics")[1]
    assert b"unknown-1" not in body
    assert len(body) - size_before < 512  # only counter values changed


def test_a_taken_metrics_address_exits_1_naming_the_key(deployment):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = deployment.server_config([("apps", [ECHO], [deployment.identity("c1")])],
                                         extra=metrics_table("server", port))
        proc = run_cli("server", "-c", path, env=deployment.env, check=False, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"server.metrics.bind-address: 127.0.0.1:{port}: address already in use" in proc.stderr
