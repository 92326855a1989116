"""Zero-downtime trust rotation with real processes: one Client instance, Visitors through
Server → Client → TLS backend the whole time, and not one of them may fail.

(a) Client identity: stage, list it on the Server, drop the old one, commit.
(b) Server CA: stage, publish the bundle to the Client, commit; new handshakes show the
    new issuer.
(c) --abort of either leaves the running state as it was.
Bad steps (--commit with nothing staged, --stage twice) are in tests/test_material_staging.py.
"""

import contextlib
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from cryptography import x509

from runewarp import material

from ..conftest import SERVER_HOSTNAME, Proc, free_port, run_cli
from .helpers import body_of, get, tls_visit
from .peers import APP
from .test_handover import Load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class Visitor:
    """One Visitor through Server → Client → TLS backend, its body checked, then a pause:
    test_handover.Load's three threads make about 20 Visitors a second."""

    def __init__(self, port, ca, pause=0.15):
        self.port, self.ca, self.pause = port, ca, pause

    def visit(self):
        _, response = tls_visit(self.port, APP, self.ca, get("/", APP), timeout=10)
        assert body_of(response) == b"backend=app\n", response[:200]
        time.sleep(self.pause)


@contextlib.contextmanager
def under_load(node):
    """Visitors the whole time; on a clean exit: none failed, and the Client never was
    without an established Tunnel connection."""
    load = Load(Visitor(node.deployment.public_port, node.backend.ca))
    try:
        time.sleep(1)
        yield load
        time.sleep(1)
    finally:
        load.stop()
        node.stop_watching()
    assert load.failures == [], load.failures[:5]
    assert load.served >= 40, load.served
    assert node.gaps == [], node.gaps[:5]


class Rotation:
    """One Server and one Client (watch-config on, both with a status listener)."""

    def __init__(self, deployment, backend, identities=None):
        self.deployment, self.backend = deployment, backend
        self.identity = deployment.identity("client-a")
        self.server_metrics, self.client_metrics = free_port(), free_port()
        self.identities = identities or [self.identity]
        self.server = deployment.start_server(
            [("apps", [APP], self.identities)],
            extra=f'[server.metrics]\nbind-address = "127.0.0.1:{self.server_metrics}"')
        path = deployment.client_config("client-a", [([APP], backend.address)])
        text = path.read_text().replace("[client]\n", "[client]\nwatch-config = true\n", 1)
        path.write_text(text + f'\n[client.metrics]\nbind-address = '
                               f'"127.0.0.1:{self.client_metrics}"\n')
        self.client_path = path
        env = dict(deployment.env, RUNEWARP_RECONNECT_WINDOWS="0.2,0.4")
        self.client = Proc(["client", "-c", path], env=env)
        deployment.processes.append(self.client)
        self.client.wait_for("tunnel-connection-established")
        self.identity_dir = deployment.dir / "client-a"
        self.gaps = []
        self._watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch_gaps, daemon=True)
        self._watcher.start()

    def status(self, role):
        port = self.server_metrics if role == "server" else self.client_metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            return json.load(reply)

    def established(self):
        return [s for s in self.status("client")["servers"] if s["state"] == "established"]

    def _watch_gaps(self):
        """Every 50 ms: the Client must hold at least one established Tunnel connection."""
        while not self._watching.wait(0.05):
            try:
                if not self.established():
                    self.gaps.append(time.monotonic())
            except OSError as exc:
                self.gaps.append(repr(exc))

    def stop_watching(self):
        self._watching.set()
        self._watcher.join(5)

    def server_reload(self, identities):
        self.deployment.server_config([("apps", [APP], identities)], extra=(
            f'[server.metrics]\nbind-address = "127.0.0.1:{self.server_metrics}"'))
        mark = len(self.server.lines)
        self.server.signal(signal.SIGHUP)
        self.server.wait_for("server-reloaded", start=mark)

    def members(self):
        return sorted(m["client_identity"] for m in self.status("server")["tunnels"][0]["members"])

    def cli(self, *args, check=True):
        return run_cli(*args, check=check, env=self.deployment.env)


def wait_until(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_identity_rotation_under_load_has_no_failed_visitor_and_no_gap(deployment, backend):
    node = Rotation(deployment, backend)
    old = node.identity
    with under_load(node):
        new = node.cli("client", "identity", "rotate", "--stage", "--dir",
                       node.identity_dir).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", new) and new != old
        # The running Client follows the staged slot by itself (watch-config) and is refused.
        node.client.wait_for(f"client-identity-staged client-identity={new}")
        refused = node.client.wait_for("tunnel-connection-staged-refused")
        assert refused.group(0)
        line = next(x for x in node.client.lines if "tunnel-connection-staged-refused" in x)
        assert " INFO  tunnel-connection-staged-refused" in line, line  # not an error
        assert "expected while staged" in line, line
        assert not node.client.count("tunnel-connection-unauthorized")
        assert node.members() == [old]
        # The operator lists the new identity: the staged connection is accepted and the
        # old one is replaced (go away, drained).
        node.server_reload([old, new])
        node.client.wait_for(f"client-identity-staged-accepted .*client-identity={new}")
        node.client.wait_for("tunnel-connection-replaced")
        wait_until(lambda: node.members() == [new, new], what="members on the new identity")
        # The old identity goes: nothing of the Client used it any more.
        node.server_reload([new])
        time.sleep(1)
        assert node.members() == [new, new]
        node.cli("client", "identity", "rotate", "--commit", "--dir", node.identity_dir)
        node.client.wait_for("client-reloaded")
        wait_until(lambda: node.members() == [new], what="the staged connection drained")
        assert material.show_identity(node.identity_dir) == new
        assert not (node.identity_dir / "next").exists()
    assert all(s["client_identity"] == new for s in node.established())
    assert not node.client.count("tunnel-connection-lost")


def handshake_leaf(port, ca):
    """The certificate a new Tunnel handshake shows (openssl s_client), verified against `ca`."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_HOSTNAME,
         "-alpn", "runewarp/1", "-CAfile", str(ca), "-verify_return_error"],
        input=b"", capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in text, text[-2000:]
    pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", text, re.S)
    return x509.load_pem_x509_certificate(pem.group(0).encode())


def test_server_ca_rotation_under_load_has_no_failed_visitor(deployment, backend):
    node = Rotation(deployment, backend)
    cert_dir = deployment.cert_dir
    old_ca = material.load_certificate(cert_dir / "server-ca.crt")
    with under_load(node):
        bundle = node.cli("server", "cert", "rotate-ca", "--stage", "--dir",
                          cert_dir).stdout.strip()
        assert bundle == str(cert_dir / "server-ca-bundle.crt")
        next_ca = material.load_certificate(cert_dir / "next" / "server-ca.crt")
        handshake_leaf(deployment.public_port, cert_dir / "server-ca.crt").verify_directly_issued_by(
            old_ca)  # staged only: new handshakes still get the current leaf
        # Publish the bundle as the Client's server-ca-file (watch-config reloads it).
        mark = len(node.client.lines)
        text = node.client_path.read_text()
        node.client_path.write_text(text.replace('"server-cert/server-ca.crt"', f'"{bundle}"'))
        node.client.wait_for("client-reloaded", start=mark)
        doctor = node.cli("doctor", "client", "-c", node.client_path, check=False)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert f"only {bundle} (2 CAs: " in doctor.stdout, doctor.stdout
        node.cli("server", "cert", "rotate-ca", "--commit", "--dir", cert_dir)
        handshake_leaf(deployment.public_port, bundle).verify_directly_issued_by(next_ca)
        # The Client dials one more Tunnel connection: it verifies the new leaf by the bundle.
        mark = len(node.client.lines)
        text = node.client_path.read_text()
        node.client_path.write_text(text.replace("[client]\n", "[client]\nconnections-per-server = 2\n", 1))
        node.client.wait_for("tunnel-connection-established .*connection=1", start=mark)
        wait_until(lambda: len(node.established()) == 2, what="two Tunnel connections")
    assert not node.client.count("CERTIFICATE_VERIFY_FAILED|tunnel-connection-failed")


def test_abort_of_either_rotation_leaves_the_running_state_unchanged(deployment, backend):
    node = Rotation(deployment, backend)
    cert_dir = deployment.cert_dir
    leaf = (cert_dir / "server.crt").read_bytes()
    before = node.established()
    with under_load(node):
        node.cli("client", "identity", "rotate", "--stage", "--dir", node.identity_dir)
        node.client.wait_for("tunnel-connection-staged-refused")
        node.cli("server", "cert", "rotate-ca", "--stage", "--dir", cert_dir)
        mark = len(node.client.lines)
        assert node.cli("client", "identity", "rotate", "--abort", "--dir",
                        node.identity_dir).stdout.strip() == node.identity
        node.cli("server", "cert", "rotate-ca", "--abort", "--dir", cert_dir)
        node.client.wait_for("client-reloaded", start=mark)
        time.sleep(1.5)  # past a retry of the staged worker, had it survived
        tried = node.client.count("tunnel-connection-staged-refused")
        time.sleep(1.5)
        assert node.client.count("tunnel-connection-staged-refused") == tried
        handshake_leaf(deployment.public_port, cert_dir / "server-ca.crt")
    assert (cert_dir / "server.crt").read_bytes() == leaf
    assert material.show_identity(node.identity_dir) == node.identity
    assert node.members() == [node.identity]
    after = node.established()
    assert [(s["connected_since"], s["client_identity"]) for s in after] == \
        [(s["connected_since"], s["client_identity"]) for s in before]
    assert not node.client.count("tunnel-connection-(lost|replaced|draining)")
