"""A Server behind Debian's HAProxy: `[server] trusted-proxies` and the PROXY header.

HAProxy (mode tcp) forwards to the Server's public port from 127.0.0.3, the one
trusted address, with `send-proxy-v2` on one frontend and `send-proxy` (v1) on the
other, health checks on both.  Visitors connect from 127.0.0.5, so the Server's log
and the Client's Local backend can only show that address if the header was honoured
(HAProxy's own is 127.0.0.3).  Raw sockets from 127.0.0.3 play a trusted balancer
gone wrong; one from 127.0.0.9 plays a Visitor claiming an address it does not have.
"""

import os
import shutil
import socket
import ssl
import threading
import time

import pytest

from runewarp import harness
from runewarp.proto import proxyv2
from tests import clienthellos

from ..conftest import SERVER_HOSTNAME, Deployment, Proc, cli_material, free_port
from .helpers import ECHO, Backend, TLVBackend, curl, recv_exactly, reload_by_signal, wait_listening
from .test_metrics import value

HAPROXY = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(not HAPROXY, reason="needs haproxy (.ci/run)")]
BALANCER_IP = "127.0.0.3"
VISITOR_IP = "127.0.0.5"
UNTRUSTED_IP = "127.0.0.9"
SITE = "lb.example.com"
TLV_SITE = "lb-tlv.example.com"
CLAIMED = "203.0.113.77"  # the address an untrusted peer claims in its header
DEADLINE = 2  # [server.timeouts] client-hello: PROXY header and ClientHello together
WARN_OR_ERROR = r" (WARN|ERROR) |Traceback"


def haproxy_conf(folder, servers):
    """HAProxy in mode tcp: for each (name, listen port, upstream port, PROXY option), a
    frontend and a backend whose server connects from BALANCER_IP and is checked every
    100 ms (HAProxy sends checks with the PROXY header of the server line: LOCAL in v2)."""
    sections = "".join(f"""
frontend {name}
    bind 127.0.0.1:{port}
    default_backend runewarp-{name}
backend runewarp-{name}
    server node 127.0.0.1:{upstream} source {BALANCER_IP} {option} check inter 100ms
""" for name, port, upstream, option in servers)
    conf = folder / "haproxy.cfg"
    conf.write_text(f"""
global
    log stderr format raw local0
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{sections}""")
    return conf


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    """Server (metrics on), Client, a TLS backend, the TLV backend and HAProxy."""
    tmp = tmp_path_factory.mktemp("load-balancer")
    started = []
    tlv_backend = TLVBackend()
    backend = Backend(tmp, "lb", [SITE])
    try:
        deployment = Deployment(tmp, started)
        certs = tmp / "public-cert"
        cli_material(certs, "client", "public-cert", "init", "--hostname", TLV_SITE)
        metrics_port = free_port()
        identity = deployment.identity("client-a")
        server = deployment.start_server([("apps", [SITE, TLV_SITE], [identity])], extra=f"""
            trusted-proxies = ["{BALANCER_IP}", "2001:db8::/32"]
            [server.timeouts]
            client-hello = {DEADLINE}
            [server.metrics]
            bind-address = "127.0.0.1:{metrics_port}"
        """)
        client_toml = tmp / "client.toml"
        client_toml.write_text(harness.config_text("client", {
            "server-address": f"{SERVER_HOSTNAME}:{deployment.public_port}",
            "server-trust": "ca-file", "server-ca-file": deployment.ca_file,
            "identity-dir": tmp / "client-a", "public-cert-dir": certs,
        }, [{"public-hostnames": [SITE], "backend-address": f"127.0.0.1:{backend.port}"},
            {"public-hostnames": [TLV_SITE], "backend-address": tlv_backend.address,
             "tls-mode": "terminate", "proxy-protocol": "v2"}], log_level="debug"))
        started.append(harness.start_client(client_toml, deployment.env))
        ports = {"v2": free_port(), "v1": free_port()}
        folder = tmp / "haproxy"
        folder.mkdir()
        servers = [(version, ports[version], deployment.public_port, option)
                   for version, option in (("v2", "send-proxy-v2"), ("v1", "send-proxy"))]
        proxy = harness.Process([HAPROXY, "-db", "-f", haproxy_conf(folder, servers)], name="haproxy")
        started.append(proxy)
        wait_listening(proxy, list(ports.values()))
        yield {"server": server, "haproxy": proxy, "ports": ports, "public": deployment.public_port,
               "metrics": metrics_port, "ca": backend.ca, "tlv_ca": certs / "public-ca.crt",
               "tlv": tlv_backend}
    finally:
        tlv_backend.close()
        backend.stop()
        harness.stop_all(started)


def visit(balanced, version):
    """curl from VISITOR_IP through HAProxy's `version` frontend: its source port."""
    port = balanced["ports"][version]
    proc = curl(port, SITE, balanced["ca"], extra=("--interface", VISITOR_IP, "-w", "%{local_port}"))
    assert proc.returncode == 0, proc.stderr
    body, local_port = proc.stdout.decode().splitlines()
    assert body == "backend=lb"
    return int(local_port)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_server_logs_the_visitor_not_the_balancer(balanced, version):
    """HAProxy connects from 127.0.0.3; the Server's access log names curl's 127.0.0.5."""
    source_port = visit(balanced, version)
    line = balanced["server"].wait_for(rf"visitor-closed .*visitor={VISITOR_IP}:{source_port} ").string
    assert f"public-hostname={SITE}" in line or f"public_hostname={SITE}" in line
    assert balanced["server"].count(rf"visitor-closed .*visitor={BALANCER_IP}:") == 0


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_local_backend_gets_the_visitor_address(balanced, version):
    """The PROXY v2 header the Client writes to its Local backend carries curl's address:
    balancer header → Server → Server's header to the Client → Client's header."""
    ctx = ssl.create_default_context(cafile=str(balanced["tlv_ca"]))
    port = balanced["ports"][version]
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(VISITOR_IP, 0)) as raw:
        source_port = raw.getsockname()[1]
        with ctx.wrap_socket(raw, server_hostname=TLV_SITE) as tls:
            tls.sendall(b"x")
            assert tls.recv(16) == b"read"
    report = balanced["tlv"].reports.get(timeout=10)
    assert not isinstance(report, Exception), report
    assert report["source"] == (VISITOR_IP, source_port)
    assert report["destination"] == ("127.0.0.1", balanced["public"])  # the Server's listener


def test_health_checks_are_closed_quietly(balanced):
    """HAProxy checks both backends every 100 ms (v2: LOCAL, v1: its own line): after
    dozens of probes the Server has logged no warn or error line, and HAProxy still
    counts the node UP (a Visitor goes through)."""
    server = balanced["server"]
    before = value(balanced["metrics"], "runewarp_visitor_connections_total",
                   outcome="proxy-health-check") or 0
    time.sleep(3)
    after = value(balanced["metrics"], "runewarp_visitor_connections_total", outcome="proxy-health-check")
    assert after - before >= 10, (before, after)
    assert server.count(WARN_OR_ERROR) == 0, server.log()
    assert balanced["haproxy"].count(r"node is DOWN") == 0, balanced["haproxy"].log()
    visit(balanced, "v2")


def test_plain_tcp_checks_log_nothing_above_debug(balanced):
    """A balancer's tcp check is connect-and-close: 60 of them, untrusted and trusted
    (no header at all), leave no warn or error line and count as closed-early."""
    server = balanced["server"]
    before = value(balanced["metrics"], "runewarp_visitor_connections_total", outcome="closed-early") or 0
    for i in range(60):
        source = BALANCER_IP if i % 2 else "127.0.0.1"
        socket.create_connection(("127.0.0.1", balanced["public"]), timeout=5,
                                 source_address=(source, 0)).close()
    deadline = time.monotonic() + 10
    while (value(balanced["metrics"], "runewarp_visitor_connections_total", outcome="closed-early")
           or 0) - before < 60:
        assert time.monotonic() < deadline, "probes not counted"
        time.sleep(0.1)
    assert server.count(WARN_OR_ERROR) == 0, server.log()


def trusted_socket(balanced):
    """A raw connection from the trusted address, straight to the Server."""
    return socket.create_connection(("127.0.0.1", balanced["public"]), timeout=DEADLINE + 5,
                                    source_address=(BALANCER_IP, 0))


def slowloris(sock):
    """A v2 header one byte every 0.3 s, for longer than the deadline."""
    for byte in proxyv2.encode(("198.51.100.1", 1), ("127.0.0.1", 443)):
        sock.sendall(bytes([byte]))
        time.sleep(0.3)


BAD_HEADERS = {
    "garbage": b"\x00garbage\r\n" * 4,
    "tls-without-header": clienthellos.build(SITE),
    "truncated-v2": proxyv2.encode((CLAIMED, 1), ("127.0.0.1", 443))[:20],
    "v1-too-long": b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",
    "v1-bad-address": b"PROXY TCP4 1.2.3 127.0.0.1 1 443\r\n",
    "slowloris": None,
}


def test_bad_headers_from_a_trusted_source_are_dropped(balanced):
    """Every bad opening from the trusted address is closed within the deadline (a
    truncated header and the slowloris by the deadline itself), counted, logged at
    debug without a traceback, while a good Visitor through HAProxy is served."""
    server = balanced["server"]
    before = value(balanced["metrics"], "runewarp_visitor_connections_total",
                   outcome="proxy-header-invalid") or 0
    closed = {}

    def bad(name, data):
        started = time.monotonic()
        with trusted_socket(balanced) as sock:
            try:
                if data is None:
                    slowloris(sock)
                else:
                    sock.sendall(data)
                while sock.recv(4096):
                    pass
            except OSError:
                pass  # reset, or the slowloris writing to a closed socket
        closed[name] = time.monotonic() - started

    threads = [threading.Thread(target=bad, args=item) for item in BAD_HEADERS.items()]
    for thread in threads:
        thread.start()
    visit(balanced, "v2")  # served while the bad ones are open
    for thread in threads:
        thread.join(DEADLINE + 10)
    assert sorted(closed) == sorted(BAD_HEADERS)
    assert all(seconds < DEADLINE + 2 for seconds in closed.values()), closed
    assert closed["truncated-v2"] > DEADLINE - 0.5 and closed["slowloris"] > DEADLINE - 0.5, closed
    invalid = value(balanced["metrics"], "runewarp_visitor_connections_total",
                    outcome="proxy-header-invalid") - before
    assert invalid == 4, invalid  # garbage, the bare ClientHello, v1 too long, v1 bad address
    server.wait_for(r"visitor-rejected .*reason=\"?proxy-header-invalid: v1 line longer than 107 bytes")
    assert server.count(WARN_OR_ERROR) == 0, server.log()


def test_a_header_from_an_untrusted_source_is_not_honoured(balanced):
    """A valid v2 header from 127.0.0.9 (not trusted) is a non-TLS Visitor: dropped, and
    the address it claims appears nowhere in the Server's log."""
    server = balanced["server"]
    mark = len(server.lines)
    header = proxyv2.encode((CLAIMED, 40000), ("127.0.0.1", balanced["public"]))
    with socket.create_connection(("127.0.0.1", balanced["public"]), timeout=10,
                                  source_address=(UNTRUSTED_IP, 0)) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(header + clienthellos.build(SITE))
        assert sock.recv(4096) == b""
    server.wait_for(rf"visitor-rejected .*visitor={UNTRUSTED_IP}:{local_port} .*reason=\"?not-tls", start=mark)
    assert CLAIMED not in server.log()


def test_the_tunnel_listener_takes_the_client_address_from_the_header(deployment, echo_backend):
    """A Client behind HAProxy on the dedicated Tunnel listener: the Server names the
    Client's address (127.0.0.1), not HAProxy's, and HAProxy's LOCAL checks and a bad
    header from the trusted address are refused quietly (debug)."""
    tunnel_port, front_port, metrics_port = free_port(), free_port(), free_port()
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [SITE], [identity])], extra=f"""
        tunnel-bind-address = "127.0.0.1:{tunnel_port}"
        trusted-proxies = ["{BALANCER_IP}"]
        [server.timeouts]
        client-hello = {DEADLINE}
        [server.metrics]
        bind-address = "127.0.0.1:{metrics_port}"
    """)
    folder = deployment.dir / "haproxy"
    folder.mkdir()
    conf = haproxy_conf(folder, [("tunnel", front_port, tunnel_port, "send-proxy-v2")])
    proxy = harness.Process([HAPROXY, "-db", "-f", conf], name="haproxy")
    deployment.processes.append(proxy)
    wait_listening(proxy, [front_port])
    path = deployment.client_config("client-a", [([SITE], echo_backend.address)], port=front_port)
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for(harness.CLIENT_READY)
    line = server.wait_for("tunnel-connection-established").string
    assert "peer=127.0.0.1:" in line, line
    with socket.create_connection(("127.0.0.1", tunnel_port), timeout=10,
                                  source_address=(BALANCER_IP, 0)) as sock:
        sock.sendall(b"PROXY TCP4 1.2.3 127.0.0.1 1 443\r\n")
        assert sock.recv(4096) == b""
    server.wait_for(r"tunnel-connection-refused .*reason=\"?proxy-header-invalid: v1 addresses")
    with socket.create_connection(("127.0.0.1", tunnel_port), timeout=DEADLINE + 5,
                                  source_address=(BALANCER_IP, 0)) as sock:
        started = time.monotonic()
        sock.sendall(BAD_HEADERS["truncated-v2"])
        assert sock.recv(4096) == b""
        assert DEADLINE - 0.5 < time.monotonic() - started < DEADLINE + 2  # the client-hello deadline
    server.wait_for(r"tunnel-connection-refused .*reason=\"?proxy-header-invalid: intake-deadline")
    assert value(metrics_port, "runewarp_tunnel_connection_events_total",
                 event="refused", reason="proxy-header-invalid") == 2
    time.sleep(1)  # ten checks
    assert server.count(rf"peer={BALANCER_IP}") == 2, server.log()  # the two bad headers only
    assert server.count(r" (WARN|ERROR|INFO)  tunnel-connection-refused|Traceback") == 0, server.log()


def test_trusted_proxies_reloaded_applies_to_the_next_connection(deployment, echo_backend):
    """Before the reload, a header from 127.0.0.3 is an untrusted non-TLS Visitor; after
    `trusted-proxies = ["127.0.0.3"]` is reloaded in, the next connection's header is
    honoured: routed, and logged with the address it names."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [ECHO], [identity])])
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    server.wait_for("tunnel-connection-established")
    opening = proxyv2.encode((CLAIMED, 40000), ("127.0.0.1", deployment.public_port))
    hello = clienthellos.build(ECHO)

    def connect():
        return socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10,
                                        source_address=(BALANCER_IP, 0))

    with connect() as sock:
        sock.sendall(opening + hello)
        assert sock.recv(4096) == b""
    server.wait_for(rf"visitor-rejected visitor={BALANCER_IP}:\d+ reason=\"?not-tls")
    path = deployment.dir / "server.toml"
    path.write_text(path.read_text().replace("[server]\n", f'[server]\ntrusted-proxies = ["{BALANCER_IP}"]\n', 1))
    reload_by_signal(server, "server-reloaded")
    with connect() as sock:
        sock.sendall(opening + hello)
        assert recv_exactly(sock, len(hello)) == hello
    server.wait_for(rf"visitor-closed .*visitor={CLAIMED}:40000 ")
