"""PROXY protocol to Local backends, read by real consumers: nginx and HAProxy.

One Server and one Client with a Service per (consumer, TLS mode, version): nginx
(`listen … ssl proxy_protocol` behind passthrough, plain `listen … proxy_protocol` behind
terminate) and HAProxy (`accept-proxy`, with `ssl crt` behind passthrough).  curl is the
Visitor and connects from 127.0.0.2, so the address a backend logs can only be the one
the Server saw, never the Client's own (127.0.0.1).  HAProxy also logs the v2 authority
TLV (nginx 1.22 has no TLV variables).  A Python backend decodes the terminate header
with our decoder to check the ALPN and SSL TLVs against what the Visitor negotiated.
"""

import json
import os
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from runewarp import harness

from ..conftest import SERVER_HOSTNAME, Deployment, cli_material, free_port, run_cli
from .helpers import NGINX, TLVBackend, curl, wait_listening

HAPROXY = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(not (NGINX and HAPROXY), reason="needs nginx and haproxy (.ci/run)")]
VISITOR_IP = "127.0.0.2"
PORTS = (41000, 41999)  # curl's source port range, so the logged port can be checked too
CASES = [(consumer, mode, version) for consumer in ("nginx", "haproxy")
         for mode in ("passthrough", "terminate") for version in ("v1", "v2")]
TLV_SITE = "tlv-terminate.example.com"


def hostname(consumer, mode, version):
    return f"{consumer}-{mode}-{version}.example.com"


def nginx_conf(folder, certs, ports):
    """One server per case: passthrough Services reach an `ssl proxy_protocol` listener,
    terminate Services a plain `proxy_protocol` one; every request is logged to stderr."""
    servers = []
    for (consumer, mode, version), port in ports.items():
        if consumer != "nginx":
            continue
        name = hostname(consumer, mode, version)
        tls = (f"ssl_certificate {certs / name / 'public.crt'};\n"
               f"ssl_certificate_key {certs / name / 'public.key'};") if mode == "passthrough" else ""
        servers.append(f"""
    server {{
        listen 127.0.0.1:{port}{' ssl' if mode == 'passthrough' else ''} proxy_protocol;
        {tls}
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}""")
    conf = folder / "nginx.conf"
    conf.write_text(harness.nginx_config(folder, f"""\
    log_format pp 'pp-logged port=$server_port src=$proxy_protocol_addr:$proxy_protocol_port '
                  'dst=$proxy_protocol_server_addr:$proxy_protocol_server_port';
    access_log /dev/stderr pp;
{''.join(servers)}
""", error_log=f"{folder}/error.log info"))
    return conf


def haproxy_conf(folder, certs, ports):
    """One frontend per case, `accept-proxy` on each; the log line carries the PROXY
    addresses (src, dst) and the v2 authority TLV."""
    frontends = []
    for (consumer, mode, version), port in ports.items():
        if consumer != "haproxy":
            continue
        name = hostname(consumer, mode, version)
        tls = ""
        if mode == "passthrough":
            pem = folder / f"{name}.pem"
            pem.write_text((certs / name / "public.crt").read_text() + (certs / name / "public.key").read_text())
            tls = f" ssl crt {pem}"
        frontends.append(f"""
frontend {mode}-{version}
    bind 127.0.0.1:{port} accept-proxy{tls}
    http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]\\n"
""")
    conf = folder / "haproxy.cfg"
    conf.write_text("""
global
    log stderr format raw local0
defaults
    mode http
    log global
    option dontlognull
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    log-format "pp-logged frontend=%f src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority]"
""" + "".join(frontends))
    return conf


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory):
    """Server, Client, nginx, HAProxy and the TLV backend, shared by the module's tests."""
    tmp = tmp_path_factory.mktemp("proxy-protocol")
    started = []
    tlv_backend = TLVBackend()
    try:
        deployment = Deployment(tmp, started)
        certs = tmp / "public-cert"
        names = [hostname(*case) for case in CASES] + [TLV_SITE]
        cli_material(certs, "client", "public-cert", "init",
                     *(arg for name in names for arg in ("--hostname", name)))
        ports = {case: free_port() for case in CASES}
        for tool, conf in ((NGINX, nginx_conf), (HAPROXY, haproxy_conf)):
            folder = tmp / Path(tool).name
            folder.mkdir()
            config = conf(folder, certs, ports)
            cmd = [tool, "-p", f"{folder}/", "-e", "stderr", "-c", config] if tool == NGINX \
                else [tool, "-db", "-f", config]
            proc = harness.Process(cmd, name=Path(tool).name)
            started.append(proc)
            wait_listening(proc, [p for (consumer, *_), p in ports.items()
                                  if consumer == Path(tool).name])
        identity = deployment.identity("client-a")
        deployment.start_server([("apps", names, [identity])])
        services = [{"public-hostnames": [hostname(*case)], "backend-address": f"127.0.0.1:{port}",
                     "tls-mode": case[1], "proxy-protocol": case[2]} for case, port in ports.items()]
        services.append({"public-hostnames": [TLV_SITE], "backend-address": tlv_backend.address,
                         "tls-mode": "terminate", "proxy-protocol": "v2"})
        client_toml = tmp / "client.toml"
        client_toml.write_text(harness.config_text("client", {
            "server-address": f"{SERVER_HOSTNAME}:{deployment.public_port}",
            "server-trust": "ca-file", "server-ca-file": deployment.ca_file,
            "identity-dir": tmp / "client-a", "public-cert-dir": certs,
        }, services, log_level="debug"))
        started.append(harness.start_client(client_toml, deployment.env))
        yield {"port": deployment.public_port, "ca": certs / "public-ca.crt",
               "client_toml": client_toml, "env": deployment.env,
               "nginx": started[0], "haproxy": started[1], "tlv": tlv_backend}
    finally:
        tlv_backend.close()
        harness.stop_all(started)


def visit(tunnel, name):
    """curl from VISITOR_IP: the response body."""
    proc = curl(tunnel["port"], name, tunnel["ca"], extra=(
        "--interface", VISITOR_IP, "--local-port", f"{PORTS[0]}-{PORTS[1]}"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def visitor_port(body):
    address, _, port = body.strip().rpartition(":")
    assert address == VISITOR_IP, body
    assert PORTS[0] <= int(port) <= PORTS[1], body
    return port


@pytest.mark.parametrize("consumer, mode, version", CASES)
def test_the_backend_logs_the_visitor_address(tunnel, consumer, mode, version):
    name = hostname(consumer, mode, version)
    port = visitor_port(visit(tunnel, name))
    destination = f"dst=127.0.0.1:{tunnel['port']}"
    if consumer == "nginx":
        tunnel["nginx"].wait_for(rf"pp-logged port=\d+ src={VISITOR_IP}:{port} {destination}$")
    else:
        authority = name if version == "v2" else "-"
        tunnel["haproxy"].wait_for(rf"pp-logged frontend={mode}-{version} src={VISITOR_IP}:{port} "
                                   rf"{destination} authority={authority}$")


def test_terminate_v2_carries_alpn_and_tls_parameters(tunnel):
    ctx = ssl.create_default_context(cafile=str(tunnel["ca"]))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", tunnel["port"]), timeout=10,
                                  source_address=(VISITOR_IP, 0)) as raw:
        source_port = raw.getsockname()[1]
        with ctx.wrap_socket(raw, server_hostname=TLV_SITE) as tls:
            tls.sendall(b"x")  # the Client connects the backend once the handshake is done
            assert tls.recv(16) == b"read"
            version, cipher, alpn = tls.version(), tls.cipher()[0], tls.selected_alpn_protocol()
    report = tunnel["tlv"].reports.get(timeout=10)
    assert not isinstance(report, Exception), report
    assert report["source"] == (VISITOR_IP, source_port)
    assert report["destination"] == ("127.0.0.1", tunnel["port"])
    assert report["authority"] == TLV_SITE
    assert report["alpn"] == (alpn or "")
    assert report["ssl"] == b"\x01\x00\x00\x00\x00"  # PP2_CLIENT_SSL, verify 0
    assert report["ssl-sub"] == [(0x21, version.encode()), (0x23, cipher.encode())]


def test_doctor_sends_the_header_a_passthrough_backend_requires(tunnel):
    """nginx and HAProxy refuse a handshake without the PROXY header: the doctor's backend
    certificate check sends one without addresses first, so it sees their certificates."""
    proc = run_cli("doctor", "client", "-c", tunnel["client_toml"], "--json", env=tunnel["env"],
                   check=False)
    results = {r["check"]: r for r in json.loads(proc.stdout)}
    passthrough = [hostname(*case) for case in CASES if case[1] == "passthrough"]
    assert passthrough
    for name in passthrough:
        assert results[f"backend-certificate {name}"]["status"] == "ok", results[f"backend-certificate {name}"]
