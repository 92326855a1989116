"""`runewarp client visitor-ca init` and `client visitor-cert issue`: the Visitor CA and the
client certificates it issues, checked with openssl; each bad input is one line."""

import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import run_cli


def issue(ca_dir, out, *extra):
    return run_cli("client", "visitor-cert", "issue", "--dir", ca_dir, "--out-dir", out, *extra)


def test_init_then_issue_makes_a_client_certificate_the_ca_verifies(tmp_path):
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    made = run_cli("client", "visitor-ca", "init", "--dir", ca_dir)
    assert made.stdout == f"{ca_dir / 'visitor-ca.crt'}\n"
    assert stat.S_IMODE(os.stat(ca_dir / "state" / "visitor-ca.key").st_mode) == 0o600
    again = run_cli("client", "visitor-ca", "init", "--dir", ca_dir)
    assert again.stdout == made.stdout and "already exists" in again.stderr
    printed = issue(ca_dir, out, "--name", "alice", "--days", "30").stdout
    assert printed.splitlines() == [str(out / "alice.crt"), str(out / "alice.key")]
    assert stat.S_IMODE(os.stat(out / "alice.key").st_mode) == 0o600
    verified = subprocess.run(["openssl", "verify", "-CAfile", ca_dir / "visitor-ca.crt", "-purpose", "sslclient",
                               out / "alice.crt"], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    cert = x509.load_pem_x509_certificate((out / "alice.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_the_default_folder_is_under_the_xdg_data_home(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    made = run_cli("client", "visitor-ca", "init", env=env).stdout
    assert made == f"{tmp_path / 'data' / 'runewarp' / 'client' / 'visitor-ca' / 'visitor-ca.crt'}\n"


@pytest.mark.parametrize("args, status, line", [
    (["--name", "a b"], 2, "error: command line: --name: 'a b' is not a Visitor certificate name "
                           "(1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"),
    (["--name", "../x"], 2, "error: command line: --name: '../x' is not a Visitor certificate name "
                            "(1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"),
    (["--name", "x", "--days", "0"], 2, "error: command line: --days: '0': expected a number of days, 1-3650"),
    (["--name", "x", "--days", "ten"], 2,
     "error: command line: --days: 'ten': expected a number of days, 1-3650"),
    (["--name", "x", "--dir", "{tmp}/none"], 1,
     "error: {tmp}/none/visitor-ca.crt: missing; run 'runewarp client visitor-ca init' first"),
])
def test_issue_failures_are_one_line(tmp_path, args, status, line):
    run_cli("client", "visitor-ca", "init", "--dir", tmp_path / "ca")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--dir" not in args:
        args += ["--dir", str(tmp_path / "ca")]
    proc = run_cli("client", "visitor-cert", "issue", "--out-dir", tmp_path / "out", *args, check=False)
    assert (proc.returncode, proc.stderr.splitlines()) == (status, [line.format(tmp=tmp_path)])
    assert not (tmp_path / "out").exists()


def test_issue_without_a_name_is_a_usage_error(tmp_path):
    proc = run_cli("client", "visitor-cert", "issue", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid arguments")
