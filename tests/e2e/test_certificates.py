"""Certificate upkeep with real processes: renewal at start and while running, refusals at start.

Every certificate here is dated by the test (``now=`` on the material functions, or
an explicit validity window built with `cryptography`), never by waiting.  The
periodic check runs every fraction of a second through RUNEWARP_CERT_CHECK_SECONDS,
so a test can write an old-dated certificate under a running process and watch it
being replaced.
"""

import datetime as dt
import json
import shlex
import shutil
import signal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runewarp.logs import Logger
from runewarp import material

from ..conftest import SERVER_HOSTNAME, Proc, run_cli
from .helpers import Backend, curl, get, tls_visit, tunnel_handshake

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
APP, API = "app.example.com", "api.example.com"
DAY = dt.timedelta(days=1)


def utcnow():
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def tls_backend(tmp_path):
    backend = Backend(tmp_path, "api", [API])
    yield backend
    backend.stop()


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def foreign_material(cert_dir, hostname, not_before, not_after):
    """A Server certificate from another CA (no state/server-ca.key): Runewarp cannot renew it.

    server-ca.crt gets that CA so the test's Clients can trust it; its key is thrown away.
    """
    shutil.rmtree(cert_dir, ignore_errors=True)
    cert_dir.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Other CA")).issuer_name(_name("Other CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(utcnow() - 400 * DAY).not_valid_after(utcnow() + 4000 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    leaf = (x509.CertificateBuilder().subject_name(_name(hostname)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (cert_dir / "server.crt").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (cert_dir / "server.key").write_bytes(_pem_key(key))
    (cert_dir / "server.key").chmod(0o600)
    (cert_dir / "server-ca.crt").write_bytes(ca.public_bytes(pem))
    return leaf


def start_refused(deployment, tunnels):
    """`runewarp server -c FILE` that must stop at once: (exit status, stderr lines)."""
    path = deployment.server_config(tunnels)
    proc = run_cli("server", "-c", path, env=deployment.env, check=False, timeout=30)
    return proc.returncode, proc.stderr.splitlines()


def index_of(proc, pattern):
    proc.wait_for(pattern)
    return next(i for i, line in enumerate(proc.lines) if pattern in line)


# --------------------------------------------------------------------------
# The Server certificate from `server cert init` (its CA key is in cert-dir/state)


def test_expired_server_certificate_is_renewed_before_serving(deployment, tls_backend):
    identity = deployment.identity("client-a")
    old = material.renew_server_cert(deployment.cert_dir, now=utcnow() - 100 * DAY)
    assert old.not_after < utcnow()
    server = deployment.start_server([("apps", [API], [identity])])
    renewed = index_of(server, "server-certificate-renewed")
    assert renewed < index_of(server, "server-ready")
    assert f"server-hostname={SERVER_HOSTNAME}" in server.lines[renewed]
    leaf = x509.load_pem_x509_certificate((deployment.cert_dir / "server.crt").read_bytes())
    assert leaf.not_valid_after_utc > utcnow() + 80 * DAY
    assert f"not-after={leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in server.lines[renewed]
    deployment.start_client("client-a", [([API], tls_backend.address)])
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


def test_server_certificate_past_two_thirds_is_renewed_at_start(deployment):
    identity = deployment.identity("client-a")
    old = material.renew_server_cert(deployment.cert_dir, now=utcnow() - 61 * DAY)
    ca = (deployment.cert_dir / "server-ca.crt").read_bytes()
    server = deployment.start_server([("apps", [API], [identity])])
    server.wait_for("server-certificate-renewed")
    served = tunnel_handshake(deployment.public_port, deployment.ca_file, deployment.dir / "client-a")
    assert served.serial_number != old.serial
    assert served.not_valid_after_utc > utcnow() + 89 * DAY
    assert (deployment.cert_dir / "server-ca.crt").read_bytes() == ca  # Clients keep trusting


def test_fresh_server_certificate_is_left_alone(deployment):
    identity = deployment.identity("client-a")
    before = material.certificate_serial(deployment.cert_dir / "server.crt")
    server = deployment.start_server([("apps", [API], [identity])])
    assert material.certificate_serial(deployment.cert_dir / "server.crt") == before
    assert server.count("server-certificate-") == 0


def test_running_server_renews_its_certificate_without_restart(deployment, tls_backend):
    identity = deployment.identity("client-a")
    deployment.env["RUNEWARP_CERT_CHECK_SECONDS"] = "0.2"
    server = deployment.start_server([("apps", [API], [identity])])
    deployment.start_client("client-a", [([API], tls_backend.address)])
    # As if 61 days had passed since the last renewal: the next check must replace it.
    aged = material.renew_server_cert(deployment.cert_dir, now=utcnow() - 61 * DAY)
    server.wait_for("server-certificate-renewed")
    served = tunnel_handshake(deployment.public_port, deployment.ca_file, deployment.dir / "client-a")
    assert served.serial_number != aged.serial
    assert served.not_valid_after_utc > utcnow() + 89 * DAY
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


# --------------------------------------------------------------------------
# A Server certificate from another CA: warn, and refuse one that cannot serve


def test_foreign_certificate_with_ten_days_left_starts_with_a_warning(deployment, tls_backend):
    identity = deployment.identity("client-a")
    now = utcnow()
    leaf = foreign_material(deployment.cert_dir, SERVER_HOSTNAME, now - 80 * DAY, now + 10 * DAY)
    server = deployment.start_server([("apps", [API], [identity])])
    warned = index_of(server, "server-certificate-expiring")
    assert warned < index_of(server, "server-ready")
    line = server.lines[warned]
    assert " WARN " in line and ("days-left=9" in line or "days-left=10" in line)
    assert f"not-after={leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in line
    assert str(deployment.cert_dir / "server.crt") in line
    assert server.count("server-certificate-renewed") == 0
    assert material.certificate_serial(deployment.cert_dir / "server.crt") == leaf.serial_number
    deployment.start_client("client-a", [([API], tls_backend.address)])
    assert curl(deployment.public_port, API, tls_backend.ca).stdout == b"backend=api\n"


@pytest.mark.parametrize("window, words", [
    ((-100, -10), "expired"),
    ((5, 95), "not valid before"),
])
def test_foreign_certificate_that_cannot_serve_stops_the_start(deployment, window, words):
    identity = deployment.identity("client-a")
    now = utcnow()
    foreign_material(deployment.cert_dir, SERVER_HOSTNAME, now + window[0] * DAY,
                     now + window[1] * DAY)
    status, lines = start_refused(deployment, [("apps", [API], [identity])])
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {deployment.dir / 'server.toml'}: server.cert-dir: ")
    assert str(deployment.cert_dir / "server.crt") in lines[0] and words in lines[0]
    assert "server-ready" not in lines[0]


def test_certificate_for_another_hostname_stops_the_start(deployment):
    identity = deployment.identity("client-a")
    shutil.rmtree(deployment.cert_dir)
    run_cli("server", "cert", "init", "--hostname", "other.example.com", "--dir",
            deployment.cert_dir)
    status, lines = start_refused(deployment, [("apps", [API], [identity])])
    assert status == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"error: {deployment.dir / 'server.toml'}: server.hostname: ")
    assert str(deployment.cert_dir / "server.crt") in line
    assert "other.example.com" in line and SERVER_HOSTNAME in line
    assert f"runewarp server cert renew -c {deployment.dir / 'server.toml'}" in line


def test_foreign_certificate_for_another_hostname_stops_the_start(deployment):
    identity = deployment.identity("client-a")
    now = utcnow()
    foreign_material(deployment.cert_dir, "other.example.com", now - DAY, now + 80 * DAY)
    status, lines = start_refused(deployment, [("apps", [API], [identity])])
    assert status == 2 and len(lines) == 1, lines
    assert ": server.hostname: " in lines[0] and "other.example.com" in lines[0]


def test_reload_to_a_certificate_for_another_hostname_fails_and_keeps_the_old_one(deployment):
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [API], [identity])])
    port = deployment.public_port
    before = tunnel_handshake(port, deployment.ca_file, deployment.dir / "client-a")
    run_cli("server", "cert", "init", "--hostname", "other.example.com", "--dir",
            deployment.dir / "other-cert")
    text = deployment.server_config([("apps", [API], [identity])]).read_text()
    (deployment.dir / "server.toml").write_text(
        text.replace("127.0.0.1:0", f"127.0.0.1:{port}").replace('"server-cert"', '"other-cert"'))
    server.signal(signal.SIGHUP)
    failed = server.wait_for("reload-failed .*")
    assert "server.hostname" in failed.group(0) and "other.example.com" in failed.group(0)
    assert server.count("server-reloaded") == 0
    after = tunnel_handshake(port, deployment.ca_file, deployment.dir / "client-a")
    assert after.serial_number == before.serial_number


# --------------------------------------------------------------------------
# Terminate Services (Client, manual public-cert-dir)


def _fix_command(line):
    """The `fix` field of a text log line, as argv for run_cli (without 'runewarp')."""
    value = line.split(" fix=", 1)[1]
    value = json.JSONDecoder().raw_decode(value)[0] if value.startswith('"') else value.split()[0]
    argv = shlex.split(value)
    assert argv[0] == "runewarp"
    return argv[1:]


@pytest.mark.parametrize("command, hostname, why", [
    (("client", "public-cert", "init"), "a.*.example.com", "the '*' is the whole first label"),
    (("client", "public-cert", "init"), "*.com", "at least two labels"),
    (("client", "public-cert", "init"), "under_score.example.com", "underscores are not allowed"),
    (("client", "public-cert", "renew"), "192.0.2.1", "IP address"),
    (("server", "cert", "init"), "*.example.com", "wildcards are not allowed"),
    (("server", "cert", "init"), "under_score.example.com", "underscores are not allowed"),
])
def test_material_commands_refuse_a_hostname_the_runtime_cannot_serve(tmp_path, command, hostname, why):
    """One hostname rule (proto.hostname) for the config, the runtime and the material
    commands: no certificate is written for a name no Visitor could reach."""
    proc = run_cli(*command, "--dir", tmp_path / "material", "--hostname", hostname, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and why in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "material").exists()


def test_terminate_service_without_certificate_is_reported_at_start_and_reload(
        deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    config = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                      public_cert_dir="public-cert")
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    missing = index_of(client, "public-certificate-missing")
    assert missing < index_of(client, "client-ready")
    line = client.lines[missing]
    assert f"public-hostname={APP}" in line and " WARN " in line
    argv = _fix_command(line)
    assert argv[:3] == ["client", "public-cert", "init"]
    assert argv[argv.index("--hostname") + 1] == APP
    assert argv[argv.index("--dir") + 1] == str(deployment.dir / "public-cert")
    client.wait_for("tunnel-connection-established")

    client.signal(signal.SIGHUP)
    reloaded = index_of(client, "client-reloaded")
    assert client.count(f"public-certificate-missing public-hostname={APP}") == 2
    assert [i for i, text in enumerate(client.lines)
            if "public-certificate-missing" in text][-1] < reloaded

    run_cli(*argv)  # the command the warning names makes the certificate
    ca = deployment.dir / "public-cert" / "public-ca.crt"
    proc = curl(deployment.public_port, APP, ca, path="/hello.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"plaintext backend\n"


def test_expired_public_certificate_is_renewed_before_serving(deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    public = deployment.dir / "public-cert"
    old = material.init_public_certs(public, [APP], now=utcnow() - 100 * DAY).leaves[0]
    assert old.not_after < utcnow()
    config = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                      public_cert_dir="public-cert")
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    renewed = index_of(client, f"public-certificate-renewed public-hostname={APP}")
    assert renewed < index_of(client, "client-ready")
    client.wait_for("tunnel-connection-established")
    proc = curl(deployment.public_port, APP, public / "public-ca.crt", path="/hello.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"plaintext backend\n"
    der, _ = tls_visit(deployment.public_port, APP, public / "public-ca.crt",
                       get("/hello.txt", APP))
    served = x509.load_der_x509_certificate(der)
    assert served.serial_number != old.serial
    assert served.not_valid_after_utc > utcnow() + 89 * DAY


def test_running_client_renews_a_public_certificate(deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.env["RUNEWARP_CERT_CHECK_SECONDS"] = "0.2"
    deployment.start_server([("apps", [APP], [identity])])
    public = deployment.dir / "public-cert"
    material.init_public_certs(public, [APP])
    config = deployment.client_config("client-a", [([APP], plain_backend, "terminate")],
                                      public_cert_dir="public-cert")
    client = Proc(["client", "-c", config], env=deployment.env)
    deployment.processes.append(client)
    client.wait_for("tunnel-connection-established")
    aged = material.renew_public_certs(public, [APP], now=utcnow() - 61 * DAY).leaves[0]
    client.wait_for(f"public-certificate-renewed public-hostname={APP}")
    der, _ = tls_visit(deployment.public_port, APP, public / "public-ca.crt",
                       get("/hello.txt", APP))
    served = x509.load_der_x509_certificate(der)
    assert served.serial_number != aged.serial
    assert served.not_valid_after_utc > utcnow() + 89 * DAY


# --------------------------------------------------------------------------
# The same upkeep in this process, with an injected clock and interval


class Events(Logger):
    """A logger that keeps (level, event, fields) instead of writing lines."""

    def __init__(self):
        super().__init__("trace")
        self.records = []

    def log(self, level, event, **fields):
        self.records.append((level, event, fields))

    def named(self, event):
        return [(level, fields) for level, name, fields in self.records if name == event]


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def in_process_server(tmp_path, clock):
    from runewarp.config import load_server_config
    from runewarp.io.server import Server

    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhostname = "{SERVER_HOSTNAME}"\n'
                      'public-bind-address = "127.0.0.1:0"\ncert-dir = "server-cert"\n'
                      f'[[server.tunnels]]\npublic-hostnames = ["{APP}"]\n'
                      f'client-identity = "{"ab" * 32}"\n')
    events = Events()
    return Server(load_server_config(config), events, clock=clock), events


def test_server_renews_by_its_clock_and_loads_the_new_certificate(tmp_path):
    now = utcnow()
    material.init_server_cert(tmp_path / "server-cert", SERVER_HOSTNAME, now=now)
    clock = Clock(now + 10 * DAY)
    server, events = in_process_server(tmp_path, clock)
    server.check_certificate()
    first = server.certificate.current()
    assert events.named("server-certificate-renewed") == []
    clock.now = now + 61 * DAY  # past two thirds of 90 days
    server._certificate_upkeep()
    [(level, fields)] = events.named("server-certificate-renewed")
    assert level == "info" and fields["server_hostname"] == SERVER_HOSTNAME
    leaf = material.load_certificate(tmp_path / "server-cert" / "server.crt")
    assert leaf.not_valid_after_utc == clock.now.replace(microsecond=0) + 90 * DAY
    assert fields["not_after"] == f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    assert server.certificate.current() is not first  # the Tunnel context was rebuilt
    server._certificate_upkeep()
    assert len(events.named("server-certificate-renewed")) == 1


def test_server_warns_about_a_foreign_certificate_at_most_once_a_day(tmp_path):
    now = utcnow()
    leaf = foreign_material(tmp_path / "server-cert", SERVER_HOSTNAME, now - 60 * DAY,
                            now + 20 * DAY)
    clock = Clock(now)
    server, events = in_process_server(tmp_path, clock)
    server.check_certificate()
    server.check_certificate()
    [(level, fields)] = events.named("server-certificate-expiring")
    assert level == "warn" and fields["days_left"] in (19, 20)
    assert "cannot renew" in fields["reason"] and "rotate-ca" in fields["fix"]
    clock.now = now + dt.timedelta(hours=23)
    server._certificate_upkeep()
    assert len(events.named("server-certificate-expiring")) == 1
    clock.now = now + DAY
    server._certificate_upkeep()
    assert len(events.named("server-certificate-expiring")) == 2
    clock.now = now + 21 * DAY  # expired while running: still served, reported daily
    server._certificate_upkeep()
    level, fields = events.named("server-certificate-expiring")[-1]
    assert fields["days_left"] == 0 and "not valid now" in fields["reason"]
    assert material.certificate_serial(tmp_path / "server-cert" / "server.crt") == \
        leaf.serial_number
    with pytest.raises(material.MaterialError, match="expired on"):
        server.check_certificate()  # a start now would be refused


def test_periodic_pass_keeps_running_after_a_failure():
    import gevent

    from runewarp.io.upkeep import Periodic

    calls, events = [], Events()

    def step():
        calls.append(len(calls))
        if len(calls) == 1:
            raise material.MaterialError("disk full")

    periodic = Periodic(step, 0.01, events, "server-certificate-renewal-failed",
                        stopped=lambda: len(calls) >= 3).start()
    with gevent.Timeout(5):
        periodic.greenlet.join()
    assert calls == [0, 1, 2]
    [(level, fields)] = events.named("server-certificate-renewal-failed")
    assert level == "error" and "disk full" in fields["reason"]


def test_public_certificates_upkeep_by_the_clock(tmp_path):
    from runewarp.io.terminate import PublicCertificates

    now = utcnow()
    public = tmp_path / "public-cert"
    material.init_public_certs(public, [APP], now=now)
    clock, events = Clock(now + 59 * DAY), Events()
    certs = PublicCertificates(public, events, clock=clock)
    assert certs.upkeep([APP, API], announce=True) == []
    [(level, fields)] = events.named("public-certificate-missing")
    assert level == "warn" and fields["public_hostname"] == API
    assert fields["fix"] == f"runewarp client public-cert init --dir {public} --hostname {API}"
    assert certs.upkeep([APP, API]) == []  # the periodic pass does not repeat it
    assert len(events.named("public-certificate-missing")) == 1
    clock.now = now + 61 * DAY
    assert certs.upkeep([APP, API]) == [APP]
    [(level, fields)] = events.named("public-certificate-renewed")
    assert level == "info" and fields["public_hostname"] == APP
    assert certs.upkeep([APP]) == []
