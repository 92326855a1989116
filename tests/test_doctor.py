"""The doctor's file checks and pure parts, in process: material made by our own
functions, dated by the test; no network (tests/e2e/test_doctor.py has that)."""

import datetime as dt
import json
import os
from functools import partial

import pytest

from runewarp import material
from runewarp.config import ServiceConfig
from runewarp.doctor import checks
from runewarp.doctor.client import mirroring
from runewarp.doctor.material import Leaf, certificate, key_files
from runewarp.proto.control import Welcome
from runewarp.proto.services import ServiceTable

HOST = "tunnel.example.com"
# Certificates our CLI makes now are judged at the time of the check (a time taken at import
# can precede their notBefore); NOW serves the leaves a test dates itself.
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def statuses(results):
    return {r.check: r.status for r in results}


def server_leaf(cert_dir, ca_dir=None):
    cert_path, key_path = material.server_cert_paths(cert_dir)
    return Leaf(HOST, cert_path, key_path, (ca_dir or cert_dir) / material.SERVER_CA_CERT,
                partial(material.load_server_cert_paths, cert_dir),
                material.server_cert_renewable(cert_dir), "Server", "INIT", "RENEW", "REPLACE")


def self_signed_leaf(tmp_path, now):
    cert_path, key_path = material.make_self_signed(HOST, tmp_path, now=now)
    return Leaf(HOST, cert_path, key_path, None, lambda: None, False, "Server", "INIT", "RENEW",
                "REPLACE")


def test_material_from_server_cert_init_is_all_ok(tmp_path):
    material.init_server_cert(tmp_path, HOST)
    results = list(certificate(server_leaf(tmp_path), dt.datetime.now(dt.UTC)))
    assert statuses(results) == {f"certificate-{c} {HOST}": "ok"
                                 for c in ("files", "key", "expiry", "hostname", "chain")}
    assert "the Server renews it itself" in results[2].detail


def test_missing_files_is_one_line(tmp_path):
    results = list(certificate(server_leaf(tmp_path), dt.datetime.now(dt.UTC)))
    assert results == [checks.fail(f"certificate-files {HOST}",
                                   f"missing {tmp_path / 'server.crt'}, {tmp_path / 'server.key'}",
                                   "INIT")]


def test_expiry_of_a_certificate_runewarp_cannot_renew(tmp_path):
    leaf = self_signed_leaf(tmp_path, NOW - 80 * DAY)
    soon = next(r for r in certificate(leaf, NOW) if r.check.startswith("certificate-expiry"))
    assert (soon.status, soon.fix) == ("warn", "REPLACE") and "days left" in soon.detail
    later = next(r for r in certificate(leaf, NOW + 20 * DAY)
                 if r.check.startswith("certificate-expiry"))
    assert (later.status, later.fix) == ("fail", "REPLACE") and "expired on" in later.detail
    early = next(r for r in certificate(leaf, NOW - 81 * DAY)
                 if r.check.startswith("certificate-expiry"))
    assert early.status == "fail" and "not valid before" in early.detail


def test_no_ca_file_leaves_the_issuer_unchecked(tmp_path):
    results = statuses(certificate(self_signed_leaf(tmp_path, NOW), NOW))
    assert set(results.values()) == {"ok"}


def test_certificate_from_another_ca(tmp_path):
    material.init_server_cert(tmp_path / "a", HOST)
    material.init_server_cert(tmp_path / "b", HOST)
    results = {r.check: r for r in certificate(server_leaf(tmp_path / "a", tmp_path / "b"), dt.datetime.now(dt.UTC))}
    chain = results[f"certificate-chain {HOST}"]
    assert (chain.status, chain.fix) == ("fail", "RENEW")
    assert f"was not issued by {tmp_path / 'b/server-ca.crt'}" in chain.detail


def test_key_of_another_certificate(tmp_path):
    material.init_server_cert(tmp_path / "a", HOST)
    material.init_server_cert(tmp_path / "b", HOST)
    (tmp_path / "a/server.key").write_bytes((tmp_path / "b/server.key").read_bytes())
    results = list(certificate(server_leaf(tmp_path / "a"), dt.datetime.now(dt.UTC)))
    assert statuses(results) == {f"certificate-files {HOST}": "ok", f"certificate-key {HOST}": "fail"}
    assert "does not match" in results[-1].detail


def test_key_files(tmp_path):
    _, key = material.make_self_signed(HOST, tmp_path)
    assert [r.status for r in key_files([key, tmp_path / "missing.key"])] == ["ok"]
    key.chmod(0o640)
    [result] = key_files([key])
    assert result == checks.fail(f"key-permissions {key}", "private key is accessible to group "
                                 "or others (mode 0640)", f"chmod 600 {key}")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_key_of_another_user(tmp_path):
    _, key = material.make_self_signed(HOST, tmp_path)
    os.chown(key, 65534, -1)
    [result] = key_files([key])
    assert result.status == "fail" and "not root" in result.detail
    assert result.fix.startswith(f"chown root {key}")


# --- Hostname mirroring from the welcome ------------------------------------------------


def services(*hostname_lists):
    return ServiceTable([ServiceConfig(tuple(h), ("127.0.0.1", 1)) for h in hostname_lists])


def test_mirroring_agrees():
    results = list(mirroring("s:443", Welcome("apps", "1", ("a.example", "b.example")),
                             services(["a.example"], ["b.example"])))
    assert statuses(results) == {"mirroring s:443": "ok"}


def test_mirroring_drift_is_one_line_per_name():
    results = list(mirroring("s:443", Welcome("apps", "1", ("a.example", "b.example")),
                             services(["b.example", "c.example", "d.example"])))
    assert statuses(results) == {"mirroring a.example": "fail", "mirroring c.example": "warn",
                                 "mirroring d.example": "warn"}


def test_catch_all_mirrors_everything():
    results = list(mirroring("s:443", Welcome("apps", "1", ("a.example",)), services([])))
    assert statuses(results) == {"mirroring s:443": "ok"}
    assert "Catch-all" in results[0].detail


def test_welcome_from_an_older_server_cannot_be_checked():
    [result] = mirroring("s:443", Welcome("apps", "0.9"), services(["a.example"]))
    assert (result.check, result.status) == ("mirroring s:443", "warn")
    assert "does not send its Tunnel's hostnames" in result.detail


# --- output -------------------------------------------------------------------------------


def test_text_line_names_the_fix_unless_ok():
    assert checks.line(checks.ok("config", "valid")) == "ok   config: valid"
    assert checks.line(checks.warn("resolve a", "elsewhere", "point it here")) == \
        "warn resolve a: elsewhere; fix: point it here"
    assert checks.line(checks.fail("tcp s", "refused", "start it")) == \
        "fail tcp s: refused; fix: start it"


def test_json_and_exit_status():
    results = [checks.ok("config", "valid"), checks.warn("resolve a", "x", "y")]
    assert json.loads(checks.as_json(results)) == [
        {"check": "config", "status": "ok", "detail": "valid", "fix": ""},
        {"check": "resolve a", "status": "warn", "detail": "x", "fix": "y"}]
    assert checks.exit_status(results) == 0
    assert checks.exit_status([*results, checks.fail("tcp s", "refused", "start it")]) == 1


def test_local_addresses():
    from runewarp.doctor.probes import is_local

    assert is_local("127.0.0.1") and is_local("127.0.0.2") and is_local("::1")
    assert not is_local("192.0.2.1")  # TEST-NET-1: routed away, or not at all
