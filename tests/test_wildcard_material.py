"""Wildcard certificates for terminate Services: the folder `public-cert init` writes, the
certificate the runtime picks for an SNI, and what the doctor says about wildcards."""

import datetime as dt
import shlex
from functools import partial

import pytest
from OpenSSL import SSL

from runewarp import certcheck, material
from runewarp.config import ServiceConfig
from runewarp.doctor.client import _public_leaf, mirroring
from runewarp.doctor.material import certificate
from runewarp.doctor.server import exact_under_wildcard
from runewarp.proto.hostname import sample_name
from runewarp.proto.hostname import HostnameError
from runewarp.io.terminate import PublicCertificates
from runewarp.logs import Logger
from runewarp.proto.control import Welcome
from runewarp.proto.services import ServiceTable

from .conftest import run_cli



def test_public_cert_init_writes_a_wildcard_into_a_safe_folder(tmp_path):
    folder = tmp_path / "public"
    proc = run_cli("client", "public-cert", "init", "--hostname", "*.Example.COM.", "--dir", folder)
    path = folder / "_wildcard.example.com" / material.PUBLIC_CERT
    assert proc.stdout.splitlines() == [str(path)]
    cert = material.load_certificate(path)
    assert certcheck.dns_names(cert) == ("*.example.com",)
    assert certcheck.names_hostname(cert, "a.example.com")
    assert not certcheck.names_hostname(cert, "b.a.example.com")
    assert material.public_cert_renewable(folder, "*.example.com")
    assert material.load_public_cert_paths(folder, "*.example.com")[0] == path
    assert folder / "_wildcard.example.com" / material.PUBLIC_KEY in material.client_key_files(
        tmp_path / "identity", folder)
    # renew and rotate-ca find it again from its folder name
    [leaf] = material.renew_public_certs(folder).leaves
    assert (leaf.hostname, leaf.cert_path) == ("*.example.com", path)
    [leaf] = material.rotate_public_ca(folder).leaves
    assert leaf.hostname == "*.example.com"


@pytest.mark.parametrize("value, message", [
    ("a.*.example.com", "the '*' is the whole first label"),
    ("*.com", "at least two labels"),
    ("under_score.example.com", "underscores"),
])
def test_public_cert_init_refuses_what_the_runtime_could_never_serve(tmp_path, value, message):
    proc = run_cli("client", "public-cert", "init", "--hostname", value, "--dir", tmp_path / "p",
                   check=False, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "p").exists()
    with pytest.raises(HostnameError):
        material.init_public_certs(tmp_path / "q", [value])


class Events(Logger):
    def __init__(self):
        super().__init__("trace")
        self.events = []

    def log(self, level, event, **fields):
        self.events.append((level, event, fields))


def test_the_runtime_picks_the_wildcard_certificate_for_a_matching_sni(tmp_path):
    folder = tmp_path / "public"
    material.init_public_certs(folder, ["*.example.com", "a.example.com"])
    events = Events()
    certs = PublicCertificates(folder, events)
    certs.upkeep(["*.example.com", "a.example.com"], announce=True)
    wild = certs.context_for("b.example.com")
    assert isinstance(wild, SSL.Context)
    assert certs.context_for("c.example.com") is wild  # one context, one key, for every name
    assert certs.context_for("a.example.com") is not wild  # the exact name's own certificate
    loaded = [f["public_hostname"] for level, e, f in events.events if e == "public-certificate-loaded"]
    assert loaded == ["*.example.com", "a.example.com"]
    assert set(certs._contexts._entries) == {"*.example.com", "a.example.com"}


def test_a_missing_wildcard_certificate_names_the_command_that_makes_it(tmp_path):
    events = Events()
    certs = PublicCertificates(tmp_path / "public", events)
    certs.upkeep(["*.example.com"], announce=True)
    fix = events.events[0][2]["fix"]
    assert fix.endswith("--hostname '*.example.com'")
    assert shlex.split(fix)[-1] == "*.example.com"
    certs.context_for("x.example.com")
    certs.context_for("y.example.com")
    assert set(certs._contexts._entries) == {"*.example.com"}  # Visitors add no key


def test_doctor_checks_a_wildcard_certificate_in_its_folder(tmp_path):
    folder = tmp_path / "public"
    material.init_public_certs(folder, ["*.example.com"])
    # Judged after the certificate exists: a time taken at import can precede its notBefore.
    now = dt.datetime.now(dt.UTC)
    results = list(certificate(_public_leaf(folder, "*.example.com", "-c c.toml"), now))
    assert {r.check: r.status for r in results} == {
        f"certificate-{what} *.example.com": "ok" for what in ("files", "key", "expiry", "hostname", "chain")}
    leaf = _public_leaf(tmp_path / "none", "*.example.com", "-c c.toml")
    assert leaf.init == "runewarp client public-cert init --hostname '*.example.com' -c c.toml"


def test_doctor_notes_an_exact_name_under_another_owners_wildcard():
    [note] = exact_under_wildcard({"*.example.com": "Tunnel 'wild'", "a.example.com": "Tunnel 'exact'",
                                   "b.example.com": "Tunnel 'wild'", "c.b.example.com": "Tunnel 'exact'"})
    assert (note.check, note.status) == ("wildcard-overlap a.example.com", "ok")
    assert note.detail == ("note: *.example.com of Tunnel 'wild' covers a.example.com too; an exact name "
                           "wins over a wildcard, so Tunnel 'exact' takes it")
    assert sample_name("*.example.com") == "wildcard-probe.example.com"
    assert sample_name("a.example.com") == "a.example.com"


def test_doctor_mirroring_understands_wildcards():
    table = partial(ServiceTable)
    services = table([ServiceConfig(("*.example.com",), ("127.0.0.1", 1)),
                      ServiceConfig(("a.example.com",), ("127.0.0.1", 2))])
    results = list(mirroring("s:443", Welcome("apps", "1", ("*.example.com", "a.example.com")), services))
    assert [(r.check, r.status) for r in results] == [("mirroring s:443", "ok")]
    narrow = table([ServiceConfig(("a.example.com",), ("127.0.0.1", 1))])
    results = list(mirroring("s:443", Welcome("apps", "1", ("*.example.com",)), narrow))
    assert [(r.check, r.status) for r in results] == [("mirroring *.example.com", "fail")]
