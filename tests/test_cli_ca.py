"""`runewarp ca init` / `ca issue` and `client identity csr`: the control-plane CA and the
short-lived Client certificates it issues, checked with openssl; each bad input is one line."""

import datetime
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from .conftest import run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def made(tmp_path):
    """A control-plane CA, a Client identity, its CSR and its public key (PEM)."""
    ca = tmp_path / "ca"
    run_cli("ca", "init", "--dir", ca)
    identity = run_cli("client", "identity", "init", "--dir", tmp_path / "id").stdout.strip()
    csr = tmp_path / "id.csr"
    csr.write_text(run_cli("client", "identity", "csr", "--dir", tmp_path / "id").stdout)
    public = tmp_path / "id.pub"
    subprocess.run(["openssl", "pkey", "-in", tmp_path / "id" / "client.key", "-pubout", "-out", public],
                   check=True)
    return ca, identity, csr, public


def issue(ca, *args, check=True):
    return run_cli("ca", "issue", "--dir", ca, *args, check=check)


def test_ca_init_keeps_its_key_private_and_an_existing_ca(tmp_path):
    ca = tmp_path / "ca"
    first = run_cli("ca", "init", "--dir", ca)
    assert first.stdout == f"{ca / 'control-plane-ca.crt'}\n"
    assert stat.S_IMODE(os.stat(ca / "state" / "control-plane-ca.key").st_mode) == 0o600
    again = run_cli("ca", "init", "--dir", ca)
    assert again.stdout == first.stdout and "already exists" in again.stderr


def test_the_default_folder_is_under_the_xdg_data_home(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    assert run_cli("ca", "init", env=env).stdout == \
        f"{tmp_path / 'data' / 'runewarp' / 'ca' / 'control-plane-ca.crt'}\n"


@pytest.mark.parametrize("source", ["--csr", "--public-key"])
def test_issued_certificate_verifies_with_openssl_and_names_the_identity(tmp_path, made, source):
    ca, identity, csr, public = made
    before = datetime.datetime.now(datetime.UTC)
    pem = issue(ca, "--identity", identity, source, csr if source == "--csr" else public,
                "--ttl", "15m").stdout
    issued = tmp_path / "managed.crt"
    issued.write_text(pem)
    verified = subprocess.run(["openssl", "verify", "-CAfile", ca / "control-plane-ca.crt",
                               "-purpose", "sslclient", issued], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    cert = x509.load_pem_x509_certificate(pem.encode())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [f"runewarp:identity:{identity}"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    # Valid from 5 minutes back (clock skew) for the TTL from now.
    assert cert.not_valid_before_utc <= before - datetime.timedelta(minutes=4)
    lifetime = cert.not_valid_after_utc - before
    assert datetime.timedelta(minutes=14) < lifetime <= datetime.timedelta(minutes=16)
    # The certificate's key is the identity key: the Client presents it with client.key.
    key_check = subprocess.run(["openssl", "x509", "-in", issued, "-noout", "-pubkey"],
                               capture_output=True, text=True, check=True)
    assert key_check.stdout == public.read_text()


@pytest.mark.parametrize("ttl, seconds", [("90s", 90), ("2", 2), ("1h", 3600), ("24h", 86400)])
def test_durations(made, ttl, seconds):
    ca, identity, csr, _ = made
    cert = x509.load_pem_x509_certificate(issue(ca, "--identity", identity, "--csr", csr,
                                                "--ttl", ttl).stdout.encode())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == seconds + 300


def test_the_default_ttl_is_one_hour(made):
    ca, identity, csr, _ = made
    cert = x509.load_pem_x509_certificate(issue(ca, "--identity", identity, "--csr", csr).stdout.encode())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 3600 + 300


def test_a_tampered_csr_is_refused(tmp_path, made):
    ca, identity, csr, _ = made
    der = bytearray(x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(Encoding.DER))
    der[-3] ^= 0xFF  # inside the signature
    bad = tmp_path / "bad.csr"
    bad.write_text(subprocess.run(["openssl", "req", "-inform", "DER", "-outform", "PEM"], input=bytes(der),
                                  capture_output=True, check=True).stdout.decode())
    proc = issue(ca, "--identity", identity, "--csr", bad, check=False)
    assert (proc.returncode, proc.stderr.splitlines()) == (2, [
        f"error: command line: --csr: {bad}: the CSR's signature does not verify with its own key"])
    assert proc.stdout == ""


@pytest.mark.parametrize("args, key, message", [
    (["--identity", "a" * 64], "--identity", "the key's Client identity is {id}, not " + "a" * 64
     + ": refusing to certify it for another identity"),
    (["--identity", "A" * 64], "--identity", repr("A" * 64) + " is not a Client identity (64 lowercase "
                                                               "hex characters)"),
    (["--identity", "{id}", "--ttl", "25h"], "--ttl",
     "'25h': expected a duration from 1s to 24h (90s, 15m, 1h or seconds)"),
    (["--identity", "{id}", "--ttl", "86401"], "--ttl",
     "'86401': expected a duration from 1s to 24h (90s, 15m, 1h or seconds)"),
    (["--identity", "{id}", "--ttl", "0s"], "--ttl",
     "'0s': expected a duration from 1s to 24h (90s, 15m, 1h or seconds)"),
    (["--identity", "{id}", "--ttl", "1d"], "--ttl",
     "'1d': expected a duration from 1s to 24h (90s, 15m, 1h or seconds)"),
])
def test_bad_input_is_one_line_and_exit_2(made, args, key, message):
    ca, identity, _, public = made
    args = [a.format(id=identity) for a in args]
    proc = issue(ca, *args, "--public-key", public, check=False)
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == \
        (2, [f"error: command line: {key}: {message.format(id=identity)}"], "")


def test_a_file_that_is_no_key_and_a_missing_ca(tmp_path, made):
    ca, identity, csr, _ = made
    proc = issue(ca, "--identity", identity, "--public-key", csr, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: command line: --public-key: {csr}: not a PEM public key")
    assert len(proc.stderr.splitlines()) == 1
    missing = issue(tmp_path / "none", "--identity", identity, "--csr", csr, check=False)
    assert (missing.returncode, missing.stderr.splitlines()) == (1, [
        f"error: {tmp_path / 'none' / 'control-plane-ca.crt'}: missing; run 'runewarp ca init' first"])


def test_csr_is_signed_by_the_identity_key_and_names_it(tmp_path, made):
    _, identity, csr, public = made
    request = x509.load_pem_x509_csr(csr.read_bytes())
    assert request.is_signature_valid
    uris = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [f"runewarp:identity:{identity}"]
    checked = subprocess.run(["openssl", "req", "-in", csr, "-verify", "-noout", "-pubkey"],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == public.read_text(), checked.stderr
    none = run_cli("client", "identity", "csr", "--dir", tmp_path / "nobody", check=False)
    assert none.returncode == 1 and "run 'runewarp client identity init'" in none.stderr
