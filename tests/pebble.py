"""Pebble (a real ACME server, Debian package `pebble`) for the ACME tests.

`pebble_factory` starts `pebble-challtestsrv` (mock DNS answering 127.0.0.1 for
every name) and `pebble` on ephemeral 127.0.0.1 ports.  Pebble validates
tls-alpn-01 by connecting to ``127.0.0.1:<tls_port>``: give the Runewarp Server
that port as its public port.  Pebble's own HTTPS certificate is made here with
`cryptography`; `Pebble.env` carries ``REQUESTS_CA_BUNDLE`` for certbot.
`Pebble.root_path` holds Pebble's issuing root (from its management interface)
for trust checks.  Each fixture use starts a fresh Pebble (it forgets accounts
on restart anyway); teardown kills the processes by PID.
"""

import datetime
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

START_DEADLINE = 20.0


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_udp_tcp_port():
    """A port free for both TCP and UDP (the mock DNS server binds both)."""
    for _ in range(50):
        port = _free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP+UDP port")


def _https_material(folder):
    """Self-signed certificate for Pebble's own listeners: 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test listener")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "pebble-https.crt", folder / "pebble-https.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Pebble:
    """One running Pebble + challtestsrv pair."""

    def __init__(self, folder, tls_port, certificate_validity_period=None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.tls_port = tls_port
        self.port = _free_port()
        self.management_port = _free_port()
        self.dns_port = _free_udp_tcp_port()
        self.challtestsrv_port = _free_port()
        self.https_cert, self.https_key = _https_material(folder)
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self.env = {"REQUESTS_CA_BUNDLE": str(self.https_cert)}
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.https_cert),
            "privateKey": str(self.https_key),
            "httpPort": _free_port(),  # http-01 is never used
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        if certificate_validity_period is not None:
            config["pebble"]["certificateValidityPeriod"] = int(certificate_validity_period)
        self.config_path = folder / "pebble-config.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.processes = []
        self.log_path = folder / "pebble.log"
        self._log = open(self.log_path, "ab")
        self._ssl = ssl.create_default_context(cafile=str(self.https_cert))
        self.root_pem = b""
        self.root_path = folder / "pebble-root.crt"

    def start(self):
        self.processes.append(subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
             "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.challtestsrv_port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT))
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}  # every order really validates
        self.processes.append(subprocess.Popen(
            ["pebble", "-config", str(self.config_path),
             "-dnsserver", f"127.0.0.1:{self.dns_port}", "-strict=false"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=self.folder))
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                self.get(self.directory_url)
                self.root_pem = self.get(f"https://127.0.0.1:{self.management_port}/roots/0")
                break
            except OSError:
                dead = [p for p in self.processes if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Pebble did not start:\n" + self.log()) from None
                time.sleep(0.1)
        self.root_path.write_bytes(self.root_pem)
        return self

    def get(self, url):
        with urllib.request.urlopen(url, context=self._ssl, timeout=5) as response:
            return response.read()

    def root(self):
        return x509.load_pem_x509_certificate(self.root_pem)

    def issued(self, der_or_cert):
        """True when the leaf (DER or `cryptography` certificate) comes from this Pebble.

        Pebble issues from an intermediate; the leaf's issuer is that
        intermediate, whose issuer is the root served at /roots/0.
        """
        cert = (der_or_cert if isinstance(der_or_cert, x509.Certificate)
                else x509.load_der_x509_certificate(der_or_cert))
        intermediate = x509.load_pem_x509_certificate(
            self.get(f"https://127.0.0.1:{self.management_port}/intermediates/0"))
        try:
            cert.verify_directly_issued_by(intermediate)
            intermediate.verify_directly_issued_by(self.root())
        except Exception:  # noqa: BLE001 - any failure means "not ours"
            return False
        return True

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.processes = []
        self._log.close()


def pebble_installed():
    return shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None


@pytest.fixture
def pebble_factory(tmp_path):
    """`start(tls_port, certificate_validity_period=None) -> Pebble`; all stopped at teardown."""
    if not pebble_installed():
        pytest.skip("pebble is not installed (Debian package 'pebble'; .ci/run installs it)")
    started = []

    def start(tls_port, certificate_validity_period=None):
        pebble = Pebble(tmp_path / f"pebble-{len(started)}", tls_port,
                        certificate_validity_period)
        started.append(pebble)
        return pebble.start()

    yield start
    for pebble in started:
        pebble.stop()
