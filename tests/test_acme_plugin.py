"""ACME pieces without a CA: the tls-alpn-01 challenge type, the certbot plugin's
validation certificate, the responder against a real TLS client, and due dates."""

import datetime as dt
import hashlib
import os
import socket
import ssl
import stat
import sys
import threading
import time
import types
from pathlib import Path

import gevent
import gevent.socket
import josepy as jose
import pytest
from acme import challenges, messages
from certbot import achallenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from runewarp.acme import plugin as acme_plugin
from runewarp.acme import AcmeCertificates, challenge_file, renew_once
from runewarp.acme.certbot import reason as certbot_reason
from runewarp.acme.certificates import retry_windows
from runewarp.acme.plugin import TLSALPN01, TLSALPN01Response, validation_certificate
from runewarp.config import AcmeConfig
from runewarp.io.challenge import ChallengeResponder
from runewarp.io.intake import intake
from runewarp.logs import Logger

UTC = dt.UTC
OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
DOMAIN = "app.example.com"
TOKEN = b"\x17" * 32


def account_key():
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def key_authorization(key):
    return TLSALPN01(token=TOKEN).key_authorization(key)


def acme_extension_digest(cert):
    """SHA-256 out of the acmeIdentifier extension, decoding the DER OCTET STRING by hand."""
    ext = cert.extensions.get_extension_for_oid(OID)
    assert ext.critical
    value = ext.value.value
    assert value[0] == 0x04 and value[1] == 32 and len(value) == 34
    return value[2:]


# --------------------------------------------------------------------------
# validation certificate (RFC 8737)


def test_validation_certificate_follows_rfc_8737():
    keyauth = "token.thumbprint"
    cert_pem, key_pem = validation_certificate(DOMAIN, keyauth)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)

    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert list(san) == [x509.DNSName(DOMAIN)]  # exactly one name, a dNSName
    assert acme_extension_digest(cert) == hashlib.sha256(keyauth.encode()).digest()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(cert)  # self-signed
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    now = dt.datetime.now(UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc


def test_each_validation_certificate_has_a_fresh_key():
    a = validation_certificate(DOMAIN, "k.a")[1]
    b = validation_certificate(DOMAIN, "k.a")[1]
    assert a != b


# --------------------------------------------------------------------------
# the challenge type through acme's JSON (de)serialization


def test_tls_alpn_01_challenge_round_trips_through_acme_json():
    body = {"type": "tls-alpn-01", "url": "https://ca.example/chall/1", "status": "pending",
            "token": jose.b64encode(TOKEN).decode()}
    challb = messages.ChallengeBody.from_json(body)
    assert isinstance(challb.chall, TLSALPN01)
    assert challb.chall.token == TOKEN
    assert challb.to_json()["type"] == "tls-alpn-01"
    again = messages.ChallengeBody.from_json(challb.to_json())
    assert again.chall == challb.chall
    assert isinstance(challenges.Challenge.from_json(challb.chall.to_json()), TLSALPN01)


def test_tls_alpn_01_response_and_validation():
    key = account_key()
    chall = TLSALPN01(token=TOKEN)
    response, (cert_pem, _key_pem) = chall.response_and_validation(key, domain=DOMAIN)
    assert isinstance(response, TLSALPN01Response)
    assert response.verify(chall, key.public_key())
    assert response.to_partial_json() == {}  # RFC 8555 §7.5.1: the answer is an empty object
    cert = x509.load_pem_x509_certificate(cert_pem)
    expected = hashlib.sha256(chall.key_authorization(key).encode()).digest()
    assert acme_extension_digest(cert) == expected
    parsed = challenges.ChallengeResponse.from_json(
        {"type": "tls-alpn-01", "keyAuthorization": response.key_authorization})
    assert isinstance(parsed, TLSALPN01Response)


def test_certbot_accepts_tls_alpn_01_as_preferred_challenge():
    from certbot._internal.cli.cli_utils import parse_preferred_challenges

    assert parse_preferred_challenges(["tls-alpn-01"]) == ["tls-alpn-01"]


# --------------------------------------------------------------------------
# the certbot plugin


def annotated(key, domain=DOMAIN, token=TOKEN):
    challb = messages.ChallengeBody(chall=TLSALPN01(token=token), uri="https://ca/c",
                                    status=messages.STATUS_PENDING)
    return achallenges.KeyAuthorizationAnnotatedChallenge(
        challb=challb, account_key=key,
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=domain))


def plugin(folder):
    config = types.SimpleNamespace(runewarp_challenge_dir=str(folder))
    auth = acme_plugin.Authenticator(config, "runewarp")
    auth.prepare()
    return auth


def test_plugin_writes_material_then_removes_it(tmp_path):
    folder = tmp_path / "challenges"
    key = account_key()
    auth = plugin(folder)
    assert auth.get_chall_pref(DOMAIN) == [TLSALPN01]
    achall = annotated(key)
    (response,) = auth.perform([achall])
    assert isinstance(response, TLSALPN01Response)
    path = challenge_file(folder, DOMAIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    serialization.load_pem_private_key(pem, None)
    assert acme_extension_digest(cert) == hashlib.sha256(
        response.key_authorization.encode()).digest()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    auth.cleanup([achall])
    assert not path.exists()


def test_plugin_refuses_without_challenge_dir():
    from certbot import errors

    auth = acme_plugin.Authenticator(types.SimpleNamespace(runewarp_challenge_dir=None),
                                     "runewarp")
    with pytest.raises(errors.MisconfigurationError):
        auth.prepare()


def test_challenge_file_refuses_path_tricks(tmp_path):
    """The one hostname rule (proto.hostname): no underscores or wildcards either."""
    assert challenge_file(tmp_path, "App.Example.com.") == tmp_path / "app.example.com.pem"
    for bad in ("../etc/passwd", "a/b", "", "a..b", "under_score.example.com", "*.example.com"):
        with pytest.raises(ValueError):
            challenge_file(tmp_path, bad)


# --------------------------------------------------------------------------
# ChallengeResponder against the stdlib TLS client


class Answering:
    """A gevent listener that runs intake, then ChallengeResponder.answer, for each connection."""

    def __init__(self, responder):
        self.responder = responder
        self.listener = gevent.socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.results = []
        self.log = Logger("off")

    def serve_one(self):
        sock, _ = self.listener.accept()
        try:
            taken = intake(lambda: sock.recv(16 * 1024))
            self.results.append(self.responder.answer(sock, taken.hostname, taken.buffered,
                                                      self.log))
        finally:
            sock.close()


def visit(port, hostname, alpn):
    """stdlib TLS client in a real thread: (selected ALPN, peer certificate) or the exception."""
    outcome = {}

    def run():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                    outcome["alpn"] = tls.selected_alpn_protocol()
                    outcome["cert"] = x509.load_der_x509_certificate(
                        tls.getpeercert(binary_form=True))
        except (ssl.SSLError, OSError) as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def exchange(server, hostname, alpn):
    thread, outcome = visit(server.port, hostname, alpn)
    with gevent.Timeout(15):
        server.serve_one()
    thread.join(15)
    return outcome


@pytest.fixture
def pending(tmp_path):
    folder = tmp_path / "challenges"
    key = account_key()
    auth = plugin(folder)
    (response,) = auth.perform([annotated(key)])
    return folder, response.key_authorization, auth


def test_responder_presents_validation_certificate_with_acme_alpn(pending):
    folder, keyauth, _ = pending
    server = Answering(ChallengeResponder(folder))
    outcome = exchange(server, DOMAIN, ["acme-tls/1"])
    assert "error" not in outcome, outcome
    assert outcome["alpn"] == "acme-tls/1"
    assert acme_extension_digest(outcome["cert"]) == hashlib.sha256(keyauth.encode()).digest()
    assert list(outcome["cert"].extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value) == [x509.DNSName(DOMAIN)]
    assert server.results == [True]


def test_responder_refuses_other_alpn(pending):
    folder, _, _ = pending
    server = Answering(ChallengeResponder(folder))
    outcome = exchange(server, DOMAIN, ["h2", "http/1.1"])
    assert isinstance(outcome.get("error"), ssl.SSLError), outcome
    assert "no application protocol" in str(outcome["error"]).lower()
    assert server.results == [False]


def test_responder_without_pending_challenge(pending, tmp_path):
    folder, _, auth = pending
    responder = ChallengeResponder(folder)
    assert responder.context_for("other.example.com") is None
    assert responder.context_for(DOMAIN) is not None
    server = Answering(responder)
    outcome = exchange(server, "other.example.com", ["acme-tls/1"])
    assert "error" in outcome
    assert server.results == [False]


def test_responder_follows_the_file(pending):
    folder, _, auth = pending
    responder = ChallengeResponder(folder)
    first = responder.context_for(DOMAIN)
    assert responder.context_for(DOMAIN) is first  # cached while the file is unchanged
    (response,) = auth.perform([annotated(account_key(), token=b"\x42" * 32)])
    second = responder.context_for(DOMAIN)
    assert second is not None and second is not first
    server = Answering(responder)
    outcome = exchange(server, DOMAIN, ["acme-tls/1"])
    assert acme_extension_digest(outcome["cert"]) == hashlib.sha256(
        response.key_authorization.encode()).digest()
    os.unlink(challenge_file(folder, DOMAIN))
    assert responder.context_for(DOMAIN) is None


# --------------------------------------------------------------------------
# AcmeCertificates: layout, due dates, certbot outcomes


def lineage(state_dir, hostname, not_before, not_after, version=1):
    """What certbot leaves behind: archive/<name>/*N.pem and live/<name>/ links to them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostname)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    archive = state_dir / "config" / "archive" / hostname
    live = state_dir / "config" / "live" / hostname
    archive.mkdir(parents=True, exist_ok=True)
    live.mkdir(parents=True, exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (archive / f"fullchain{version}.pem").write_bytes(pem)
    (archive / f"cert{version}.pem").write_bytes(pem)
    (archive / f"privkey{version}.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for kind in ("fullchain", "cert", "privkey"):
        link = live / f"{kind}.pem"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(Path("..", "..", "archive", hostname, f"{kind}{version}.pem"))
    return cert


def certs_for(tmp_path, hostnames=(DOMAIN,), log=None, role="client"):
    config = AcmeConfig(email="ops@example.com", state_dir=tmp_path / "acme",
                        directory_url="https://127.0.0.1:9/dir")
    return AcmeCertificates(config, hostnames, log or Logger("off"), role)


def test_due_when_missing_or_a_third_of_the_lifetime_is_left(tmp_path):
    certs = certs_for(tmp_path)
    now = dt.datetime(2030, 1, 1, tzinfo=UTC)
    assert certs.paths(DOMAIN) is None
    assert certs.due(DOMAIN, now)
    lineage(certs.state_dir, DOMAIN, now - dt.timedelta(days=59), now + dt.timedelta(days=31))
    assert certs.paths(DOMAIN) is not None
    assert not certs.due(DOMAIN, now)
    assert certs.due(DOMAIN, now + dt.timedelta(days=1, seconds=1))
    assert certs.due(DOMAIN, now + dt.timedelta(days=40))  # expired


def test_short_lived_certificates_are_due_early_enough(tmp_path):
    certs = certs_for(tmp_path)
    start = dt.datetime.now(UTC).replace(microsecond=0)
    lineage(certs.state_dir, DOMAIN, start, start + dt.timedelta(seconds=120))
    assert not certs.due(DOMAIN, start + dt.timedelta(seconds=70))
    assert certs.due(DOMAIN, start + dt.timedelta(seconds=81))


def test_paths_pair_chain_and_key_of_one_version(tmp_path):
    certs = certs_for(tmp_path)
    now = dt.datetime.now(UTC)
    lineage(certs.state_dir, DOMAIN, now - dt.timedelta(days=1), now + dt.timedelta(days=89))
    chain1, key1 = certs.paths(DOMAIN)
    assert (chain1.name, key1.name) == ("fullchain1.pem", "privkey1.pem")
    new = lineage(certs.state_dir, DOMAIN, now, now + dt.timedelta(days=90), version=2)
    # certbot swaps live/ links one by one: a moment with privkey -> 2 and fullchain -> 1
    live = certs.state_dir / "config" / "live" / DOMAIN
    (live / "fullchain.pem").unlink()
    (live / "fullchain.pem").symlink_to(Path("..", "..", "archive", DOMAIN, "fullchain1.pem"))
    assert certs.paths(DOMAIN) == (chain1, key1)
    (live / "fullchain.pem").unlink()
    (live / "fullchain.pem").symlink_to(Path("..", "..", "archive", DOMAIN, "fullchain2.pem"))
    chain2, key2 = certs.paths(DOMAIN)
    assert (chain2.name, key2.name) == ("fullchain2.pem", "privkey2.pem")
    assert certs.certificate(DOMAIN).serial_number == new.serial_number


def test_certbot_command_forces_renewal_only_for_an_existing_lineage(tmp_path):
    certs = certs_for(tmp_path)
    command = certs.certbot_command(DOMAIN, force=False)
    assert command[0] == sys.executable
    text = " ".join(command)
    for part in ("certonly --non-interactive --agree-tos", "-m ops@example.com",
                 "--server https://127.0.0.1:9/dir", "-a runewarp",
                 f"--runewarp-challenge-dir {certs.challenge_dir}",
                 "--preferred-challenges tls-alpn-01", f"--cert-name {DOMAIN} -d {DOMAIN}",
                 f"--config-dir {certs.state_dir / 'config'}"):
        assert part in text
    assert "--keep-until-expiring" in command and "--force-renewal" not in command
    assert "--force-renewal" in certs.certbot_command(DOMAIN, force=True)


class Lines:
    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.lines)


def fake_certbot(certs, script):
    certs.certbot_command = lambda hostname, force: [sys.executable, "-c", script]


def test_failed_certbot_is_reported_with_its_reason(tmp_path):
    out = Lines()
    certs = certs_for(tmp_path, log=Logger("info", stream=out))
    fake_certbot(certs, "import sys; print('Saving debug log to /x'); "
                        "print('  Detail: 127.0.0.1: Connection refused'); "
                        "print('Ask for help or search for solutions at https://x'); sys.exit(1)")
    assert certs.run_once() is False
    text = out.text()
    assert "acme-issuance-started" in text
    assert "acme-issuance-failed" in text and "127.0.0.1: Connection refused" in text
    assert renew_once(certs.acme_config, [DOMAIN], Logger("off"), "client") == 1


def test_certbot_success_without_a_new_certificate_is_a_failure(tmp_path):
    out = Lines()
    certs = certs_for(tmp_path, log=Logger("info", stream=out))
    fake_certbot(certs, "print('Certificate not yet due for renewal')")
    assert certs.run_once() is False
    assert "no new certificate" in out.text()


def test_certbot_deadline_kills_it(tmp_path):
    out = Lines()
    certs = certs_for(tmp_path, log=Logger("info", stream=out))
    certs.certbot_timeout = 0.5
    fake_certbot(certs, "import time; time.sleep(30)")
    assert certs.run_once() is False
    assert "timed out" in out.text()


def test_certbot_success_is_verified_and_announced(tmp_path):
    out = Lines()
    ready = []
    certs = certs_for(tmp_path, log=Logger("info", stream=out))
    certs.on_ready = ready.append
    now = dt.datetime.now(UTC)
    issued = lineage(certs.state_dir, DOMAIN, now - dt.timedelta(days=80),
                     now + dt.timedelta(days=10))
    fake_certbot(certs, f"""
import datetime as dt, sys
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from pathlib import Path
from tests.test_acme_plugin import lineage
now = dt.datetime.now(dt.UTC)
lineage(Path({str(certs.state_dir)!r}), {DOMAIN!r}, now, now + dt.timedelta(days=90), version=2)
""")
    assert certs.run_once() is True
    text = out.text()
    assert "acme-renewal-due" in text
    assert "acme-certificate-ready" in text and f"public-hostname={DOMAIN}" in text
    assert format(issued.serial_number, "x") not in text.split("acme-certificate-ready")[1]
    assert ready == [DOMAIN]
    assert not certs.due(DOMAIN)
    assert renew_once(certs.acme_config, [DOMAIN], Logger("off"), "client") == 0


def test_certbot_reason_picks_the_meaningful_line():
    output = """Saving debug log to /state/logs/letsencrypt.log
An unexpected error occurred:
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='127.0.0.1', port=9): refused
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile"""
    assert certbot_reason(output).startswith("requests.exceptions.ConnectionError")
    assert certbot_reason("") == "certbot failed without a message"


class Slept(Exception):
    """Ends a scheduler loop driven by `record_sleeps`."""


def record_sleeps(certs, count):
    """Give `certs` a sleep that records each delay and ends the loop at the `count`th."""
    delays = []

    def sleep(seconds):
        delays.append(seconds)
        if len(delays) == count:
            raise Slept

    certs.sleep = sleep
    return delays


def test_scheduler_retries_failures_with_a_doubling_delay(tmp_path):
    out = Lines()
    certs = certs_for(tmp_path, log=Logger("info", stream=out))
    fake_certbot(certs, "import sys; print('Detail: CA unreachable'); sys.exit(1)")
    certs.retry_seconds = 0.2
    delays = record_sleeps(certs, 5)
    with pytest.raises(Slept):
        certs._schedule()
    assert delays == [0.0, 0.2, 0.4, 0.8, 1.6]  # due at once, then doubling, no tight loop
    failures = [line for line in out.text().splitlines() if "acme-issuance-failed" in line]
    assert len(failures) == 4
    assert "next-retry-delay=1s" in failures[0]  # rounded up to whole seconds


def test_scheduler_starts_the_doubling_again_after_a_success(tmp_path):
    certs = certs_for(tmp_path)
    outcomes = iter([False, False, True, False, False])
    certs.run_once = lambda: next(outcomes)
    certs._next_check_delay = lambda now=None: 43200.0
    delays = record_sleeps(certs, 6)
    with pytest.raises(Slept):
        certs._schedule()
    assert delays == [0.0, 60.0, 120.0, 43200.0, 60.0, 120.0]


def test_retry_windows_double_up_to_the_cap():
    assert retry_windows(60, 3600) == (60, 120, 240, 480, 960, 1920, 3600)
    assert retry_windows(5000, 5000) == (5000,)


def test_stop_kills_the_certbot_group_at_once(tmp_path):
    """A running certbot and the hook it started are gone when stop() returns."""
    certs = certs_for(tmp_path)
    pid_file = tmp_path / "hook.pid"
    fake_certbot(certs, "import pathlib, subprocess, sys, time; "
                        "hook = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                        f"pathlib.Path({str(pid_file)!r}).write_text(str(hook.pid)); time.sleep(60)")
    certs.start()
    with gevent.Timeout(20):
        while not pid_file.exists() or not pid_file.read_text():
            gevent.sleep(0.05)
    hook = int(pid_file.read_text())
    began = time.monotonic()
    certs.stop()
    assert time.monotonic() - began < 2
    assert certs._greenlet is None and certs._proc is None
    with gevent.Timeout(5):
        while _running(hook):
            gevent.sleep(0.05)


def _running(pid):
    """True while `pid` exists and is not a zombie waiting for its reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_scheduler_wakes_when_the_certificate_becomes_due(tmp_path):
    certs = certs_for(tmp_path)
    assert certs.check_seconds == 12 * 3600 and certs.jitter_seconds == 3600
    now = dt.datetime.now(UTC)
    lineage(certs.state_dir, DOMAIN, now - dt.timedelta(seconds=50), now + dt.timedelta(seconds=70))
    delay = certs._next_check_delay(now)
    assert 29 <= delay <= 32  # due when 40 of the 120 s are left


def test_knobs_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNEWARP_ACME_CHECK_SECONDS", "5")
    monkeypatch.setenv("RUNEWARP_ACME_RETRY_SECONDS", "1")
    certs = certs_for(tmp_path)
    assert (certs.check_seconds, certs.retry_seconds) == (5, 1)
    assert certs.jitter_seconds < 1
    assert 4 <= certs._next_check_delay() <= 6
