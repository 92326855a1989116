"""ALPN in terminate mode: the Client agrees the Service's `alpn` with the Visitor and the
Local backend (nginx) gets that protocol in plaintext: h2 with prior knowledge (h2c) or
HTTP/1.1.  A Visitor offering none of the list still connects, without ALPN."""

import subprocess
from types import SimpleNamespace

import pytest

from runewarp import harness

from ..conftest import Proc, free_port, run_cli
from .helpers import NGINX, curl, reload_by_signal, wait_listening

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(NGINX is None,
                                 reason="needs nginx")]
H2 = "h2.example.com"  # alpn = ["h2", "http/1.1"], backend: nginx h2c (only h2 Visitors here)
H1 = "h1.example.com"  # alpn omitted (["http/1.1"]), backend: nginx HTTP/1.1
NGINX_SERVERS = """\
    access_log off;
    server {{ listen 127.0.0.1:{h2c} http2; return 200 "backend saw $server_protocol\\n"; }}
    server {{ listen 127.0.0.1:{h1}; return 200 "backend saw $server_protocol\\n"; }}
"""


def start_nginx(folder, processes):
    """nginx in the foreground as one process (stopped by its PID at teardown): the
    h2c and HTTP/1.1 listeners' addresses."""
    folder.mkdir()
    h2c, h1 = free_port(), free_port()
    conf = folder / "nginx.conf"
    conf.write_text(harness.nginx_config(folder, NGINX_SERVERS.format(h2c=h2c, h1=h1),
                                         error_log="stderr"))
    proc = harness.Process([NGINX, "-p", folder, "-c", conf, "-e", "stderr"], name="nginx")
    processes.append(proc)
    wait_listening(proc, [h2c, h1])
    return f"127.0.0.1:{h2c}", f"127.0.0.1:{h1}"


@pytest.fixture
def sites(deployment):
    """A Server and a Client with two terminate Services to nginx: the public port, the
    CA, and for the reload test the Client's config, H1's backend and the Client."""
    h2c, h1 = start_nginx(deployment.dir / "nginx", deployment.processes)
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [H2, H1], [identity])])
    certs = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", H2, "--hostname", H1)
    path = deployment.client_config("client-a", [([H2], h2c, "terminate"), ([H1], h1, "terminate")],
                                    public_cert_dir=certs)
    text = path.read_text().replace(f'"{h2c}"', f'"{h2c}"\nalpn = ["h2", "http/1.1"]', 1)
    path.write_text(text)
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for(harness.CLIENT_READY)
    return SimpleNamespace(port=deployment.public_port, ca=certs / "public-ca.crt", path=path,
                           h1=h1, client=client)


def visit(port, hostname, ca, *flags):
    """curl's (HTTP version, body)."""
    done = curl(port, hostname, ca, extra=("-w", "%{http_version}", *flags))
    assert done.returncode == 0, done.stderr
    body, _, version = done.stdout.decode().rpartition("\n")
    return version, body


def agreed_alpn(port, hostname, ca, offer):
    """What `openssl s_client -alpn OFFER` reports about ALPN once its handshake is done."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", hostname,
         "-CAfile", str(ca), "-verify_return_error", "-alpn", offer],
        input=b"", capture_output=True, timeout=20)
    out = done.stdout.decode()
    # A completed handshake: a cipher agreed and the certificate verified (a refused one
    # prints "Cipher is (NONE)" and still "Verify return code: 0").
    assert "Cipher is (NONE)" not in out and "Verify return code: 0 (ok)" in out, \
        out + done.stderr.decode()
    return next(line for line in out.splitlines() if "ALPN" in line).strip()


def test_curl_http2_reaches_an_h2c_backend_over_http2(sites):
    port, ca = sites.port, sites.ca
    assert visit(port, H2, ca, "--http2") == ("2", "backend saw HTTP/2.0")


def test_the_service_order_wins_over_the_visitors(sites):
    port, ca = sites.port, sites.ca
    assert agreed_alpn(port, H2, ca, "http/1.1,h2") == "ALPN protocol: h2"


def test_curl_http1_still_works_with_the_default_alpn(sites):
    port, ca = sites.port, sites.ca
    assert visit(port, H1, ca, "--http1.1") == ("1.1", "backend saw HTTP/1.1")
    # --http2 offers h2 too; this Service lists only http/1.1, so the Visitor falls back.
    assert visit(port, H1, ca, "--http2") == ("1.1", "backend saw HTTP/1.1")


def test_a_visitor_offering_only_unlisted_protocols_connects_without_alpn(sites):
    port, ca = sites.port, sites.ca
    assert agreed_alpn(port, H2, ca, "foo") == "No ALPN negotiated"


def test_a_reload_applies_alpn_to_the_next_handshake(sites):
    """H1 (default ["http/1.1"]) given alpn = ["h2", "http/1.1"] by SIGHUP: the next
    Visitor offering both gets h2."""
    port, ca = sites.port, sites.ca
    path, h1, client = sites.path, sites.h1, sites.client
    assert agreed_alpn(port, H1, ca, "http/1.1,h2") == "ALPN protocol: http/1.1"
    path.write_text(path.read_text().replace(f'"{h1}"', f'"{h1}"\nalpn = ["h2", "http/1.1"]', 1))
    reload_by_signal(client, "client-reloaded")
    assert agreed_alpn(port, H1, ca, "http/1.1,h2") == "ALPN protocol: h2"
