"""Each key a reload applies (schema.KEYS with reload = "reload" or "new connections"), shown
with real processes: a SIGHUP (or watch-config) reload, then what changed.  "reload" keys
act on what is already running (a stream spliced before the reload); "new connections"
keys on the next connection, which the test then makes.  COVERED names, for every such
key, the tests anywhere under tests/ that prove it, and test_every_reloadable_key_is_covered
fails for a key that has none (docs/configuration.md, "What a reload changes").

Timers start far above the value reloaded in, so a bound of several seconds tells them
apart (docs/testing.md: no tight timing).
"""

import json
import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from runewarp.config import schema
from tests import clienthellos

from ..conftest import SERVER_HOSTNAME, Proc, free_port, run_cli
from .helpers import (ECHO, TCPBackend, closed_by_peer, curl, echo_visitor, recv_exactly, reload_by_signal,
                      round_trip, tunnel_handshake)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
TESTS = Path(__file__).resolve().parent.parent
SILENT = "silent.example.com"  # its Local backend reads and never answers
HALF = "half.example.com"  # its Local backend echoes, then keeps its side open after EOF
NEW = "new.example.com"
APP = "app.example.com"
FAST_RECONNECT = "0.2,0.5"


class SilentBackend(TCPBackend):
    def serve(self, conn):
        while conn.recv(65536):
            pass


class HalfOpenBackend(TCPBackend):
    def serve(self, conn):
        while data := conn.recv(65536):
            conn.sendall(data)
        time.sleep(30)  # its own side stays open: only a half-closed timer ends the stream


@pytest.fixture(scope="module")
def odd_backends():
    silent, half = SilentBackend(), HalfOpenBackend()
    yield silent, half
    silent.close()
    half.close()


def tunnels_for(identity, hostnames=(ECHO, SILENT, HALF), name="apps"):
    return [(name, list(hostnames), [identity])]


def pair(deployment, echo_backend, odd_backends, server_extra="", client=True):
    """A Server and a Client serving ECHO, SILENT and HALF: (server, client, tunnels); the
    Client is None when not `client`."""
    identity = deployment.identity("client-a")
    tunnels = tunnels_for(identity)
    server = deployment.start_server(tunnels, extra=server_extra)
    if not client:
        return server, None, tunnels
    silent, half = odd_backends
    services = [([ECHO], echo_backend.address), ([SILENT], silent.address), ([HALF], half.address)]
    client = start_client(deployment, deployment.client_config("client-a", services))
    server.wait_for("tunnel-connection-established")
    return server, client, tunnels


def echo_client(deployment, echo_backend):
    """A Server and a Client serving ECHO, its Tunnel connection up: (client, its config)."""
    identity = deployment.identity("client-a")
    deployment.start_server(tunnels_for(identity, [ECHO]))
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    client = start_client(deployment, path)
    client.wait_for("tunnel-connection-established")
    return client, path


def write_client(path, settings="", tables="", base=None):
    """`path` rewritten from `base` (default: its own text) with `settings` in [client] and
    `tables` at the end."""
    text = base if base is not None else path.read_text()
    path.write_text(text.replace("[client]\n", f"[client]\n{settings}\n", 1) + f"\n{tables}\n")
    return text


def start_client(deployment, path, env=None):
    client = Proc(["client", "-c", path], env=env or deployment.env)
    deployment.processes.append(client)
    client.wait_for("client-ready")
    return client


def reload_server(deployment, server, tunnels, extra=""):
    deployment.server_config(tunnels, extra=extra)
    return reload_by_signal(server, "server-reloaded")


def connect(port, source="127.0.0.1", hello=b""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if hello:
        sock.sendall(hello)
    return sock


def held(sock, seconds=0.3):
    """True when the peer has not closed `sock` within `seconds` (bytes it sends are read)."""
    with pytest.raises(AssertionError, match="still open"):
        closed_by_peer(sock, seconds)
    return True


def all_held(socks):
    """`held` for several connections at once: one wait for all of them."""
    time.sleep(0.3)
    return all(held(sock, 0.02) for sock in socks)


def since(proc, pattern, mark):
    """How many of `proc`'s lines from index `mark` on match `pattern`."""
    return sum(1 for line in proc.lines[mark:] if re.search(pattern, line))


def refused_at_once(sock):
    return closed_by_peer(sock, 3) < 3


# -- Server admission limits: the next connections over the new limit are refused --

def tunnel_hello():
    """A real ClientHello for the Server hostname with the Tunnel ALPN (the handshake then
    waits for the rest, which never comes)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["runewarp/1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    engine = ctx.wrap_bio(incoming, outgoing, server_hostname=SERVER_HOSTNAME)
    with pytest.raises(ssl.SSLWantReadError):
        engine.do_handshake()
    return outgoing.read()


ADMISSION = {
    # key: (extra at start, extra reloaded, a Tunnel handshake?, sources of the connections,
    #       which one is closed at once after the reload, and the line that says why).
    # A full table sheds its oldest silent holder above 7/8 of its size (proto/admission.py);
    # a full source refuses the newcomer.
    "intake-connections": ("", "intake-connections = 8", False, ("127.0.0.1",) * 8, 0,
                           "connection-shed kind=intake"),
    "intake-ipv4-prefix": ("intake-per-source = 1", "intake-per-source = 1\nintake-ipv4-prefix = 24",
                           False, ("127.0.0.1", "127.0.0.2"), -1, "server-saturated scope=source-full"),
    "tunnel-handshakes": ("", "tunnel-handshakes = 1", True, ("127.0.0.1", "127.0.0.2"), 0,
                          "connection-shed kind=tunnel-handshakes"),
    "tunnel-handshakes-per-source": ("", "tunnel-handshakes-per-source = 1", True,
                                     ("127.0.0.1", "127.0.0.1"), -1,
                                     "server-saturated scope=tunnel-handshakes-per-source"),
}


@pytest.mark.parametrize("key", ADMISSION)
def test_server_admission_limit_applies_to_the_next_connections(deployment, echo_backend,
                                                                odd_backends, key):
    """The same connections are all held before the reload; after it one is closed at
    once: 127.0.0.2 is another IPv4 source than 127.0.0.1 on Linux loopback."""
    start, reloaded, tunnel, sources, closed, why = ADMISSION[key]
    limits = "[server.limits]\n"
    server, _, tunnels = pair(deployment, echo_backend, odd_backends,
                              server_extra=limits + start if start else "", client=False)
    port = deployment.public_port

    def open_all():
        return [connect(port, source, tunnel_hello() if tunnel else b"") for source in sources]

    before = open_all()
    try:
        assert all_held(before)
    finally:
        for sock in before:
            sock.close()
    assert not server.count(why)
    reload_server(deployment, server, tunnels, limits + reloaded)
    after = open_all()
    try:
        assert refused_at_once(after[closed])
        server.wait_for(why)
        assert all_held([sock for sock in after if sock is not after[closed]])
    finally:
        for sock in after:
            sock.close()


def test_active_streams_per_tunnel_applies_to_the_next_stream(deployment, echo_backend, odd_backends):
    server, _, tunnels = pair(deployment, echo_backend, odd_backends)
    port = deployment.public_port
    with echo_visitor(port) as first, echo_visitor(port) as second:  # default: all of active-streams
        assert round_trip(first, b"one", timeout=5) < 5 and round_trip(second, b"two", timeout=5) < 5
    with echo_visitor(port) as first:
        reload_server(deployment, server, tunnels, "[server.limits]\nactive-streams-per-tunnel = 1")
        with pytest.raises((AssertionError, OSError)):
            echo_visitor(port).close()
        server.wait_for("server-saturated scope=active-streams-per-tunnel:apps")
        assert round_trip(first, b"still spliced", timeout=5) < 5


def test_pool_connections_applies_to_the_next_tunnel_connection(deployment, echo_backend,
                                                               odd_backends):
    server, client, tunnels = pair(deployment, echo_backend, odd_backends)
    reload_server(deployment, server, tunnels, "[server.limits]\npool-connections = 1")
    mark = len(server.lines)
    second = start_client(deployment, deployment.dir / "client-a.toml")  # a replica: same identity
    server.wait_for("server-saturated scope=pool:apps", start=mark)
    assert not since(server, "tunnel-connection-established", mark)
    second.kill()


# -- splice timers: a reload reaches the streams spliced before it --

SPLICE_TIMERS = {
    # (role, key): (hostname, half-close the Visitor's side, reason logged)
    ("server", "stream-first-byte-timeout"): (SILENT, False, "first-byte-timeout"),
    ("server", "stream-half-closed-timeout"): (HALF, True, "half-closed-timeout"),
    ("client", "stream-idle-timeout"): (ECHO, False, "idle-timeout"),
    ("client", "stream-half-closed-timeout"): (HALF, True, "half-closed-timeout"),
}


@pytest.mark.parametrize("role,key", SPLICE_TIMERS)
def test_splice_timer_reaches_a_stream_spliced_before_the_reload(deployment, echo_backend,
                                                                odd_backends, role, key):
    hostname, half_close, reason = SPLICE_TIMERS[role, key]
    server, client, tunnels = pair(deployment, echo_backend, odd_backends)
    port = deployment.public_port
    if hostname == SILENT:
        visitor = connect(port, hello=clienthellos.build(SILENT))
        server.wait_for(f"visitor-routed .*public-hostname={SILENT}")
    else:
        visitor = echo_visitor(port, hostname=hostname)
    with visitor:
        if half_close:
            visitor.shutdown(socket.SHUT_WR)
        assert held(visitor, 1.5)  # the starting value (30 s or more) holds it
        proc = server if role == "server" else client
        if role == "server":
            mark = reload_server(deployment, server, tunnels, f"[server.limits]\n{key} = 1")
        else:
            path = deployment.dir / "client-a.toml"
            path.write_text(path.read_text() + f"\n[client.limits]\n{key} = 1\n")
            mark = reload_by_signal(client, "client-reloaded")
        assert closed_by_peer(visitor, 8) < 8  # about 1 s (the sweeper ticks each second)
    proc.wait_for(f'reason="?{reason}', start=mark)


# -- Server timeouts: the next Tunnel connection gets the new value --

@pytest.mark.parametrize("key", ["tunnel-handshake", "control-hello"])
def test_server_timeout_applies_to_the_next_tunnel_connection(deployment, echo_backend,
                                                             odd_backends, key):
    """Started at 30 s and reloaded to 1: a Tunnel connection that stalls in its TLS
    handshake (after its ClientHello) or before its control hello is closed within seconds."""
    server, _, tunnels = pair(deployment, echo_backend, odd_backends,
                              server_extra=f"[server.timeouts]\n{key} = 30", client=False)
    mark = reload_server(deployment, server, tunnels, f"[server.timeouts]\n{key} = 1")
    port = deployment.public_port
    if key == "tunnel-handshake":
        stalled = connect(port, hello=tunnel_hello())
    else:
        ctx = ssl.create_default_context(cafile=str(deployment.ca_file))
        ctx.set_alpn_protocols(["runewarp/1"])
        identity = deployment.dir / "client-a"
        ctx.load_cert_chain(identity / "client.crt", identity / "client.key")
        stalled = ctx.wrap_socket(connect(port), server_hostname=SERVER_HOSTNAME)
    with stalled:
        assert closed_by_peer(stalled, 8) < 8
    reason = "handshake-deadline" if key == "tunnel-handshake" else "no control hello before"
    server.wait_for(f"tunnel-connection-refused .*reason=\"?{reason}", start=mark)


def test_server_keepalive_and_dead_peer_apply_to_the_next_tunnel_connection(
        deployment, echo_backend, odd_backends):
    """keepalive-interval: with a dead-peer of 2 s, only pings every 0.5 s keep a live but
    idle Client's Tunnel connection up; dead-peer: a stopped Client is noticed in 2 s."""
    server, client, tunnels = pair(deployment, echo_backend, odd_backends)
    reload_server(deployment, server, tunnels,
                  "[server.timeouts]\nkeepalive-interval = 0.5\ndead-peer = 2")
    client.stop(timeout=10)
    mark = len(server.lines)
    client = start_client(deployment, deployment.dir / "client-a.toml")
    server.wait_for("tunnel-connection-established", start=mark)
    time.sleep(4)  # twice the dead-peer time, idle
    assert not since(server, "tunnel-connection-closed", mark), server.log()
    client.signal(signal.SIGSTOP)
    try:
        server.wait_for(r"tunnel-connection-closed .*no frame received for 2 s", start=mark,
                        timeout=12)
    finally:
        client.signal(signal.SIGCONT)


# -- Client timeouts and trust: the next Tunnel connection gets the new value --

def test_client_timeouts_apply_to_the_next_tunnel_connection(deployment, echo_backend):
    """keepalive-interval and dead-peer as for the Server, seen from the Client; then
    tunnel-handshake: the stopped Server's kernel still accepts TCP, so each attempt
    waits for the TLS handshake, 1 s instead of the 30 s the Client started with."""
    port = free_port()
    identity = deployment.identity("client-a")
    tunnels = tunnels_for(identity)
    fixed = f"public-bind-address = \"127.0.0.1:{port}\""

    def start_server():
        path = deployment.server_config(tunnels)
        path.write_text(path.read_text().replace('public-bind-address = "127.0.0.1:0"', fixed))
        server = Proc(["server", "-c", path], env=deployment.env)
        deployment.processes.append(server)
        server.wait_for("server-ready")
        return server

    server = start_server()
    deployment.public_port = port
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    base = write_client(path, tables="[client.timeouts]\ntunnel-handshake = 30")
    env = dict(deployment.env, RUNEWARP_RECONNECT_WINDOWS=FAST_RECONNECT)
    client = start_client(deployment, path, env=env)
    client.wait_for("tunnel-connection-established")
    write_client(path, base=base, tables="[client.timeouts]\ntunnel-handshake = 1\n"
                                         "keepalive-interval = 0.5\ndead-peer = 2")
    reload_by_signal(client, "client-reloaded")
    server.stop(timeout=15)  # the next Tunnel connection goes to a new Server on the same port
    mark = len(client.lines)
    server = start_server()
    client.wait_for("tunnel-connection-established", start=mark, timeout=20)
    time.sleep(4)
    assert not since(client, "tunnel-connection-lost", mark), client.log()
    failed = client.count("tunnel-connection-failed")
    server.signal(signal.SIGSTOP)
    try:
        client.wait_for(r'tunnel-connection-lost .*reason="?no frame received for 2 s', start=mark,
                        timeout=12)
        client.wait_count("tunnel-connection-failed", failed + 2, timeout=12)
    finally:
        server.signal(signal.SIGCONT)


def other_ca(deployment):
    folder = deployment.dir / "other-cert"
    run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", folder)
    return folder


TRUST = {
    # key: ([client] settings replaced at start, by the reload), the start's failure
    "server-name": (('server-address = "tunnel.example.com', 'server-name = "wrong.example.com"\n'
                     'server-address = "127.0.0.1'),
                    ('server-address = "tunnel.example.com', f'server-name = "{SERVER_HOSTNAME}"\n'
                     'server-address = "127.0.0.1'), "during the TLS handshake"),
    "server-trust": (('server-trust = "ca-file"\nserver-ca-file = "server-cert/server-ca.crt"',
                      'server-trust = "system"'), None, "certificate"),
    "server-ca-file": (("server-cert/server-ca.crt", "other-cert/server-ca.crt"), None, "certificate"),
    "identity-dir": (('identity-dir = "client-a"', 'identity-dir = "client-b"'), None,
                     "unauthorized"),
}


@pytest.mark.parametrize("key", TRUST)
def test_client_trust_and_identity_apply_to_the_next_tunnel_connection(deployment, echo_backend,
                                                                      key):
    """The Client starts with a value its Tunnel connections fail with and retries; the
    reload to the right value lets the next attempt in."""
    start, fixed, failure = TRUST[key]
    identity = deployment.identity("client-a")
    deployment.identity("client-b")
    other_ca(deployment)
    deployment.start_server(tunnels_for(identity, [ECHO]))
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    good = path.read_text()
    path.write_text(good.replace(*start))
    env = dict(deployment.env, RUNEWARP_RECONNECT_WINDOWS=FAST_RECONNECT)
    client = start_client(deployment, path, env=env)
    client.wait_count(f"tunnel-connection-(failed|unauthorized) .*{failure}", 2, timeout=20)
    assert not client.count("tunnel-connection-established")
    path.write_text(good.replace(*fixed) if fixed else good)
    mark = reload_by_signal(client, "client-reloaded")
    client.wait_for(f"tunnel-connection-established .*client-identity={identity}", start=mark,
                    timeout=20)
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"trusted", timeout=5) < 5


def test_an_identity_dir_without_an_identity_fails_the_reload(deployment, echo_backend):
    """Checked as at start: the running identity keeps serving (fail closed)."""
    client, path = echo_client(deployment, echo_backend)
    (deployment.dir / "empty").mkdir()
    path.write_text(path.read_text().replace('identity-dir = "client-a"', 'identity-dir = "empty"'))
    failed = client.wait_for("reload-failed .*", start=reload_by_signal(client, "reload-failed"))
    assert str(deployment.dir / "empty") in failed.group(0), failed.group(0)
    assert not client.count("client-reloaded")
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"still serving", timeout=5) < 5


def test_client_backend_connect_applies_to_the_next_stream(deployment):
    from .test_timeouts import BlackHole
    hole = BlackHole()
    try:
        identity = deployment.identity("client-a")
        server = deployment.start_server(tunnels_for(identity, [ECHO]))
        path = deployment.client_config("client-a", [([ECHO], hole.address)])
        base = write_client(path, tables="[client.timeouts]\nbackend-connect = 30")
        client = start_client(deployment, path)
        server.wait_for("tunnel-connection-established")
        write_client(path, base=base, tables="[client.timeouts]\nbackend-connect = 1")
        mark = reload_by_signal(client, "client-reloaded")
        with connect(deployment.public_port, hello=clienthellos.build(ECHO)) as visitor:
            assert closed_by_peer(visitor, 8) < 8  # 1 s, not the 30 s it started with
        client.wait_for(f"backend-connect-failed .*backend-address={hole.address}", start=mark)
    finally:
        hole.close()


# -- Services, Tunnels, certificates --

def test_client_services_edit_applies_to_the_next_stream(deployment, echo_backend):
    """backend-address moved from a closed port to the echo backend; a public hostname
    added to a Service."""
    identity = deployment.identity("client-a")
    server = deployment.start_server(tunnels_for(identity, [ECHO, NEW]))
    closed = f"127.0.0.1:{free_port()}"
    path = deployment.client_config("client-a", [([ECHO], closed)])
    client = start_client(deployment, path)
    server.wait_for("tunnel-connection-established")
    port = deployment.public_port
    for hostname in (ECHO, NEW):
        with pytest.raises((AssertionError, OSError)):
            echo_visitor(port, hostname=hostname).close()
    deployment.client_config("client-a", [([ECHO, NEW], echo_backend.address)])
    reload_by_signal(client, "client-reloaded")
    for hostname in (ECHO, NEW):
        with echo_visitor(port, hostname=hostname) as visitor:
            assert round_trip(visitor, hostname.encode(), timeout=5) < 5


def test_client_proxy_protocol_applies_to_the_next_stream(deployment, echo_backend):
    """proxy-protocol turned on by SIGHUP: the echo backend returns the v1 header it got
    before the ClientHello on the next stream, and nothing before it on the previous one."""
    identity = deployment.identity("client-a")
    server = deployment.start_server(tunnels_for(identity, [ECHO]))
    path = deployment.client_config("client-a", [([ECHO], echo_backend.address)])
    client = start_client(deployment, path)
    server.wait_for("tunnel-connection-established")
    port = deployment.public_port
    echo_visitor(port).close()  # the echo is exactly the ClientHello: no header
    backend = f'"{echo_backend.address}"'
    path.write_text(path.read_text().replace(backend, f'{backend}\nproxy-protocol = "v1"', 1))
    reload_by_signal(client, "client-reloaded")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        hello = clienthellos.build(ECHO)
        sock.sendall(hello)
        line = recv_line(sock)
        assert line.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), line
        assert recv_exactly(sock, len(hello)) == hello


def recv_line(sock, limit=108):
    """Bytes up to and including CRLF (a PROXY v1 line is at most 107 bytes)."""
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk and len(line) < limit, line
        line += chunk
    return line


def served_issuer(port, ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=APP) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).issuer


def test_client_tls_mode_and_public_cert_dir_apply_to_the_next_stream(deployment, plain_backend):
    """tls-mode terminate → passthrough: TLS now reaches the plaintext backend and fails;
    back to terminate with public-cert-dir moved: the certificate of the new folder."""
    identity = deployment.identity("client-a")
    server = deployment.start_server(tunnels_for(identity, [APP]))
    cas = {}
    for folder in ("certs-a", "certs-b"):
        run_cli("client", "public-cert", "init", "--dir", deployment.dir / folder, "--hostname", APP)
        cas[folder] = deployment.dir / folder / "public-ca.crt"
    path = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                    public_cert_dir="certs-a")
    client = start_client(deployment, path)
    server.wait_for("tunnel-connection-established")
    port = deployment.public_port
    assert served_issuer(port, cas["certs-a"]) == ca_subject(cas["certs-a"])
    deployment.client_config("client-a", [([APP], plain_backend)])
    reload_by_signal(client, "client-reloaded")
    assert curl(port, APP, cas["certs-a"], "/hello.txt", timeout=5).returncode != 0
    deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                             public_cert_dir="certs-b")
    reload_by_signal(client, "client-reloaded")
    assert served_issuer(port, cas["certs-b"]) == ca_subject(cas["certs-b"])
    assert curl(port, APP, cas["certs-b"], "/hello.txt").stdout == b"plaintext backend\n"


def ca_subject(path):
    return x509.load_pem_x509_certificate(path.read_bytes()).subject


def test_tunnel_renamed_and_client_identity_apply(deployment, echo_backend):
    """A Tunnel renamed and given another Client by the singular `client-identity`: the old
    Client is let go, the new one joins under the new name and serves."""
    first, second = deployment.identity("client-a"), deployment.identity("client-b")
    server = deployment.start_server(tunnels_for(first, [ECHO]))
    deployment.start_client("client-a", [([ECHO], echo_backend.address)])
    server.wait_for("tunnel-connection-established")
    path = deployment.server_config(tunnels_for(second, [ECHO], name="renamed"))
    path.write_text(path.read_text().replace(f'client-identities = ["{second}"]',
                                             f'client-identity = "{second}"'))
    mark = reload_by_signal(server, "server-reloaded")
    client = deployment.start_client("client-b", [([ECHO], echo_backend.address)])
    client.wait_for("tunnel-connection-established .*tunnel=renamed")
    server.wait_for("tunnel-connection-established tunnel=renamed", start=mark)
    with echo_visitor(deployment.public_port) as visitor:
        assert round_trip(visitor, b"renamed", timeout=5) < 5
    server.wait_for("visitor-routed .*tunnel=renamed", start=mark)


def test_server_cert_dir_moved_serves_the_new_certificate(deployment, echo_backend, odd_backends):
    server, _, tunnels = pair(deployment, echo_backend, odd_backends, client=False)
    other = other_ca(deployment)
    path = deployment.server_config(tunnels)
    path.write_text(path.read_text().replace('"server-cert"', '"other-cert"'))
    reload_by_signal(server, "server-reloaded")
    served = tunnel_handshake(deployment.public_port, other / "server-ca.crt", deployment.dir / "client-a")
    on_disk = x509.load_pem_x509_certificate((other / "server.crt").read_bytes())
    assert served.serial_number == on_disk.serial_number


# -- logs --

def test_log_level_log_format_and_access_log_apply_to_the_next_lines(deployment, echo_backend,
                                                                    odd_backends):
    """Server and Client reloaded to JSON lines at info with access-log off: the reload's
    own line is JSON, a stream's closing line moves to debug and so is no longer written."""
    server, client, tunnels = pair(deployment, echo_backend, odd_backends)
    with echo_visitor(deployment.public_port) as visitor:
        round_trip(visitor, b"logged", timeout=5)
    server.wait_for(" INFO  visitor-closed")
    client.wait_for(" INFO  stream-closed")
    assert server.count(" DEBUG ") and client.count(" DEBUG ")  # debug lines before the reload
    settings = 'log-level = "info"\nlog-format = "json"'
    path = deployment.server_config(tunnels, extra="access-log = false")
    path.write_text(path.read_text().replace('log-level = "debug"', settings))
    server_mark = reload_by_signal(server, '"event": "server-reloaded"')
    path = deployment.dir / "client-a.toml"
    path.write_text(path.read_text().replace('log-level = "debug"', settings)
                    .replace("[client]\n", "[client]\naccess-log = false\n"))
    client_mark = reload_by_signal(client, '"event": "client-reloaded"')
    with echo_visitor(deployment.public_port) as visitor:
        round_trip(visitor, b"not logged", timeout=5)
    time.sleep(1)
    for proc, start in ((server, server_mark), (client, client_mark)):
        lines = proc.lines[start:]
        lines = lines[next(i for i, line in enumerate(lines) if line.startswith("{")):]  # after
        # the old-format reload-started line
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert len(records) == len([line for line in lines if line.strip()]), lines
        assert all(record["level"] != "debug" for record in records), lines
        assert not [r for r in records if r["event"] in ("visitor-closed", "stream-closed")], lines


# -- graceful-shutdown-duration and watch-config on the Client --

def test_client_watch_config_and_graceful_shutdown_duration_apply(deployment, echo_backend):
    client, path = echo_client(deployment, echo_backend)
    base = path.read_text()
    write_client(path, "watch-config = true", base=base)
    reload_by_signal(client, "client-reloaded")
    mark = len(client.lines)
    path.write_text(base.replace("graceful-shutdown-duration = 3",
                                 "graceful-shutdown-duration = 7\nwatch-config = true"))
    client.wait_for("reload-started trigger=file-change", start=mark)
    client.wait_for("client-reloaded", start=mark)
    client.signal(signal.SIGTERM)
    client.wait_for("shutdown-started .*graceful-shutdown-duration=7s")


# -- every reloadable key has a test --

def _ids(file, *names):
    return [f"tests/e2e/{file}::{name}" for name in names]


HERE = "test_reload_keys.py"
ADMIT = "test_server_admission_limit_applies_to_the_next_connections"
TIMER = "test_splice_timer_reaches_a_stream_spliced_before_the_reload"
TRUSTED = "test_client_trust_and_identity_apply_to_the_next_tunnel_connection"
SERVER_TIMEOUT = "test_server_timeout_applies_to_the_next_tunnel_connection"
LOGS = "test_log_level_log_format_and_access_log_apply_to_the_next_lines"
SERVER_KEEPALIVE = "test_server_keepalive_and_dead_peer_apply_to_the_next_tunnel_connection"
CLIENT_TIMEOUTS = "test_client_timeouts_apply_to_the_next_tunnel_connection"
SERVICES = "test_client_services_edit_applies_to_the_next_stream"
TLS_MODE = "test_client_tls_mode_and_public_cert_dir_apply_to_the_next_stream"
COVERED = {
    "log-level": _ids(HERE, LOGS),
    "log-format": _ids(HERE, LOGS),
    "server": _ids("test_reload.py", "test_a_valid_edit_of_a_watched_config_is_applied"),
    "client": _ids(HERE, SERVICES),
    "server.public-bind-address": _ids(
        "test_reload.py", "test_public_bind_address_moves_to_a_listener_bound_before_the_old_one_closes",
        "test_a_bind_failure_keeps_the_old_listener_and_fails_the_reload"),
    "server.tunnel-bind-address": _ids(
        "test_reload.py", "test_a_dedicated_tunnel_listener_added_by_a_reload_takes_the_tunnel_connections"),
    "server.trusted-proxies": _ids(
        "test_load_balancer.py", "test_trusted_proxies_reloaded_applies_to_the_next_connection"),
    "server.cert-dir": _ids(HERE, "test_server_cert_dir_moved_serves_the_new_certificate"),
    "server.quic-idle-timeout": _ids(
        "test_quic_server.py", "test_an_idle_flow_is_reset_with_the_timeout_it_started_with"),
    "server.graceful-shutdown-duration": _ids(
        "test_reload.py", "test_graceful_shutdown_duration_applies_to_the_next_stop"),
    "client.graceful-shutdown-duration": _ids(
        HERE, "test_client_watch_config_and_graceful_shutdown_duration_apply"),
    "server.limits": _ids(HERE, f"{ADMIT}[intake-connections]"),
    "client.limits": _ids(HERE, f"{TIMER}[client-stream-idle-timeout]"),
    "server.timeouts": _ids(HERE, f"{SERVER_TIMEOUT}[tunnel-handshake]"),
    "client.timeouts": _ids(HERE, CLIENT_TIMEOUTS),
    "server.access-log": _ids(HERE, LOGS),
    "client.access-log": _ids(HERE, LOGS),
    "server.watch-config": _ids(
        "test_reload.py", "test_watch_config_turned_on_by_a_reload_watches_from_then_on"),
    "client.watch-config": _ids(HERE, "test_client_watch_config_and_graceful_shutdown_duration_apply"),
    "server.tunnels": _ids("test_passthrough.py", "test_reload_on_sighup_adds_a_tunnel"),
    "server.limits.intake-connections": _ids(HERE, f"{ADMIT}[intake-connections]"),
    "server.limits.intake-per-source": _ids(
        "test_reload.py", "test_intake_per_source_lowered_refuses_the_next_connections_over_it"),
    "server.limits.intake-ipv4-prefix": _ids(HERE, f"{ADMIT}[intake-ipv4-prefix]"),
    # Loopback has one IPv6 source (::1): the reload path is the IPv4 one (both prefixes go
    # to the same Admission in Server._apply_limits); the grouping itself is a unit test.
    "server.limits.intake-ipv6-prefix": [
        *_ids(HERE, f"{ADMIT}[intake-ipv4-prefix]"),
        "tests/proto/test_admission.py::test_source_key_groups_ipv6_by_64_and_ipv4_by_configured_prefix"],
    "server.limits.tunnel-handshakes": _ids(HERE, f"{ADMIT}[tunnel-handshakes]"),
    "server.limits.tunnel-handshakes-per-source": _ids(HERE, f"{ADMIT}[tunnel-handshakes-per-source]"),
    "server.limits.active-streams-per-tunnel": _ids(
        HERE, "test_active_streams_per_tunnel_applies_to_the_next_stream"),
    "server.limits.pool-connections": _ids(HERE, "test_pool_connections_applies_to_the_next_tunnel_connection"),
    "server.limits.stream-first-byte-timeout": _ids(HERE, f"{TIMER}[server-stream-first-byte-timeout]"),
    "server.limits.member-wait": _ids(
        "test_placement.py", "test_member_wait_bounds_the_wait_and_a_reload_applies_it_to_the_next_visitor"),
    "server.limits.retries": _ids(
        "test_retry.py", "test_retries_and_retry_buffer_reloaded_apply_to_the_next_visitors"),
    "server.limits.retry-buffer": _ids(
        "test_retry.py", "test_retries_and_retry_buffer_reloaded_apply_to_the_next_visitors"),
    "server.limits.active-streams": _ids(
        "test_reload.py", "test_server_active_streams_and_idle_timeout_lowered_apply"),
    "server.limits.stream-idle-timeout": _ids(
        "test_reload.py", "test_server_active_streams_and_idle_timeout_lowered_apply"),
    "server.limits.stream-half-closed-timeout": _ids(HERE, f"{TIMER}[server-stream-half-closed-timeout]"),
    "server.timeouts.client-hello": _ids(
        "test_timeouts.py", "test_client_hello_closes_a_silent_visitor_and_a_reload_applies_to_new_ones"),
    "server.timeouts.tunnel-handshake": _ids(HERE, f"{SERVER_TIMEOUT}[tunnel-handshake]"),
    "server.timeouts.control-hello": _ids(HERE, f"{SERVER_TIMEOUT}[control-hello]"),
    "server.timeouts.keepalive-interval": _ids(HERE, SERVER_KEEPALIVE),
    "server.timeouts.dead-peer": _ids(HERE, SERVER_KEEPALIVE),
    "server.tunnels[].name": _ids(HERE, "test_tunnel_renamed_and_client_identity_apply"),
    "server.tunnels[].public-hostnames": _ids("test_reload.py", "test_a_valid_edit_of_a_watched_config_is_applied"),
    "server.tunnels[].client-identity": _ids(HERE, "test_tunnel_renamed_and_client_identity_apply"),
    "server.tunnels[].client-identities": [
        *_ids("test_passthrough.py", "test_reload_on_sighup_adds_a_tunnel"),
        *_ids("test_reload_revocation.py", "test_reload_revokes_an_established_member_and_its_visitors")],
    "client.connections-per-server": _ids(
        "test_server_nodes.py", "test_connections_per_server_fills_the_pool_and_a_reload_changes_it"),
    "client.resolve-interval": _ids(
        "test_server_nodes.py", "test_a_resolution_change_adds_and_drains_tunnel_connections"),
    "client.server-name": _ids(HERE, f"{TRUSTED}[server-name]"),
    "client.server-trust": _ids(HERE, f"{TRUSTED}[server-trust]"),
    "client.server-ca-file": _ids(HERE, f"{TRUSTED}[server-ca-file]"),
    "client.identity-dir": _ids(HERE, f"{TRUSTED}[identity-dir]",
                                "test_an_identity_dir_without_an_identity_fails_the_reload"),
    "client.public-cert-dir": [
        *_ids(HERE, TLS_MODE),
        *_ids("test_reload.py", "test_a_public_certificate_replaced_on_disk_is_served_to_the_next_visitor")],
    "client.services": _ids(HERE, SERVICES),
    "client.limits.active-streams": _ids(
        "test_reload.py", "test_client_stream_limit_and_handler_pool_follow_a_reload"),
    "client.limits.stream-idle-timeout": _ids(HERE, f"{TIMER}[client-stream-idle-timeout]"),
    "client.limits.stream-half-closed-timeout": _ids(HERE, f"{TIMER}[client-stream-half-closed-timeout]"),
    "client.timeouts.tunnel-handshake": _ids(HERE, CLIENT_TIMEOUTS),
    "client.timeouts.backend-connect": _ids(HERE, "test_client_backend_connect_applies_to_the_next_stream"),
    "client.timeouts.keepalive-interval": _ids(HERE, CLIENT_TIMEOUTS),
    "client.timeouts.dead-peer": _ids(HERE, CLIENT_TIMEOUTS),
    "client.services[].public-hostnames": _ids(HERE, SERVICES),
    "client.services[].backend-address": _ids(HERE, SERVICES),
    "client.services[].tls-mode": _ids(HERE, TLS_MODE),
    "client.services[].proxy-protocol": _ids(HERE, "test_client_proxy_protocol_applies_to_the_next_stream"),
    "client.services[].quic-backend-address": _ids(
        "test_quic_client.py", "test_quic_backend_address_reloaded_applies_to_the_next_flow"),
    "client.quic-idle-timeout": _ids(
        "test_quic_client.py", "test_quic_idle_timeout_reloaded_ends_the_next_flows_and_closes_their_sockets"),
    "server.public-bind-addresses": _ids("test_public_ports.py",
                                         "test_a_reload_adds_and_removes_public_ports_and_keeps_the_rest"),
    "server.tunnels[].public-ports": _ids("test_public_ports.py",
                                          "test_a_reload_applies_a_tunnels_public_ports_to_the_next_visitor"),
    "client.services[].alpn": _ids("test_terminate_alpn.py", "test_a_reload_applies_alpn_to_the_next_handshake"),
    "client.services[].visitor-ca-file": _ids("test_visitor_certificates.py",
                                              "test_a_reload_that_adds_the_key_applies_to_the_next_handshake"),
    "client.unhealthy-after": _ids("test_health.py", "test_a_reload_applies_unhealthy_after_and_health_check"),
    "client.services[].health-check": _ids("test_health.py", "test_a_reload_applies_unhealthy_after_and_health_check"),
    "client.services[].health-check.interval": _ids("test_health.py", "test_a_reload_applies_unhealthy_after_and_health_check"),
    "client.services[].health-check.timeout": _ids("test_health.py", "test_a_reload_applies_unhealthy_after_and_health_check"),
    "client.services[].health-check.kind": _ids("test_health.py", "test_a_reload_applies_unhealthy_after_and_health_check"),
    **dict.fromkeys(("server.managed", "server.managed.client-ca-file", "client.managed",
                     "client.managed.cert-file"),
                    _ids("test_managed.py", "test_reloaded_managed_keys_apply_to_new_tunnel_connections")),
    "server.managed.accept-self-signed": _ids("test_managed.py",
                                              "test_self_signed_identities_need_accept_self_signed"),
}


def test_every_reloadable_key_is_covered():
    """A key a reload applies needs a test that shows it; each named test must exist."""
    reloadable = {k.path for k in schema.KEYS if k.reload != schema.RESTART}
    assert sorted(reloadable - set(COVERED)) == [], "add a reload test and a COVERED entry"
    assert sorted(set(COVERED) - reloadable) == [], "COVERED names a key a reload does not apply"
    for path, nodeids in COVERED.items():
        assert nodeids, path
        for nodeid in nodeids:
            file, name = nodeid.removeprefix("tests/").split("::")
            function, _, param = name.partition("[")
            source = (TESTS / file).read_text()
            assert re.search(rf"^def {re.escape(function)}\(", source, re.M), f"{path}: no {nodeid}"
            if param:
                assert param.rstrip("]").split("-", 1)[-1] in source, f"{path}: no {nodeid}"
