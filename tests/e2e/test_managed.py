"""Managed Client authentication end to end: a Server with [server.managed], Clients with
[client.managed] certificates from `runewarp ca issue`, Visitors (curl) through them; a real
certificate expiry, a renewal picked up without a restart, self-signed identities refused
unless accept-self-signed, and reloads of the managed keys (docs/managed.md)."""

import datetime
import os
import socket
import ssl
import time

import pytest
from cryptography import x509

from ..conftest import SERVER_HOSTNAME, Proc, run_cli
from .helpers import curl, reload_by_signal
from .peers import APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
FAST = {"RUNEWARP_RECONNECT_WINDOWS": "0.2,0.5"}


@pytest.fixture
def plane(deployment):
    """Two control-plane CAs and the Client identity "client-a" with its CSR."""
    for ca in ("ca", "ca2"):
        run_cli("ca", "init", "--dir", deployment.dir / ca)
    identity = deployment.identity("client-a")
    csr = deployment.dir / "client-a.csr"
    csr.write_text(run_cli("client", "identity", "csr", "--dir", deployment.dir / "client-a").stdout)
    return identity, csr


def issue(deployment, plane, name, ttl="1h", ca="ca"):
    """`runewarp ca issue` into `name`, replaced by a rename as a control plane would."""
    identity, csr = plane
    pem = run_cli("ca", "issue", "--dir", deployment.dir / ca, "--identity", identity, "--csr", csr,
                  "--ttl", ttl).stdout
    path, partial = deployment.dir / name, deployment.dir / f".{name}.tmp"
    partial.write_text(pem)
    os.replace(partial, path)
    return path, x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def managed_server(deployment, plane, ca="ca", accept_self_signed=False):
    """The Server's config with [server.managed] (written, not started)."""
    flag = "true" if accept_self_signed else "false"
    return deployment.server_config([("apps", [APP], [plane[0]])], extra=f"""
        [server.managed]
        client-ca-file = "{deployment.dir / ca / 'control-plane-ca.crt'}"
        accept-self-signed = {flag}""")


def start_server(deployment, config):
    proc = Proc(["server", "-c", config], env=deployment.env)
    deployment.processes.append(proc)
    deployment.public_port = int(proc.wait_for(r"server-ready .*public-bind-address=127\.0\.0\.1:(\d+)")
                                 .group(1))
    return proc


def client_config(deployment, backend, cert_file=None):
    path = deployment.client_config("client-a", [([APP], backend.address)])
    if cert_file is not None:
        with path.open("a") as f:
            f.write(f'\n[client.managed]\ncert-file = "{cert_file}"\n')
    return path


def start_client(deployment, config, wait=True):
    proc = Proc(["client", "-c", config], env={**deployment.env, **FAST})
    deployment.processes.append(proc)
    if wait:
        proc.wait_for("tunnel-connection-established")
    return proc


def visit(deployment, backend):
    proc = curl(deployment.public_port, APP, backend.ca)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"backend=app\n"


def test_an_expired_certificate_is_refused_and_a_renewed_file_reconnects(deployment, plane, backend):
    server = start_server(deployment, managed_server(deployment, plane))
    cert_file, _ = issue(deployment, plane, "managed.crt")
    config = client_config(deployment, backend, cert_file)
    client = start_client(deployment, config)
    visit(deployment, backend)
    client.stop()

    # Offline for longer than its certificate lives: it has expired when the Client returns.
    _, not_after = issue(deployment, plane, "managed.crt", ttl="1s")
    while datetime.datetime.now(datetime.UTC) <= not_after + datetime.timedelta(seconds=1):
        time.sleep(0.2)
    mark = len(server.lines)
    client = start_client(deployment, config, wait=False)
    client.wait_for("managed-certificate-expired .*dialing anyway")
    line = client.wait_for("tunnel-connection-certificate-refused .*alert=expired").group(0)
    assert "the Server refused the managed certificate: expired at" in client.log()
    assert "waiting for a renewed cert-file" in client.log(), line
    server.wait_for("tunnel-connection-refused .*reason=managed-certificate-expired "
                    ".*detail=\"?expired at", start=mark)

    issue(deployment, plane, "managed.crt")  # the control plane renews: no restart, no signal
    client.wait_for("tunnel-connection-established", timeout=30)
    visit(deployment, backend)


def test_self_signed_identities_need_accept_self_signed(deployment, plane, backend):
    config = managed_server(deployment, plane)
    server = start_server(deployment, config)
    client = start_client(deployment, client_config(deployment, backend), wait=False)
    client.wait_for("tunnel-connection-certificate-refused .*alert=unknown-ca")
    assert "admits only certificates from its control-plane CA" in client.log()
    server.wait_for("tunnel-connection-refused .*reason=self-signed-not-accepted")

    # Migration: both kinds, once the operator says so; the waiting Client gets in by itself.
    config.write_text(config.read_text().replace("accept-self-signed = false", "accept-self-signed = true"))
    reload_by_signal(server, "server-reloaded")
    client.wait_for("tunnel-connection-established", timeout=30)
    visit(deployment, backend)


def test_reloaded_managed_keys_apply_to_new_tunnel_connections(deployment, plane, backend):
    server_config = managed_server(deployment, plane)
    server = start_server(deployment, server_config)
    other, _ = issue(deployment, plane, "from-ca2.crt", ca="ca2")
    ours, _ = issue(deployment, plane, "from-ca.crt")
    config = client_config(deployment, backend, other)
    client = start_client(deployment, config, wait=False)
    client.wait_for("tunnel-connection-certificate-refused .*alert=unknown-ca")
    assert "not issued by the control-plane CA it trusts" in client.log()
    server.wait_for("tunnel-connection-refused .*reason=not-issued-by-control-plane-ca")

    config.write_text(config.read_text().replace(str(other), str(ours)))  # client.managed.cert-file
    reload_by_signal(client, "client-reloaded")
    client.wait_for("tunnel-connection-established", timeout=30)
    visit(deployment, backend)

    # The Server now trusts only ca2: the established connection stays (judged at its
    # handshake), a new one with the ca certificate is refused.
    server_config.write_text(server_config.read_text().replace("/ca/control-plane-ca.crt",
                                                               "/ca2/control-plane-ca.crt"))
    reload_by_signal(server, "server-reloaded")
    visit(deployment, backend)
    assert handshake_alert(deployment, ours) == "TLSV1_ALERT_UNKNOWN_CA"
    assert handshake_alert(deployment, other) is None


def handshake_alert(deployment, cert_file):
    """A Tunnel handshake presenting `cert_file` with the identity key: the alert the Server
    refused it with, None when it waits for the control hello (accepted)."""
    ctx = ssl.create_default_context(cafile=str(deployment.ca_file))
    ctx.set_alpn_protocols(["runewarp/1"])
    ctx.load_cert_chain(cert_file, deployment.dir / "client-a" / "client.key")
    with socket.create_connection(("127.0.0.1", deployment.public_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME) as tls:
            tls.settimeout(2)
            try:
                tls.recv(1)
            except ssl.SSLError as exc:
                return exc.reason
            except TimeoutError:
                return None
    raise AssertionError("the Server closed the accepted connection at once")


def test_a_rotated_ca_file_applies_to_the_next_handshake_and_established_ones_stay(
        deployment, plane, backend):
    trusted = deployment.dir / "trusted-ca.crt"
    trusted.write_bytes((deployment.dir / "ca" / "control-plane-ca.crt").read_bytes())
    config = managed_server(deployment, plane)
    config.write_text(config.read_text().replace(str(deployment.dir / "ca" / "control-plane-ca.crt"),
                                                 str(trusted)))
    start_server(deployment, config)
    ours, _ = issue(deployment, plane, "from-ca.crt")
    other, _ = issue(deployment, plane, "from-ca2.crt", ca="ca2")
    start_client(deployment, client_config(deployment, backend, ours))
    assert handshake_alert(deployment, other) == "TLSV1_ALERT_UNKNOWN_CA"

    # The control plane rotates the CA file in place: no reload, no restart.
    partial = deployment.dir / ".trusted-ca.tmp"
    partial.write_bytes((deployment.dir / "ca2" / "control-plane-ca.crt").read_bytes())
    os.replace(partial, trusted)
    assert handshake_alert(deployment, ours) == "TLSV1_ALERT_UNKNOWN_CA"
    assert handshake_alert(deployment, other) is None
    visit(deployment, backend)  # the established Tunnel connection was judged at its handshake
