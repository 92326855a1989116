"""Wildcard Public hostnames end to end: real Server and Client processes, curl as the
Visitor, certificates made by `runewarp client public-cert init`."""

import subprocess

import pytest

from ..conftest import Proc, free_port, run_cli
from .helpers import curl
from .test_metrics import metrics_table, value
from . import test_passthrough

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
backends = test_passthrough.backends  # the fixture: TLS backends with our certificates
WILD = "*.example.net"  # not over the Server hostname, tunnel.example.com
EXACT = "x.example.net"


def refused(port, hostname, ca):
    proc = curl(port, hostname, ca)
    return proc.returncode != 0 and not proc.stdout


def test_a_wildcard_tunnel_takes_one_label_and_an_exact_tunnel_wins(deployment, backends):
    wild, exact = backends("wild", [WILD]), backends("exact", [EXACT])
    wild_id, exact_id = deployment.identity("client-wild"), deployment.identity("client-exact")
    metrics_port = free_port()
    server = deployment.start_server([("wild", [WILD], [wild_id]), ("exact", [EXACT], [exact_id])],
                                     extra=metrics_table("server", metrics_port))
    deployment.start_client("client-wild", [([WILD], wild.address)])
    deployment.start_client("client-exact", [([EXACT], exact.address)])
    port = deployment.public_port

    for hostname in ("a.example.net", "b.example.net"):
        proc = curl(port, hostname, wild.ca)
        assert (proc.returncode, proc.stdout) == (0, b"backend=wild\n"), proc.stderr
    proc = curl(port, EXACT, exact.ca)
    assert (proc.returncode, proc.stdout) == (0, b"backend=exact\n"), proc.stderr
    server.wait_for(f"visitor-routed .*public-hostname={EXACT} tunnel=exact")

    for hostname in ("example.net", "b.a.example.net"):  # the * is exactly one label
        assert refused(port, hostname, wild.ca)
        server.wait_for(f"visitor-rejected .*public-hostname={hostname} reason=unknown-hostname")
    # The metrics label is the configured pattern, never a Visitor's name.
    assert value(metrics_port, "runewarp_routed_streams_total", tunnel="wild", hostname=WILD) == 2
    assert value(metrics_port, "runewarp_routed_streams_total", tunnel="exact", hostname=EXACT) == 1
    assert value(metrics_port, "runewarp_routed_streams_total", tunnel="wild", hostname="a.example.net") is None
    assert not server.count("hostname-mirroring-drift")


def test_a_wildcard_terminate_service_serves_its_wildcard_certificate(deployment, backends, plain_backend):
    """One Tunnel for *.example.net; the Client's exact passthrough Service wins over its
    wildcard terminate Service, whose certificate the public-cert init command made."""
    exact = backends("exact", [EXACT])
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [WILD], [identity])])
    public = deployment.dir / "public-cert"
    out = run_cli("client", "public-cert", "init", "--hostname", WILD, "--dir", public).stdout
    assert out.strip() == str(public / "_wildcard.example.net" / "public.crt")
    config = deployment.client_config("client-a", [([WILD], plain_backend, "terminate"),
                                                   ([EXACT], exact.address)], public_cert_dir="public-cert")
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    port, ca = deployment.public_port, public / "public-ca.crt"

    for hostname in ("a.example.net", "b.example.net"):
        proc = curl(port, hostname, ca, path="/hello.txt", extra=["-w", "%{ssl_verify_result}"])
        assert (proc.returncode, proc.stdout) == (0, b"plaintext backend\n0"), proc.stderr
    client.wait_for(f"public-certificate-loaded public-hostname=\\{WILD}")
    assert client.count("public-certificate-loaded") == 1  # one certificate for every name
    shown = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                            "c.example.net", "-CAfile", str(ca), "-verify_return_error"],
                           input=b"", capture_output=True, timeout=30)
    assert b"subject=CN = *.example.net" in shown.stdout, shown.stdout + shown.stderr

    proc = curl(port, EXACT, exact.ca)  # exact wins: passthrough to the TLS backend
    assert (proc.returncode, proc.stdout) == (0, b"backend=exact\n"), proc.stderr
    assert refused(port, "b.a.example.net", ca)
    assert not server.count("hostname-mirroring-drift")  # x.example.net is under the Tunnel's wildcard


def test_doctor_notes_the_overlap_and_probes_names_under_a_wildcard(deployment, backends):
    """`runewarp doctor server`: a wildcard's DNS record is probed under it, and an exact
    name under another Tunnel's wildcard is a note; the Client's doctor sees its wildcard
    mirrored and the passthrough backend's wildcard certificate."""
    from .test_doctor import client_config, doctor, resolving

    wild = backends("wild", [WILD])
    identity = deployment.identity("client-a")
    deployment.start_server([("wild", [WILD], [identity]), ("exact", [EXACT], ["e" * 64])])
    env = resolving("tunnel.example.com", "wildcard-probe.example.net", EXACT)
    status, results = doctor("server", "-c", deployment.dir / "server.toml", env=env)
    assert status == 0, results
    assert results[f"resolve {WILD}"]["detail"].startswith("127.0.0.1 (probed as wildcard-probe.example.net)")
    note = results[f"wildcard-overlap {EXACT}"]
    assert note["status"] == "ok"
    assert note["detail"] == (f"note: {WILD} of Tunnel 'wild' covers {EXACT} too; an exact name wins over "
                              "a wildcard, so Tunnel 'exact' takes it")

    path = client_config(deployment, "client-a", [([WILD], wild.address)])
    status, results = doctor("client", "-c", path, env=env)
    assert results["mirroring 127.0.0.1:" + str(deployment.public_port)]["status"] == "ok", results
    assert results[f"backend-certificate {WILD}"]["status"] == "ok", results
