"""ACME end to end: real certbot (through our plugin) against a real Pebble, real processes.

Pebble validates tls-alpn-01 by connecting to 127.0.0.1:<tlsPort>; every test
gives the Runewarp Server that port as its public port, so the CA's handshake
takes the same path a Visitor's would.
"""

import os
import re
import ssl
import subprocess
import textwrap

import pytest
from cryptography import x509

from ..conftest import SERVER_HOSTNAME, Proc, free_port, run_cli, runewarp_cmd
from .. import pebble as pebble_helper
from .helpers import curl, tunnel_handshake

pytestmark = pytest.mark.e2e
APP = "app.example.com"
EMAIL = "ops@example.com"
ISSUANCE_TIMEOUT = 90


def env_for(pebble=None, **extra):
    env = dict(os.environ, RUNEWARP_RESOLVE=f"{SERVER_HOSTNAME}=127.0.0.1",
               RUNEWARP_ACME_RETRY_SECONDS="1")
    if pebble is not None:
        env.update(pebble.env)
    env.update(extra)
    return env


def identity(tmp_path, name):
    return run_cli("client", "identity", "init", "--dir", tmp_path / name).stdout.strip()


def acme_table(section, directory_url, state_dir):
    return textwrap.dedent(f"""
        [{section}.acme]
        email = "{EMAIL}"
        state-dir = "{state_dir}"
        directory-url = "{directory_url}"
    """)


def write_server(tmp_path, port, client_identity, *, acme_url=None):
    """Server config: ACME when `acme_url` is given, else manual material from `server cert init`."""
    if acme_url is None:
        run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir",
                tmp_path / "server-cert")
    text = textwrap.dedent(f"""
        log-level = "debug"
        [server]
        hostname = "{SERVER_HOSTNAME}"
        public-bind-address = "127.0.0.1:{port}"
        graceful-shutdown-duration = 3
    """)
    if acme_url is None:
        text += 'cert-dir = "server-cert"\n'
    else:
        text += acme_table("server", acme_url, "acme-server")
    text += textwrap.dedent(f"""
        [[server.tunnels]]
        name = "app"
        public-hostnames = ["{APP}"]
        client-identity = "{client_identity}"
    """)
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def write_client(tmp_path, port, name, ca_file, backend, *, terminate_acme_url=None):
    text = textwrap.dedent(f"""
        log-level = "debug"
        [client]
        server-address = "{SERVER_HOSTNAME}:{port}"
        server-trust = "ca-file"
        server-ca-file = "{ca_file}"
        identity-dir = "{name}"
        graceful-shutdown-duration = 3
    """)
    if terminate_acme_url is not None:
        text += acme_table("client", terminate_acme_url, "acme-client")
    text += textwrap.dedent(f"""
        [[client.services]]
        public-hostnames = ["{APP}"]
        backend-address = "{backend}"
    """)
    if terminate_acme_url is not None:
        text += 'tls-mode = "terminate"\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def start(processes, role, config, env):
    proc = Proc([role, "-c", config], env=env)
    processes.append(proc)
    return proc


pebble_factory = pebble_helper.pebble_factory  # fixture
READY = r"acme-certificate-ready .*{host}.* serial=([0-9a-f]+)"


@pytest.mark.timeout(240)
def test_server_obtains_its_certificate_from_pebble(tmp_path, processes, pebble_factory,
                                                    plain_backend):
    port = free_port()
    pebble = pebble_factory(port)
    client_identity = identity(tmp_path, "client-a")
    server = start(processes, "server",
                   write_server(tmp_path, port, client_identity, acme_url=pebble.directory_url),
                   env_for(pebble))
    server.wait_for(r"WARN .*acme-port-not-443")
    match = server.wait_for(READY.format(host=re.escape(SERVER_HOSTNAME)),
                            timeout=ISSUANCE_TIMEOUT)
    serial = int(match.group(1), 16)

    leaf = tunnel_handshake(port, pebble.root_path, tmp_path / "client-a")  # verified by root
    assert leaf.serial_number == serial
    assert pebble.issued(leaf)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [SERVER_HOSTNAME]

    client = start(processes, "client",
                   write_client(tmp_path, port, "client-a", pebble.root_path, plain_backend),
                   env_for())
    client.wait_for("tunnel-connection-established", timeout=30)
    server.wait_for("tunnel-connection-established")
    assert server.popen.poll() is None

    # The cron / systemd-timer path: one renewal run; the certificate is fresh, so it only
    # confirms that it is present and valid.
    cron = subprocess.run(runewarp_cmd("server", "cert", "renew-acme", "-c", tmp_path / "server.toml"),
                          capture_output=True, text=True, timeout=120, env=env_for(pebble))
    assert cron.returncode == 0, cron.stderr


@pytest.mark.timeout(240)
def test_client_obtains_terminate_certificate_through_the_tunnel(tmp_path, processes,
                                                                 pebble_factory, plain_backend):
    port = free_port()
    pebble = pebble_factory(port)
    client_identity = identity(tmp_path, "client-a")
    server = start(processes, "server", write_server(tmp_path, port, client_identity),
                   env_for())
    server.wait_for("server-ready")
    client = start(processes, "client",
                   write_client(tmp_path, port, "client-a", "server-cert/server-ca.crt",
                                plain_backend, terminate_acme_url=pebble.directory_url),
                   env_for(pebble))
    client.wait_for("tunnel-connection-established", timeout=30)
    client.wait_for(READY.format(host=re.escape(APP)), timeout=ISSUANCE_TIMEOUT)

    result = curl(port, APP, pebble.root_path, "/hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"plaintext backend\n"
    assert client.popen.poll() is None and server.popen.poll() is None


@pytest.mark.timeout(300)
def test_short_lived_certificate_is_renewed_and_served_without_restart(tmp_path, processes,
                                                                       pebble_factory):
    port = free_port()
    validity = 24  # due (1/3 left) after 16 s
    pebble = pebble_factory(port, certificate_validity_period=validity)
    client_identity = identity(tmp_path, "client-a")
    server = start(processes, "server",
                   write_server(tmp_path, port, client_identity, acme_url=pebble.directory_url),
                   env_for(pebble, RUNEWARP_ACME_CHECK_SECONDS="2"))
    ready = READY.format(host=re.escape(SERVER_HOSTNAME))
    first = int(server.wait_for(ready, timeout=ISSUANCE_TIMEOUT).group(1), 16)
    assert tunnel_handshake(port, pebble.root_path, tmp_path / "client-a").serial_number == first
    pid = server.popen.pid

    mark = len(server.lines)
    server.wait_for(r"acme-renewal-due .*" + re.escape(SERVER_HOSTNAME), timeout=validity,
                    start=mark)
    second = int(server.wait_for(ready, timeout=ISSUANCE_TIMEOUT, start=mark).group(1), 16)
    assert second != first
    leaf = tunnel_handshake(port, pebble.root_path, tmp_path / "client-a")
    assert leaf.serial_number == second and pebble.issued(leaf)
    assert server.popen.poll() is None and server.popen.pid == pid


@pytest.mark.timeout(120)
def test_unreachable_acme_server_is_retried_and_tunnels_fail_closed(tmp_path, processes):
    closed = free_port()  # nothing listens here
    port = free_port()
    client_identity = identity(tmp_path, "client-a")
    server = start(processes, "server",
                   write_server(tmp_path, port, client_identity,
                                acme_url=f"https://127.0.0.1:{closed}/dir"),
                   env_for())
    server.wait_for("server-ready")
    server.wait_for(r"WARN .*acme-issuance-failed .*" + re.escape(SERVER_HOSTNAME)
                    + r".*reason=.*(refused|Connection)", timeout=60)
    mark = len(server.lines)
    server.wait_for(r"acme-issuance-failed", timeout=60, start=mark)  # retried
    assert server.popen.poll() is None

    for _ in range(2):  # no certificate yet: Tunnel connections are refused
        with pytest.raises((ssl.SSLError, OSError)):
            tunnel_handshake(port, _any_ca(tmp_path), tmp_path / "client-a")
    server.wait_for("server-certificate-missing")
    assert server.count("server-certificate-missing") == 1
    assert server.popen.poll() is None

    cron = subprocess.run(runewarp_cmd("server", "cert", "renew-acme", "-c", tmp_path / "server.toml"),
                          capture_output=True, text=True, timeout=120, env=env_for())
    assert cron.returncode == 1
    assert "acme-issuance-failed" in cron.stderr


def _any_ca(tmp_path):
    """Some CA file for the stdlib client: no certificate is served at all, so any will do."""
    folder = tmp_path / "unrelated-ca"
    if not (folder / "server-ca.crt").exists():
        run_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", folder)
    return folder / "server-ca.crt"
