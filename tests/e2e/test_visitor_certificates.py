"""Client certificates for Visitors (`visitor-ca-file` on a terminate Service), end to end.

A real Server and Client; the Visitor CA and the Visitor certificates are made by
`runewarp client visitor-ca init` and `client visitor-cert issue`; curl and the stdlib
are the Visitors.  A certificate from the Service's CA gets through, none or one from
another CA fails the handshake (the Client logs why and counts it), a Service without
the key is unaffected, a reload or a new CA file applies to the next handshake, and the
PROXY v2 header tells the Local backend the certificate's CN.
"""

import os
import re
import socket
import ssl
import time
import urllib.request
from types import SimpleNamespace

import pytest

from runewarp import harness
from runewarp.proto import proxyv2

from ..conftest import Proc, free_port, run_cli
from .helpers import TLVBackend, curl, reload_by_signal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
LOCKED = "locked.example.com"  # visitor-ca-file, backend: python -m http.server
OPEN = "open.example.com"  # no visitor-ca-file, backend: echo
TAGGED = "tagged.example.com"  # visitor-ca-file and proxy-protocol v2, backend: TLVBackend
REFUSED = "visitor-certificate-refused"


def issue(ca_dir, name, out):
    printed = run_cli("client", "visitor-cert", "issue", "--name", name, "--dir", ca_dir,
                      "--out-dir", out).stdout.split()
    return printed[0], printed[1]


@pytest.fixture
def sites(deployment, plain_backend, echo_backend):
    """A Server and a Client with the three Services; Visitor certificates alice (the
    Services' CA) and mallory (another CA made the same way)."""
    tlv = TLVBackend()
    d = deployment.dir
    ca = run_cli("client", "visitor-ca", "init", "--dir", d / "visitor-ca").stdout.strip()
    other = run_cli("client", "visitor-ca", "init", "--dir", d / "other").stdout.strip()
    trusted = d / "trusted-ca.pem"  # a copy the tests may rewrite
    trusted.write_bytes(open(ca, "rb").read())
    alice = issue(d / "visitor-ca", "alice", d / "visitors")
    mallory = issue(d / "other", "mallory", d / "visitors")
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [LOCKED, OPEN, TAGGED], [identity])])
    certs = d / "public-cert"
    run_cli("client", "public-cert", "init", "--dir", certs, "--hostname", LOCKED, "--hostname", OPEN,
            "--hostname", TAGGED)
    path = deployment.client_config("client-a", [([LOCKED], plain_backend, "terminate"),
                                                 ([OPEN], echo_backend.address, "terminate"),
                                                 ([TAGGED], tlv.address, "terminate")],
                                    public_cert_dir=certs)
    metrics = free_port()
    text = path.read_text()
    text = text.replace(f'"{plain_backend}"', f'"{plain_backend}"\nvisitor-ca-file = "trusted-ca.pem"', 1)
    text = text.replace(f'"{tlv.address}"', f'"{tlv.address}"\nvisitor-ca-file = "trusted-ca.pem"\n'
                                             'proxy-protocol = "v2"', 1)
    path.write_text(text + f'\n[client.metrics]\nbind-address = "127.0.0.1:{metrics}"\n')
    client = Proc(["client", "-c", path], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for(harness.CLIENT_READY)
    try:
        yield SimpleNamespace(port=deployment.public_port, public_ca=certs / "public-ca.crt", path=path,
                              client=client, alice=alice, mallory=mallory, other_ca=other, trusted=trusted,
                              tlv=tlv, echo=echo_backend.address, metrics=metrics)
    finally:
        tlv.close()


def fetch(sites, hostname, pair=None):
    """curl GET / with the Visitor certificate `pair` (cert, key), if any."""
    extra = ("--cert", pair[0], "--key", pair[1]) if pair else ()
    return curl(sites.port, hostname, sites.public_ca, path="/hello.txt", extra=extra)


def exchange(sites, hostname, pair=None, data=b"ping"):
    """One TLS round trip with the stdlib: the reply to `data`, or the SSLError raised."""
    ctx = ssl.create_default_context(cafile=str(sites.public_ca))
    if pair:
        ctx.load_cert_chain(*pair)
    try:
        with socket.create_connection(("127.0.0.1", sites.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(data)
            return tls.recv(4096)
    except ssl.SSLError as exc:
        return exc


def refused_count(sites, backend):
    with urllib.request.urlopen(f"http://127.0.0.1:{sites.metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    labels = sorted([f'outcome="{REFUSED}"', f'service="{backend}"'])
    found = re.search(rf"runewarp_client_streams_total{{{re.escape(','.join(labels))}}} (\S+)", text)
    assert found, text
    return float(found.group(1))


def test_an_issued_certificate_reaches_the_backend(sites):
    done = fetch(sites, LOCKED, sites.alice)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"plaintext backend\n"


def test_without_a_certificate_the_handshake_fails_and_the_client_says_why(sites):
    done = fetch(sites, LOCKED)
    assert done.returncode in (35, 56), done.stderr  # curl: TLS handshake / receive failure
    assert b"alert certificate required" in done.stderr, done.stderr  # TLS 1.3's alert 116
    sites.client.wait_for(f'stream-rejected public-hostname={LOCKED} reason="{REFUSED}: ')


def test_a_certificate_from_another_ca_fails(sites):
    done = fetch(sites, LOCKED, sites.mallory)
    assert done.returncode in (35, 56), done.stderr
    assert b"alert unknown ca" in done.stderr, done.stderr
    sites.client.wait_for(f'stream-rejected public-hostname={LOCKED} reason="{REFUSED}: ')


def test_a_service_without_the_key_is_unaffected(sites):
    assert exchange(sites, OPEN) == b"ping"
    assert exchange(sites, OPEN, sites.alice) == b"ping"


def test_refusals_are_counted_by_service(sites):
    backend = re.search(r'backend-address = "([^"]+)"\nvisitor-ca-file', sites.path.read_text()).group(1)
    before = refused_count(sites, backend)
    assert isinstance(exchange(sites, LOCKED), ssl.SSLError)
    deadline = time.monotonic() + 10  # counted once the stream is over
    while refused_count(sites, backend) != before + 1:
        assert time.monotonic() < deadline, "the refusal was not counted"
        time.sleep(0.1)


def test_the_proxy_header_carries_the_certificate_and_its_cn(sites):
    assert exchange(sites, TAGGED, sites.alice) == b"read"
    report = sites.tlv.reports.get(timeout=10)
    assert report["authority"] == TAGGED
    assert report["ssl"] == bytes([proxyv2.PP2_CLIENT_SSL | proxyv2.PP2_CLIENT_CERT_CONN]) + bytes(4)
    assert dict(report["ssl-sub"])[proxyv2.PP2_SUBTYPE_SSL_CN] == b"alice"


def test_a_reload_that_adds_the_key_applies_to_the_next_handshake(sites):
    assert exchange(sites, OPEN) == b"ping"
    text = sites.path.read_text()
    sites.path.write_text(text.replace(f'"{sites.echo}"', f'"{sites.echo}"\nvisitor-ca-file = "trusted-ca.pem"',
                                       1))
    reload_by_signal(sites.client, "client-reloaded")
    assert isinstance(exchange(sites, OPEN), ssl.SSLError)
    sites.client.wait_for(f'stream-rejected public-hostname={OPEN} reason="{REFUSED}: ')
    assert exchange(sites, OPEN, sites.alice) == b"ping"


def test_a_new_ca_file_applies_to_the_next_handshake_without_a_reload(sites):
    """The CA file is stamped like the certificate: replacing it (a CA rotation) admits the
    new CA's holders and refuses the old one's at the next handshake."""
    assert fetch(sites, LOCKED, sites.alice).returncode == 0
    staged = sites.trusted.with_suffix(".new")
    staged.write_bytes(open(sites.other_ca, "rb").read())
    os.replace(staged, sites.trusted)
    done = fetch(sites, LOCKED, sites.mallory)
    assert done.returncode == 0, done.stderr
    assert b"alert unknown ca" in fetch(sites, LOCKED, sites.alice).stderr


def test_a_ca_file_gone_at_run_time_fails_closed(sites):
    """A visitor-ca-file removed or broken after the config was loaded refuses every
    Visitor of the Service (never a handshake without the check) and says why."""
    assert fetch(sites, LOCKED, sites.alice).returncode == 0
    sites.trusted.unlink()
    assert fetch(sites, LOCKED, sites.alice).returncode != 0
    sites.client.wait_for(f"visitor-ca-unusable public-hostname={LOCKED} file={sites.trusted} reason=missing")
    sites.trusted.write_text("not a certificate\n")
    assert fetch(sites, LOCKED, sites.alice).returncode != 0
    sites.client.wait_for(f"visitor-ca-unusable public-hostname={LOCKED} file={sites.trusted} reason=")
    assert exchange(sites, OPEN) == b"ping"
