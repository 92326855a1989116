"""The Tunnel connection's TLS as a real peer sees it (openssl s_client as the Client, with a
Client identity from our CLI): TLS 1.3 only, every TLS 1.3 suite agreed with a Client that
offers only that one, and OpenSSL's default (AES-256-GCM) otherwise: AES-128-GCM by the
Server's preference did not win its A/B (docs/performance.md, "The Tunnel cipher")."""

import re
import subprocess

import pytest

from ..conftest import SERVER_HOSTNAME

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]
APP = "app.example.com"


@pytest.fixture
def server(deployment):
    identity = deployment.identity("alice")
    deployment.start_server([("t", [APP], [identity])])
    return deployment


def s_client(deployment, *options):
    """The protocol and suite `openssl s_client` agreed with the Server, or (None, output)."""
    folder = deployment.dir / "alice"
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{deployment.public_port}",
         "-servername", SERVER_HOSTNAME, "-alpn", "runewarp/1", "-CAfile", str(deployment.ca_file),
         "-cert", str(folder / "client.crt"), "-key", str(folder / "client.key"),
         "-verify_return_error", *options],
        input=b"", capture_output=True, timeout=20)
    text = out.stdout.decode(errors="replace")
    agreed = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", text)
    return (agreed.group(1), agreed.group(2)) if agreed else (None, text[-1500:])


def test_a_default_client_agrees_tls_1_3_with_aes_256_gcm(server):
    assert s_client(server) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_a_client_offering_one_suite_agrees_it(server, suite):
    assert s_client(server, "-ciphersuites", suite) == ("TLSv1.3", suite)


def test_tls_1_2_is_refused(server):
    protocol, output = s_client(server, "-tls1_2")
    assert protocol is None, output
