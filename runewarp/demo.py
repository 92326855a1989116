"""`runewarp demo`: the whole path on loopback, with real processes and real TLS.

Visitor (this process) → Server → Tunnel connection → Client → Local backend.
The Visitor verifies the *backend's* self-signed certificate: proof that the
Server forwarded the encrypted bytes without terminating TLS.
"""

import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from . import material

PUBLIC_HOSTNAME = "app.example.com"
SERVER_HOSTNAME = "tunnel.example.com"
READY_TIMEOUT = 20.0

_BACKEND = textwrap.dedent("""
    import http.server, ssl, sys
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the Local backend\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
""")


def _runewarp(*args):
    return [sys.executable, "-m", "runewarp", *args]


class _Stderr:
    """Reads a child's stderr in the background, so a silent child cannot hang the demo
    and a chatty one (with --keep) never blocks on a full pipe."""

    def __init__(self, proc):
        self.lines = queue.Queue()
        self.waiting = True
        threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True).start()

    def _drain(self, pipe):
        for line in pipe:
            if self.waiting:
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern, timeout=READY_TIMEOUT):
        """The first match of `pattern` in a line, or None at EOF or after `timeout` s."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        try:
            while True:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
                if line is None:
                    return None
                match = regex.search(line)
                if match:
                    return match
        except queue.Empty:
            return None
        finally:
            self.waiting = False


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _visit(port, backend_cert):
    ctx = ssl.create_default_context(cafile=str(backend_cert))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=PUBLIC_HOSTNAME) as tls:
            handshake = time.monotonic() - started
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {PUBLIC_HOSTNAME}\r\n"
                        "Connection: close\r\n\r\n".encode())
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    return der, response, handshake, time.monotonic() - started


def demo(keep=False):
    workdir = Path(tempfile.mkdtemp(prefix="runewarp-demo-"))
    procs = []
    try:
        print(f"demo folder: {workdir}")
        server_dir = workdir / "server-cert"
        material.init_server_cert(server_dir, SERVER_HOSTNAME)
        identity = material.init_identity(workdir / "identity").identity
        backend_cert, backend_key = material.make_self_signed(PUBLIC_HOSTNAME,
                                                              workdir / "backend")
        backend = subprocess.Popen([sys.executable, "-c", _BACKEND, str(backend_cert),
                                    str(backend_key)], stdout=subprocess.PIPE, text=True)
        procs.append(backend)
        backend_port = int(backend.stdout.readline())
        public_port = _free_port()
        (workdir / "server.toml").write_text(textwrap.dedent(f"""
            [server]
            hostname = "{SERVER_HOSTNAME}"
            public-bind-address = "127.0.0.1:{public_port}"
            cert-dir = "server-cert"
            graceful-shutdown-duration = 2
            [[server.tunnels]]
            name = "demo"
            public-hostnames = ["{PUBLIC_HOSTNAME}"]
            client-identity = "{identity}"
        """))
        (workdir / "client.toml").write_text(textwrap.dedent(f"""
            [client]
            server-address = "{SERVER_HOSTNAME}:{public_port}"
            server-trust = "ca-file"
            server-ca-file = "server-cert/server-ca.crt"
            identity-dir = "identity"
            [[client.services]]
            public-hostnames = ["{PUBLIC_HOSTNAME}"]
            backend-address = "127.0.0.1:{backend_port}"
        """))
        for name in ("server.toml", "client.toml"):  # what a real deployment would write
            print(f"--- {workdir / name}\n{(workdir / name).read_text().strip()}\n---")
        env = dict(os.environ, RUNEWARP_RESOLVE=f"{SERVER_HOSTNAME}=127.0.0.1")
        server = subprocess.Popen(_runewarp("server", "-c", str(workdir / "server.toml")),
                                  stderr=subprocess.PIPE, text=True, env=env)
        procs.append(server)
        if not _Stderr(server).wait_for(r"server-ready"):
            print("error: the Server did not start", file=sys.stderr)
            return 1
        client = subprocess.Popen(_runewarp("client", "-c", str(workdir / "client.toml")),
                                  stderr=subprocess.PIPE, text=True, env=env)
        procs.append(client)
        if not _Stderr(client).wait_for(r"tunnel-connection-established"):
            print("error: the Client did not connect", file=sys.stderr)
            return 1
        print(f"Server   127.0.0.1:{public_port}  (Server hostname {SERVER_HOSTNAME})")
        print(f"Client   identity {identity}")
        print(f"Backend  127.0.0.1:{backend_port}  (self-signed for {PUBLIC_HOSTNAME})")
        der, response, handshake, total = _visit(public_port, backend_cert)
        seen = hashlib.sha256(der).hexdigest()
        expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(backend_cert.read_text())).hexdigest()
        status = response.split(b"\r\n", 1)[0].decode(errors="replace")
        body = response.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        print(f"Visitor  https://{PUBLIC_HOSTNAME} → {status!r}, body {body!r}")
        verdict = ("the backend certificate: TLS passed through" if seen == expected
                   else "NOT the backend certificate")
        print(f"         certificate sha256 {seen[:32]}… ({verdict})")
        print(f"         TLS handshake {handshake * 1000:.1f} ms, request {total * 1000:.1f} ms")
        if seen != expected or not status.endswith("200 OK"):
            return 1
        if keep:
            print(f"\nRunning. Try:\n  curl --cacert {backend_cert} --resolve "
                  f"{PUBLIC_HOSTNAME}:{public_port}:127.0.0.1 https://{PUBLIC_HOSTNAME}:{public_port}/"
                  "\nPress Ctrl-C to stop.")
            try:
                while all(p.poll() is None for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if keep:
            print(f"kept the demo folder {workdir}; delete it when done")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed the demo folder {workdir} (runewarp demo --keep keeps it and "
                  "the processes running)")
