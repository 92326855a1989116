"""Trust material lifecycle and terminate mode, end to end with material from our own CLI."""

import datetime
import shutil
import signal
import subprocess

import pytest

from runewarp import material

from ..conftest import ROOT, SERVER_HOSTNAME, Proc, run_cli
from .helpers import Backend, cert_sha256_pem, curl, get, sha256, tls_visit, tunnel_handshake

pytestmark = pytest.mark.e2e
APP, API, NOCERT = "app.example.com", "api.example.com", "nocert.example.com"


@pytest.fixture
def tls_backend(tmp_path):
    backend = Backend(tmp_path, "api", [API])
    yield backend
    backend.stop()


def test_terminate_and_passthrough_side_by_side(deployment, plain_backend, tls_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP, API, NOCERT], [identity])])
    config = deployment.client_config("client-a", [
        ([APP], plain_backend, "terminate"),
        ([API], tls_backend.address),
        ([NOCERT], plain_backend, "terminate"),
    ], public_cert_dir="public-cert")
    # Without --hostname the set comes from the config's terminate Services.
    made = run_cli("client", "public-cert", "init", "-c", config).stdout
    assert APP in made and NOCERT in made
    shutil.rmtree(deployment.dir / "public-cert" / NOCERT)
    ca = deployment.dir / "public-cert" / "public-ca.crt"
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    port = deployment.public_port

    proc = curl(port, APP, ca, path="/hello.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"plaintext backend\n"
    der, _ = tls_visit(port, APP, ca, get("/hello.txt", APP))
    assert sha256(der) == cert_sha256_pem(deployment.dir / "public-cert" / APP / "public.crt")

    failed = curl(port, NOCERT, ca, path="/hello.txt")
    assert failed.returncode == 35, failed.stderr  # curl: TLS handshake failure
    client.wait_for(f"stream-rejected public-hostname={NOCERT} reason=\"?visitor-handshake-failed")
    assert curl(port, API, tls_backend.ca).stdout == b"backend=api\n"
    assert curl(port, APP, ca, path="/hello.txt").stdout == b"plaintext backend\n"


def test_renewed_public_certificate_is_served_without_restart(deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    config = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                      public_cert_dir="public-cert")
    run_cli("client", "public-cert", "init", "--hostname", APP, "-c", config)
    ca = deployment.dir / "public-cert" / "public-ca.crt"
    leaf = deployment.dir / "public-cert" / APP / "public.crt"
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    first, _ = tls_visit(deployment.public_port, APP, ca, get("/hello.txt", APP))
    run_cli("client", "public-cert", "renew", "-c", config)
    second, _ = tls_visit(deployment.public_port, APP, ca, get("/hello.txt", APP))
    assert first != second
    assert sha256(second) == cert_sha256_pem(leaf)


def test_identity_renew_keeps_and_rotate_changes_the_identity(deployment, tls_backend):
    identity = deployment.identity("client-a")
    text = (deployment.dir / "client-a" / "client-identity.txt").read_bytes()
    assert run_cli("client", "identity", "renew", "--dir",
                   deployment.dir / "client-a").stdout.strip() == identity
    assert (deployment.dir / "client-a" / "client-identity.txt").read_bytes() == text
    server = deployment.start_server([("apps", [API], [identity])])
    port = deployment.public_port
    client = deployment.start_client("client-a", [([API], tls_backend.address)])
    client.stop()

    rotated = run_cli("client", "identity", "rotate", "--dir", deployment.dir / "client-a")
    new_identity = rotated.stdout.strip()
    assert new_identity != identity and "Tunnel" in rotated.stderr
    refused = deployment.start_client("client-a", [([API], tls_backend.address)], wait=False)
    refused.wait_for(f"unauthorized client identity {new_identity}")
    refused.kill()

    text = deployment.server_config([("apps", [API], [new_identity])]).read_text()
    (deployment.dir / "server.toml").write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    server.signal(signal.SIGHUP)
    server.wait_for("server-reloaded")
    deployment.start_client("client-a", [([API], tls_backend.address)])
    assert curl(port, API, tls_backend.ca).stdout == b"backend=api\n"


def test_server_ca_rotation_needs_the_new_ca_on_the_client(deployment, tls_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [API], [identity])])
    client_ca = deployment.dir / "client-ca.crt"
    shutil.copy(deployment.ca_file, client_ca)
    config = deployment.client_config("client-a", [([API], tls_backend.address)])
    config.write_text(config.read_text().replace("server-cert/server-ca.crt", "client-ca.crt"))
    first = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(first)
    first.wait_for("tunnel-connection-established")
    first.stop()

    rotated = run_cli("server", "cert", "rotate-ca", "--dir", deployment.cert_dir)
    assert "server-ca.crt" in rotated.stderr
    stale = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(stale)
    stale.wait_for("tunnel-connection-failed .*CERTIFICATE_VERIFY_FAILED")
    stale.kill()

    shutil.copy(deployment.ca_file, client_ca)
    fresh = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(fresh)
    fresh.wait_for("tunnel-connection-established")
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


def test_server_serves_a_renewed_certificate_without_restart(deployment, tls_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [API], [identity])])
    before = tunnel_handshake(deployment.public_port, deployment.ca_file,
                              deployment.dir / "client-a").serial_number
    run_cli("server", "cert", "renew", "--dir", deployment.cert_dir)
    renewed = material.certificate_serial(deployment.cert_dir / "server.crt")
    after = tunnel_handshake(deployment.public_port, deployment.ca_file,
                             deployment.dir / "client-a").serial_number
    assert before != after == renewed


def test_old_identity_certificate_is_renewed_before_connecting(deployment, tls_backend):
    identity_dir = deployment.dir / "client-a"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=70)
    identity = material.init_identity(identity_dir, now=past).identity
    assert material.identity_needs_renewal(identity_dir)
    deployment.start_server([("apps", [API], [identity])])
    client = deployment.start_client("client-a", [([API], tls_backend.address)])
    client.wait_for(f"client-identity-renewed client-identity={identity}")
    assert not material.identity_needs_renewal(identity_dir)
    assert material.show_identity(identity_dir) == identity
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


def test_expired_identity_certificate_is_renewed_too(deployment, tls_backend):
    identity_dir = deployment.dir / "client-a"
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=120)
    identity = material.init_identity(identity_dir, now=past).identity
    deployment.start_server([("apps", [API], [identity])])
    deployment.start_client("client-a", [([API], tls_backend.address)])
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


def test_public_cert_commands_print_paths_and_reuse_the_ca(tmp_path):
    folder = tmp_path / "public"
    first = run_cli("client", "public-cert", "init", "--hostname", APP, "--dir", folder)
    ca_bytes = (folder / "public-ca.crt").read_bytes()
    second = run_cli("client", "public-cert", "init", "--hostname", API, "--dir", folder)
    assert (folder / "public-ca.crt").read_bytes() == ca_bytes
    assert APP in first.stdout and API in second.stdout
    run_cli("client", "public-cert", "rotate-ca", "--dir", folder)
    assert (folder / "public-ca.crt").read_bytes() != ca_bytes
    for host in (APP, API):
        verify = subprocess.run(["openssl", "verify", "-CAfile", folder / "public-ca.crt",
                                 folder / host / "public.crt"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    missing = run_cli("client", "public-cert", "init", "--dir", folder, check=False)
    assert missing.returncode == 2 and "--hostname" in missing.stderr


def test_identity_show_prints_only_the_identity(tmp_path):
    assert run_cli("client", "identity", "show", "--dir", tmp_path / "none",
                   check=False).returncode != 0
    identity = run_cli("client", "identity", "init", "--dir", tmp_path / "id").stdout.strip()
    shown = run_cli("client", "identity", "show", "--dir", tmp_path / "id")
    assert shown.stdout == identity + "\n"
    again = run_cli("client", "identity", "init", "--dir", tmp_path / "id")
    assert again.stdout.strip() == identity and "already" in again.stderr


def test_server_cert_init_is_idempotent_and_takes_hostname_from_config(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhostname = "{SERVER_HOSTNAME}"\ncert-dir = "cert"\n')
    run_cli("server", "cert", "init", "-c", config)
    key = (tmp_path / "cert" / "server.key").read_bytes()
    again = run_cli("server", "cert", "init", "-c", config)
    assert "already complete" in again.stderr
    assert (tmp_path / "cert" / "server.key").read_bytes() == key
    verify = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "cert" / "server-ca.crt",
                             "-verify_hostname", SERVER_HOSTNAME, tmp_path / "cert" / "server.crt"],
                            capture_output=True, text=True, cwd=ROOT)
    assert verify.returncode == 0, verify.stderr
