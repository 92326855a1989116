"""material/controlplane.judge, the Server's verdict on a Tunnel certificate, on what the TLS
handshake cannot easily produce: a key nobody can read, a CA above the leaf that expired."""

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from runewarp.config.model import ManagedServerConfig
from runewarp.material.controlplane import judge

from .conftest import run_cli


class _UnreadableKey:
    """A parsed certificate whose key `cryptography` cannot load (an SM2 key, say): the
    verify callback meets it before the peer proves it holds any key."""

    issuer = subject = x509.Name([])

    def public_key(self):
        raise UnsupportedAlgorithm("SM2")


def test_a_certificate_whose_key_cannot_be_read_is_refused_not_raised():
    for managed in (None, ManagedServerConfig("ca.crt", False)):
        verdict, refusal = judge(_UnreadableKey(), None, True, lambda identity: True, managed)
        assert verdict == "reject" and refusal.reason == "tls-error" and refusal.identity is None


def test_an_expired_control_plane_ca_is_told_as_the_ca_not_the_leaf(tmp_path):
    run_cli("ca", "init", "--dir", tmp_path / "ca")
    identity = run_cli("client", "identity", "init", "--dir", tmp_path / "id").stdout.strip()
    (tmp_path / "id.csr").write_text(run_cli("client", "identity", "csr", "--dir", tmp_path / "id").stdout)
    issued = run_cli("ca", "issue", "--dir", tmp_path / "ca", "--identity", identity,
                     "--csr", tmp_path / "id.csr").stdout
    leaf = x509.load_pem_x509_certificate(issued.encode())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "control-plane-ca.crt").read_bytes())
    managed = ManagedServerConfig(tmp_path / "ca" / "control-plane-ca.crt", False)

    verdict, refusal = judge(leaf, "expired", False, lambda identity: True, managed, ca)
    assert verdict == "chain" and refusal.reason == "managed-certificate-expired"
    assert refusal.detail.startswith(f"the control-plane CA certificate {ca.subject.rfc4514_string()} "
                                     f"expired at {ca.not_valid_after_utc.isoformat()}")
    _, at_leaf = judge(leaf, "expired", True, lambda identity: True, managed)
    assert at_leaf.detail == f"expired at {leaf.not_valid_after_utc.isoformat()}"
