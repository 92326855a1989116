"""`runewarp demo`: the whole path on loopback, with real processes and real TLS.

Visitor (this process) → Server → Tunnel connection → Client → Local backend.
The Visitor verifies the *backend's* self-signed certificate: proof that the
Server forwarded the encrypted bytes without terminating TLS.
"""

import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from . import harness, material

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
        backend = harness.Process([sys.executable, "-c", _BACKEND, backend_cert, backend_key],
                                  stdout=subprocess.PIPE, name="backend")
        procs.append(backend)
        backend_port = int(backend.popen.stdout.readline())
        public_port = _free_port()
        server_toml, client_toml = workdir / "server.toml", workdir / "client.toml"
        server_toml.write_text(harness.config_text("server", {
            "hostname": SERVER_HOSTNAME, "public-bind-address": f"127.0.0.1:{public_port}",
            "cert-dir": "server-cert", "graceful-shutdown-duration": 2,
        }, [{"name": "demo", "public-hostnames": [PUBLIC_HOSTNAME], "client-identity": identity}]))
        client_toml.write_text(harness.config_text("client", {
            "server-address": f"{SERVER_HOSTNAME}:{public_port}", "server-trust": "ca-file",
            "server-ca-file": "server-cert/server-ca.crt", "identity-dir": "identity",
        }, [{"public-hostnames": [PUBLIC_HOSTNAME],
             "backend-address": f"127.0.0.1:{backend_port}"}]))
        for path in (server_toml, client_toml):  # what a real deployment would write
            print(f"--- {path}\n{path.read_text().strip()}\n---")
        env = harness.resolve_env(SERVER_HOSTNAME)
        try:
            server, _ = harness.start_server(server_toml, env, timeout=READY_TIMEOUT,
                                             stdout=None)
        except harness.NoMatch:
            print("error: the Server did not start", file=sys.stderr)
            return 1
        procs.append(server)
        try:
            procs.append(harness.start_client(client_toml, env, timeout=READY_TIMEOUT,
                                              stdout=None))
        except harness.NoMatch:
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
                while all(p.popen.poll() is None for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        harness.stop_all(procs, timeout=10)
        if keep:
            print(f"kept the demo folder {workdir}; delete it when done")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed the demo folder {workdir} (runewarp demo --keep keeps it and "
                  "the processes running)")
