"""Visitors and backends for the end-to-end tests: real TLS on 127.0.0.1."""

import hashlib
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography import x509

from runewarp.material import public_cert_folder
from runewarp.proto import proxyv2
from tests import clienthellos

from ..conftest import ROOT, SERVER_HOSTNAME, cli_material

ECHO = "echo.example.com"
BACKEND = Path(__file__).resolve().parent.parent / "backend.py"


class Backend:
    """tests/backend.py in its own process, with a certificate made by `runewarp client public-cert`."""

    def __init__(self, tmp_path, name, hostnames, plain=False):
        cert_dir = tmp_path / f"{name}-cert"
        cli_material(cert_dir, "client", "public-cert", "init",
                     *(arg for hostname in hostnames for arg in ("--hostname", hostname)),
                     copy_of=name)
        self.ca = cert_dir / "public-ca.crt"
        folder = cert_dir / public_cert_folder(hostnames[0])
        self.cert, key = folder / "public.crt", folder / "public.key"
        cmd = [sys.executable, str(BACKEND), name, str(self.cert), str(key)]
        if plain:
            cmd.append("plain")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.port = int(self.proc.stdout.readline())
        self.address = f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def curl(port, hostname, ca, path="/", extra=(), timeout=20):
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(ca), "--resolve",
         f"{hostname}:{port}:127.0.0.1", *extra, f"https://{hostname}:{port}{path}"],
        capture_output=True, timeout=timeout + 5)


def tls_visit(port, hostname, ca, request, timeout=30, half_close=False):
    """One HTTPS exchange with the stdlib: (peer certificate DER, response bytes)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(request)
            if half_close:
                socket.socket.shutdown(tls, socket.SHUT_WR)
            chunks = []
            while True:
                try:
                    chunk = tls.recv(1 << 20)
                except ssl.SSLEOFError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
    return der, b"".join(chunks)


def tunnel_handshake(port, ca_file, identity_dir):
    """A Tunnel-ALPN handshake to the Server hostname: the leaf the Server presents."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["runewarp/1"])
    ctx.load_cert_chain(identity_dir / "client.crt", identity_dir / "client.key")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME) as tls:
            assert tls.selected_alpn_protocol() == "runewarp/1"
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def get(path, hostname, close=True):
    return (f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def body_of(response):
    return response.split(b"\r\n\r\n", 1)[1]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def cert_sha256_pem(path):
    first = Path(path).read_text().split("-----END CERTIFICATE-----")[0]
    return sha256(ssl.PEM_cert_to_DER_cert(first + "-----END CERTIFICATE-----\n"))


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TCPBackend:
    """A plain TCP Local backend on a thread per connection; subclasses say what `serve` does."""

    def __init__(self, host="127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        port = self.sock.getsockname()[1]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                self.serve(conn)
            except OSError:
                pass

    def serve(self, conn):
        raise NotImplementedError

    def close(self):
        self.sock.close()


class TLVBackend(TCPBackend):
    """Reads one PROXY v2 header with our decoder and queues what it carried (or the error)."""

    def __init__(self):
        super().__init__()
        self.reports = queue.Queue()

    def serve(self, conn):
        try:
            self.reports.put(self.read_header(conn))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            self.reports.put(exc)
        conn.sendall(b"read")
        # End with FIN, never RST: closing with the Visitor's bytes still unread (they may
        # arrive just after the header) would reset the connection, and "read" with it.
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass

    @staticmethod
    def read_header(conn):
        conn.settimeout(10)
        data = b""
        while (decoded := proxyv2.decode(data)) is None:
            chunk = conn.recv(4096)
            assert chunk, f"closed after {data!r}"
            data += chunk
        header, length = decoded
        address_size = 12 if "." in header.source[0] else 36
        entries = dict(proxyv2.tlvs(data[16 + address_size:length]))
        ssl_value = entries.get(proxyv2.PP2_TYPE_SSL, b"")
        return {
            "source": header.source, "destination": header.destination,
            "authority": entries.get(proxyv2.PP2_TYPE_AUTHORITY, b"").decode(),
            "alpn": entries.get(proxyv2.PP2_TYPE_ALPN, b"").decode(),
            "ssl": ssl_value[:5],
            "ssl-sub": proxyv2.tlvs(ssl_value[5:]),
        }


class EchoBackend(TCPBackend):
    """A passthrough Visitor talks to it byte for byte."""

    def serve(self, conn):
        while data := conn.recv(65536):
            conn.sendall(data)


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def echo_visitor(port, host="127.0.0.1", hostname=ECHO):
    """A passthrough Visitor whose bytes the echo backend returns: the ClientHello first."""
    sock = socket.create_connection((host, port), timeout=10)
    hello = clienthellos.build(hostname)
    sock.sendall(hello)
    assert recv_exactly(sock, len(hello)) == hello
    return sock


def round_trip(sock, payload, timeout):
    sock.settimeout(timeout)
    started = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - started


class NotifySocket:
    """A NOTIFY_SOCKET as systemd provides one: an AF_UNIX datagram socket at `path`."""

    def __init__(self, folder, timeout=20):
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(timeout)

    def recv(self):
        return self.sock.recv(4096)

    def next_message(self, skip_pings=True):
        """The next datagram as a dict (a state may come with STATUS= and MONOTONIC_USEC=);
        watchdog pings are skipped unless `skip_pings` is false."""
        while True:
            data = self.recv()
            if not (skip_pings and data == b"WATCHDOG=1"):
                return dict(line.split("=", 1) for line in data.decode().splitlines() if line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


def closed_by_peer(sock, timeout):
    """Seconds until the peer closed `sock` (FIN or RST); AssertionError after `timeout`."""
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open {timeout}s after the reload") from None
    return time.monotonic() - started


def reload_by_signal(proc, event):
    """SIGHUP `proc` and wait for `event` after it; the log mark from before the signal."""
    mark = len(proc.lines)
    proc.signal(signal.SIGHUP)
    proc.wait_for(event, start=mark)
    return mark


NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")


def wait_listening(proc, ports, timeout=15):
    """Until `proc` listens on every 127.0.0.1 port (read from /proc: a probe connection
    would be a bad PROXY header in the backend's log)."""
    wanted = {f"0100007F:{port:04X}" for port in ports}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.poll() is None:
        rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        if wanted <= {row[1] for row in rows if row[3] == "0A"}:
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} is not listening on {ports}:\n{proc.log()}")
