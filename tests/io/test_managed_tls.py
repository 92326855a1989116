"""The Server's judgment of a Tunnel connection's certificate with [server.managed], over real
TLS (the Server's pyOpenSSL end, the Client's stdlib end) on a loopback pair: each outcome,
the reason the Server records and the alert the Client reads.

Expired and not-yet-valid certificates are made by the issuer with `now` moved (a unit test
cannot wait an hour); tests/e2e/test_managed.py lets a real one expire."""

import datetime

import gevent
import pytest
from OpenSSL import SSL

from runewarp import material
from runewarp.config.model import ManagedServerConfig
from runewarp.io.tlsconn import ClientTLSConnection, ServerTLSConnection
from runewarp.io.tunnel import TunnelSession
from runewarp.material.controlplane import CONTROL_PLANE_CA
from runewarp.material.x509 import _make_client_cert, _now
from runewarp.proto.mux import Role
from runewarp.tls import (certificate_alert, client_tunnel_context, is_unauthorized_alert,
                          server_tunnel_context, tunnel_refusal)

from ..conftest import SERVER_HOSTNAME, run_cli
from .test_splice import _Log, pair

pytestmark = pytest.mark.timeout(60)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("managed")
    run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", root / "server")
    identity = run_cli("client", "identity", "init", "--dir", root / "client").stdout.strip()
    material.init_control_plane_ca(root / "ca")
    material.init_control_plane_ca(root / "other-ca")
    return root, identity


def issued(root, name, ca="ca", **options):
    """A managed certificate for the Client's identity key, written to `name`."""
    key = material.load_certificate(root / "client" / "client.crt").public_key()
    identity = material.client_identity(key)
    path = root / name
    path.write_bytes(material.issue_managed_cert(root / ca, identity, key, **options))
    return path


def attempt(root, cert, managed, listed=True):
    """One handshake: (the Server's Refusal or None, the alert the Client read or None)."""
    server = server_tunnel_context(root / "server" / "server.crt", root / "server" / "server.key",
                                   authorize=lambda identity: listed, managed=managed)
    client = client_tunnel_context(cert, root / "client" / "client.key", "ca-file",
                                   root / "server" / "server-ca.crt")
    near, far = pair()
    client_tls = ClientTLSConnection(near, client, SERVER_HOSTNAME)
    server_tls = ServerTLSConnection(far, server)
    judging = gevent.spawn(server_tls.handshake)
    client_tls.handshake()
    judging.join(5)
    refusal = tunnel_refusal(server, server_tls.conn)
    if judging.successful():
        assert refusal is None
        far.close()
        near.close()
        return None, None
    assert isinstance(judging.exception, SSL.Error)
    session = TunnelSession(client_tls, Role.CLIENT, on_stream=lambda s, st: st.reset(), log=_Log())
    session.start()
    session.open_stream().sendall(b"hello\n")
    assert session.wait(5)
    far.close()
    error = session.read_error
    return refusal, ("bad_certificate" if is_unauthorized_alert(error) else certificate_alert(error))


def managed(root, accept_self_signed=False, ca="ca"):
    return ManagedServerConfig(root / ca / "control-plane-ca.crt", accept_self_signed)


def test_a_current_certificate_from_the_control_plane_ca_is_accepted(made):
    root, _ = made
    assert attempt(root, issued(root, "ok.pem"), managed(root)) == (None, None)


@pytest.mark.parametrize("case, reason, alert", [
    ("expired", "managed-certificate-expired", "expired"),
    ("not-yet-valid", "managed-certificate-not-yet-valid", "bad_certificate"),
    ("other-ca", "not-issued-by-control-plane-ca", "unknown-ca"),
    ("self-signed", "self-signed-not-accepted", "unknown-ca"),
    ("unlisted", "unauthorized-client-identity", "bad_certificate"),
    ("san-mismatch", "managed-identity-mismatch", "bad_certificate"),
])
def test_each_refusal_has_its_reason_and_alert(made, case, reason, alert):
    root, identity = made
    now = _now(None)
    cert = {
        "expired": lambda: issued(root, "expired.pem", ttl=60, now=now - HOUR),
        "not-yet-valid": lambda: issued(root, "future.pem", now=now + HOUR),
        "other-ca": lambda: issued(root, "other.pem", ca="other-ca"),
        "self-signed": lambda: root / "client" / "client.crt",
        "unlisted": lambda: issued(root, "unlisted.pem"),
        "san-mismatch": lambda: _mismatched(root, now),
    }[case]()
    refusal, seen = attempt(root, cert, managed(root), listed=case != "unlisted")
    assert (refusal.reason, refusal.identity, seen) == (reason, identity, alert)
    if case == "expired":
        assert refusal.detail.startswith("expired at ")


def _mismatched(root, now):
    key = material.load_certificate(root / "client" / "client.crt").public_key()
    ca = CONTROL_PLANE_CA.require(root / "ca")
    cert = _make_client_cert(key, now, ca=ca, lifetime=HOUR, uris=("runewarp:identity:" + "a" * 64,))
    path = root / "mismatch.pem"
    path.write_bytes(material.x509._cert_pem(cert))
    return path


def test_accept_self_signed_admits_both_kinds(made):
    root, _ = made
    both = managed(root, accept_self_signed=True)
    assert attempt(root, root / "client" / "client.crt", both) == (None, None)
    assert attempt(root, issued(root, "ok.pem"), both) == (None, None)
    refusal, _ = attempt(root, issued(root, "expired.pem", ttl=60, now=_now(None) - HOUR), both)
    assert refusal.reason == "managed-certificate-expired"  # a managed one is still judged whole


def test_without_managed_an_expired_self_signed_identity_still_connects(tmp_path, made):
    root, _ = made
    old = tmp_path / "old"
    material.init_identity(old, now=_now(None) - datetime.timedelta(days=400))
    (tmp_path / "server").symlink_to(root / "server")
    (tmp_path / "client").symlink_to(old)
    assert attempt(tmp_path, old / "client.crt", None) == (None, None)
