"""Certificate/key material: cross-checked against the openssl CLI."""

import datetime as dt
import hashlib
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runewarp import certcheck as cc
from runewarp import material as m
from runewarp.errors import MaterialError
from runewarp.proto.hostname import HostnameError

UTC = dt.UTC
LAYOUT = re.compile(r"current|v[0-9]+")  # the store's own folders (runewarp.material.store)


# --------------------------------------------------------------------------
# helpers


def openssl_verify(ca: Path, leaf: Path, *extra: str) -> None:
    r = subprocess.run(
        ["openssl", "verify", "-x509_strict", *extra, "-CAfile", str(ca), str(leaf)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def openssl_verify_fails(ca: Path, leaf: Path) -> bool:
    r = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(leaf)], capture_output=True)
    return r.returncode != 0


def openssl_identity(key_path: Path) -> str:
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key_path), "-pubout", "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout
    return hashlib.sha256(der).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def snapshot(root: Path) -> dict[str, bytes]:
    """The folder as operators and readers see it: its names, links followed, versions aside."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not LAYOUT.fullmatch(p.relative_to(root).parts[0])
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def assert_server_consistent(cert_dir: Path) -> None:
    cert_path, key_path = m.load_server_cert_paths(cert_dir)
    openssl_verify(cert_dir / "server-ca.crt", cert_path, "-purpose", "sslserver")
    assert openssl_identity(key_path) == m.identity_of_certificate(certs(cert_path)[0])
    assert openssl_identity(cert_dir / "state/server-ca.key") == m.identity_of_certificate(
        certs(cert_dir / "server-ca.crt")[0]
    )
    assert certs(cert_path)[1] == certs(cert_dir / "server-ca.crt")[0]


# --------------------------------------------------------------------------
# server material


def test_init_server_cert_layout_and_chain(tmp_path):
    d = tmp_path / "server"
    r = m.init_server_cert(d, "tunnel.example.com")
    assert r.created and r.hostname == "tunnel.example.com"
    assert r.cert_path == d / "server.crt" and r.key_path == d / "server.key"
    assert r.ca_cert_path == d / "server-ca.crt"

    assert mode(d) == 0o700 and mode(d / "state") == 0o700
    assert mode(d / "server.key") == 0o600 and mode(d / "state/server-ca.key") == 0o600
    assert mode(d / "server.crt") == 0o644 and mode(d / "server-ca.crt") == 0o644
    assert sorted(snapshot(d)) == ["server-ca.crt", "server.crt", "server.key", "state/server-ca.key"]

    openssl_verify(d / "server-ca.crt", d / "server.crt", "-purpose", "sslserver",
                   "-verify_hostname", "tunnel.example.com")
    assert_server_consistent(d)

    leaf, ca_in_chain = certs(d / "server.crt")
    (ca,) = certs(d / "server-ca.crt")
    assert ca_in_chain == ca
    assert r.serial == leaf.serial_number == m.certificate_serial(d / "server.crt")
    assert r.not_after == leaf.not_valid_after_utc == m.leaf_not_after(d / "server.crt")

    assert ca.subject.rfc4514_string() == "CN=Runewarp Server CA"
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(ca, x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value
    assert 3649 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3650

    assert ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "tunnel.example.com"
    ]
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ext(leaf, x509.BasicConstraints).value.ca is False
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 90


def test_init_server_cert_is_idempotent(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    r = m.init_server_cert(d, "TUNNEL.example.com.")
    assert r.created is False
    assert r.serial == m.certificate_serial(d / "server.crt")
    assert snapshot(d) == before


def test_init_server_cert_other_hostname_names_both(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "a.example.com")
    with pytest.raises(MaterialError) as e:
        m.init_server_cert(d, "b.example.com")
    assert "a.example.com" in str(e.value) and "b.example.com" in str(e.value)


@pytest.mark.parametrize("missing", ["server.crt", "server.key", "server-ca.crt", "state/server-ca.key"])
def test_init_server_cert_partial_material(tmp_path, missing):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    (d / missing).unlink()
    before = snapshot(d)
    with pytest.raises(MaterialError) as e:
        m.init_server_cert(d, "tunnel.example.com")
    msg = str(e.value)
    assert missing in msg and "rotate-ca" in msg and "remove the folder" in msg
    assert snapshot(d) == before


@pytest.mark.parametrize("bad, why", [
    ("192.0.2.7", "IP"), ("[::1]", "IP literal"), ("*.example.com", "wildcard"),
    ("under_score.example.com", "underscore"), ("bad host/../x", "whitespace"),
])
def test_init_server_cert_refuses_what_the_runtime_cannot_serve(tmp_path, bad, why):
    """The one hostname rule (proto.hostname): the Server hostname is never an IP address."""
    with pytest.raises(HostnameError, match=why):
        m.init_server_cert(tmp_path / "s", bad)
    assert not (tmp_path / "s").exists()


def test_renew_server_cert_keeps_ca(tmp_path):
    d = tmp_path / "server"
    first = m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    r = m.renew_server_cert(d)
    after = snapshot(d)
    assert r.hostname == "tunnel.example.com"
    assert after["server-ca.crt"] == before["server-ca.crt"]
    assert after["state/server-ca.key"] == before["state/server-ca.key"]
    assert after["server.crt"] != before["server.crt"]
    assert after["server.key"] != before["server.key"]
    assert r.serial != first.serial
    assert sorted(after) == sorted(before)
    assert_server_consistent(d)
    assert mode(d / "server.key") == 0o600


def test_renew_server_cert_with_new_hostname(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "old.example.com")
    m.renew_server_cert(d, hostname="new.example.com")
    openssl_verify(d / "server-ca.crt", d / "server.crt", "-verify_hostname", "new.example.com")
    assert m.init_server_cert(d, "new.example.com").created is False


def test_renew_server_cert_uses_now(tmp_path):
    d = tmp_path / "server"
    past = dt.datetime(2020, 1, 1, tzinfo=UTC)
    m.init_server_cert(d, "tunnel.example.com", now=past)
    assert m.leaf_not_after(d / "server.crt") == past + dt.timedelta(days=90)
    r = m.renew_server_cert(d)
    assert r.not_after > dt.datetime.now(UTC) + dt.timedelta(days=89)
    assert_server_consistent(d)


def test_renew_server_cert_without_ca_fails(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    (d / "state/server-ca.key").unlink()
    with pytest.raises(MaterialError, match="rotate-ca"):
        m.renew_server_cert(d)


def test_rotate_server_ca_changes_ca(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes((d / "server-ca.crt").read_bytes())
    before = snapshot(d)
    r = m.rotate_server_ca(d)
    after = snapshot(d)
    assert r.hostname == "tunnel.example.com"
    for name in before:
        assert after[name] != before[name], name
    assert_server_consistent(d)
    assert openssl_verify_fails(old_ca, d / "server.crt")


def test_rotate_server_ca_recovers_partial_material(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    (d / "state/server-ca.key").unlink()
    m.rotate_server_ca(d)
    assert_server_consistent(d)
    assert m.init_server_cert(d, "tunnel.example.com").created is False


def test_load_server_cert_paths_missing(tmp_path):
    with pytest.raises(MaterialError, match="run 'runewarp server cert init'"):
        m.load_server_cert_paths(tmp_path / "nothing")
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    (d / "server.key").unlink()
    with pytest.raises(MaterialError, match="run 'runewarp server cert init'"):
        m.load_server_cert_paths(d)


def test_load_server_cert_paths_mismatched_key(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    other = tmp_path / "other"
    m.init_server_cert(other, "tunnel.example.com")
    (d / "server.key").write_bytes((other / "server.key").read_bytes())
    with pytest.raises(MaterialError, match="does not match"):
        m.load_server_cert_paths(d)


# --------------------------------------------------------------------------
# client identity


def test_init_identity(tmp_path):
    d = tmp_path / "identity"
    r = m.init_identity(d)
    assert r.created
    assert sorted(snapshot(d)) == ["client-identity.txt", "client.crt", "client.key"]
    assert mode(d) == 0o700 and mode(d / "client.key") == 0o600
    assert r.identity == openssl_identity(d / "client.key")
    assert (d / "client-identity.txt").read_text() == r.identity + "\n"
    assert len(r.identity) == 64 and r.identity == r.identity.lower()
    assert m.show_identity(d) == r.identity

    openssl_verify(d / "client.crt", d / "client.crt", "-purpose", "sslclient")
    openssl_verify(d / "client.crt", d / "client.crt", "-partial_chain")
    (cert,) = certs(d / "client.crt")
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=runewarp-client"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 90
    assert m.identity_of_certificate(cert) == r.identity
    der = subprocess.run(["openssl", "x509", "-in", str(d / "client.crt"), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert m.identity_of_certificate_der(der) == r.identity
    assert m.client_identity(cert.public_key()) == r.identity
    assert m.load_identity_paths(d) == (d / "client.crt", d / "client.key")


def test_init_identity_is_idempotent(tmp_path):
    d = tmp_path / "identity"
    first = m.init_identity(d)
    before = snapshot(d)
    again = m.init_identity(d)
    assert again.created is False and again.identity == first.identity
    assert snapshot(d) == before


def test_init_identity_repairs_identity_text(tmp_path):
    d = tmp_path / "identity"
    r = m.init_identity(d)
    (d / "client-identity.txt").write_text("0" * 64 + "\n")
    with pytest.raises(MaterialError, match="run 'runewarp client identity init'"):
        m.show_identity(d)
    assert m.init_identity(d).created is False
    assert m.show_identity(d) == r.identity


@pytest.mark.parametrize("missing", ["client.key", "client.crt"])
def test_init_identity_partial(tmp_path, missing):
    d = tmp_path / "identity"
    m.init_identity(d)
    (d / missing).unlink()
    with pytest.raises(MaterialError, match=missing):
        m.init_identity(d)


def test_renew_identity_keeps_identity(tmp_path):
    d = tmp_path / "identity"
    first = m.init_identity(d, now=dt.datetime.now(UTC) - dt.timedelta(days=70))
    before = snapshot(d)
    r = m.renew_identity(d)
    after = snapshot(d)
    assert r.identity == first.identity
    assert after["client-identity.txt"] == before["client-identity.txt"]
    assert after["client.key"] == before["client.key"]
    assert after["client.crt"] != before["client.crt"]
    assert openssl_identity(d / "client.key") == r.identity
    openssl_verify(d / "client.crt", d / "client.crt", "-partial_chain")
    assert m.identity_needs_renewal(d) is False


def test_rotate_identity_changes_identity(tmp_path):
    d = tmp_path / "identity"
    first = m.init_identity(d)
    before = snapshot(d)
    r = m.rotate_identity(d)
    after = snapshot(d)
    assert r.identity != first.identity
    assert all(after[k] != before[k] for k in before)
    assert openssl_identity(d / "client.key") == r.identity == m.show_identity(d)
    assert mode(d / "client.key") == 0o600


def test_show_identity_missing(tmp_path):
    with pytest.raises(MaterialError, match="run 'runewarp client identity init'"):
        m.show_identity(tmp_path / "none")
    d = tmp_path / "identity"
    m.init_identity(d)
    (d / "client.key").unlink()
    with pytest.raises(MaterialError, match="run 'runewarp client identity init'"):
        m.show_identity(d)


def test_show_identity_detects_foreign_key(tmp_path):
    d, other = tmp_path / "identity", tmp_path / "other"
    m.init_identity(d)
    m.init_identity(other)
    (d / "client.key").write_bytes((other / "client.key").read_bytes())
    with pytest.raises(MaterialError, match="does not match"):
        m.show_identity(d)


def test_identity_needs_renewal(tmp_path):
    now = dt.datetime.now(UTC)
    d = tmp_path / "identity"
    m.init_identity(d, now=now - dt.timedelta(days=70))
    assert m.identity_needs_renewal(d, now) is True
    assert m.identity_needs_renewal(d, now, max_age_days=80) is False

    fresh = tmp_path / "fresh"
    m.init_identity(fresh, now=now)
    assert m.identity_needs_renewal(fresh, now) is False
    assert m.identity_needs_renewal(fresh, now + dt.timedelta(days=61)) is True

    expired = tmp_path / "expired"
    m.init_identity(expired, now=now - dt.timedelta(days=100))
    assert m.identity_needs_renewal(expired, now, max_age_days=1000) is True


# --------------------------------------------------------------------------
# public hostname material


def test_init_public_certs(tmp_path):
    d = tmp_path / "public"
    r = m.init_public_certs(d, ["a.example.com", "b.example.com"])
    assert r.ca_created and [leaf.hostname for leaf in r.leaves] == ["a.example.com", "b.example.com"]
    assert mode(d) == 0o700 and mode(d / "state") == 0o700
    assert mode(d / "state/public-ca.key") == 0o600
    for leaf in r.leaves:
        assert leaf.created
        assert mode(leaf.key_path) == 0o600 and mode(leaf.key_path.parent) == 0o700
        openssl_verify(d / "public-ca.crt", leaf.cert_path, "-purpose", "sslserver",
                       "-verify_hostname", leaf.hostname)
        chain = certs(leaf.cert_path)
        assert len(chain) == 2 and chain[1] == certs(d / "public-ca.crt")[0]
        assert leaf.serial == m.certificate_serial(leaf.cert_path)
        assert openssl_identity(leaf.key_path) == m.identity_of_certificate(chain[0])
        assert m.load_public_cert_paths(d, leaf.hostname) == (leaf.cert_path, leaf.key_path)


def test_init_public_certs_idempotent_and_reuses_ca(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com"])
    before = snapshot(d)
    r = m.init_public_certs(d, ["a.example.com"])
    assert not r.ca_created and not r.leaves[0].created
    assert snapshot(d) == before
    r = m.init_public_certs(d, ["a.example.com", "c.example.com"])
    after = snapshot(d)
    assert not r.ca_created
    assert [leaf.created for leaf in r.leaves] == [False, True]
    assert {k: after[k] for k in before} == before
    openssl_verify(d / "public-ca.crt", d / "c.example.com/public.crt")


def test_init_public_certs_reissues_incomplete_leaf(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com"])
    (d / "a.example.com/public.key").unlink()
    r = m.init_public_certs(d, ["a.example.com"])
    assert r.leaves[0].created
    openssl_verify(d / "public-ca.crt", d / "a.example.com/public.crt")
    m.load_public_cert_paths(d, "a.example.com")


def test_init_public_certs_partial_ca(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com"])
    (d / "state/public-ca.key").unlink()
    with pytest.raises(MaterialError, match="public-ca.key"):
        m.init_public_certs(d, ["a.example.com"])


@pytest.mark.parametrize("bad", ["..", "a/b", "", "192.0.2.1", "state/../x", "a.*.example.com", "*.com",
                                 "under_score.example.com", "bücher.example", " app.example.com"])
def test_public_hostnames_follow_the_one_hostname_rule(tmp_path, bad):
    with pytest.raises(HostnameError):
        m.init_public_certs(tmp_path / "public", [bad])
    assert not (tmp_path / "public").exists()


@pytest.mark.parametrize("reserved", ["state", "current", "v1", "V12."])
def test_public_hostnames_cannot_take_a_layout_folder_name(tmp_path, reserved):
    with pytest.raises(MaterialError, match="layout"):
        m.init_public_certs(tmp_path / "public", [reserved])


def test_renew_public_certs_keeps_ca(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com", "b.example.com"])
    before = snapshot(d)
    r = m.renew_public_certs(d, ["a.example.com"])
    after = snapshot(d)
    assert [leaf.hostname for leaf in r.leaves] == ["a.example.com"]
    assert after["public-ca.crt"] == before["public-ca.crt"]
    assert after["state/public-ca.key"] == before["state/public-ca.key"]
    assert after["a.example.com/public.crt"] != before["a.example.com/public.crt"]
    assert after["b.example.com/public.crt"] == before["b.example.com/public.crt"]
    openssl_verify(d / "public-ca.crt", d / "a.example.com/public.crt")
    r = m.renew_public_certs(d)
    assert [leaf.hostname for leaf in r.leaves] == ["a.example.com", "b.example.com"]


def test_rotate_public_ca_reissues_every_leaf(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com", "b.example.com"])
    old_ca = tmp_path / "old-ca.crt"
    old_ca.write_bytes((d / "public-ca.crt").read_bytes())
    before = snapshot(d)
    r = m.rotate_public_ca(d)
    after = snapshot(d)
    assert sorted(after) == sorted(before)
    assert all(after[k] != before[k] for k in before)
    assert [leaf.hostname for leaf in r.leaves] == ["a.example.com", "b.example.com"]
    for leaf in r.leaves:
        openssl_verify(d / "public-ca.crt", leaf.cert_path)
        assert openssl_verify_fails(old_ca, leaf.cert_path)


# --------------------------------------------------------------------------
# test helper


def test_make_self_signed(tmp_path):
    cert_path, key_path = m.make_self_signed("backend.test", tmp_path / "b")
    assert mode(key_path) == 0o600
    openssl_verify(cert_path, cert_path, "-purpose", "sslserver", "-verify_hostname", "backend.test")
    (cert,) = certs(cert_path)
    assert ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "backend.test"
    ]
    assert openssl_identity(key_path) == m.identity_of_certificate(cert)
    assert (m.leaf_not_after(cert_path) - cert.not_valid_before_utc).days == 90


# --------------------------------------------------------------------------
# key file permissions


LOOSE = 0o666


def _loosen(*paths: Path) -> None:
    for p in paths:
        os.chmod(p, LOOSE)


def _server(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    return d


def _public(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["app.example.com"])
    return d


# (make material, loosen which keys, operation that rewrites material, keys it must leave 0600)
KEY_WRITES = {
    "renew-identity": (lambda t: m.init_identity(t / "id"), ["id/client.key"],
                       lambda t: m.renew_identity(t / "id"), ["id/client.key"]),
    "rotate-identity": (lambda t: m.init_identity(t / "id"), ["id/client.key"],
                        lambda t: m.rotate_identity(t / "id"), ["id/client.key"]),
    "renew-server": (_server, ["server/server.key", "server/state/server-ca.key"],
                     lambda t: m.renew_server_cert(t / "server"),
                     ["server/server.key", "server/state/server-ca.key"]),
    "rotate-server-ca": (_server, ["server/server.key", "server/state/server-ca.key"],
                         lambda t: m.rotate_server_ca(t / "server"),
                         ["server/server.key", "server/state/server-ca.key"]),
    "renew-public": (_public, ["public/app.example.com/public.key", "public/state/public-ca.key"],
                     lambda t: m.renew_public_certs(t / "public"),
                     ["public/app.example.com/public.key", "public/state/public-ca.key"]),
    "rotate-public-ca": (_public, ["public/app.example.com/public.key", "public/state/public-ca.key"],
                         lambda t: m.rotate_public_ca(t / "public"),
                         ["public/app.example.com/public.key", "public/state/public-ca.key"]),
}


@pytest.mark.parametrize("name", KEY_WRITES)
def test_key_writes_end_private_whatever_the_umask_and_old_mode(tmp_path, name):
    make, loosen, operation, private = KEY_WRITES[name]
    make(tmp_path)
    _loosen(*(tmp_path / p for p in loosen))
    old = os.umask(0)
    try:
        operation(tmp_path)
    finally:
        os.umask(old)
    assert {p: oct(mode(tmp_path / p)) for p in private} == {p: oct(0o600) for p in private}


def test_renew_identity_on_a_0666_key_leaves_it_0600_and_unchanged(tmp_path):
    d = tmp_path / "identity"
    m.init_identity(d, now=dt.datetime.now(UTC) - dt.timedelta(days=70))
    os.chmod(d / "client.key", 0o666)
    key = (d / "client.key").read_bytes()
    m.renew_identity(d)
    assert mode(d / "client.key") == 0o600
    assert (d / "client.key").read_bytes() == key


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o620, 0o602, 0o666, 0o610, 0o670],
                         ids=lambda v: f"0{v:o}")
def test_key_permission_problem_reports_group_or_other_access(tmp_path, loose):
    d = _server(tmp_path)
    key = d / "server.key"
    os.chmod(key, loose)
    problem = m.key_permission_problem(key)
    assert problem is not None
    assert str(key) in problem
    assert f"0{loose:o}" in problem
    assert f"chmod 600 {key}" in problem


@pytest.mark.parametrize("private", [0o600, 0o400, 0o700], ids=lambda v: f"0{v:o}")
def test_key_permission_problem_accepts_owner_only(tmp_path, private):
    d = _server(tmp_path)
    os.chmod(d / "server.key", private)
    assert m.key_permission_problem(d / "server.key") is None


def test_key_permission_problem_ignores_missing_files(tmp_path):
    assert m.key_permission_problem(tmp_path / "absent.key") is None


def test_key_permission_problem_quotes_odd_paths(tmp_path):
    key = tmp_path / "my keys" / "server.key"
    m.atomic_write(key, b"k", 0o644)
    assert "chmod 600 '" in m.key_permission_problem(key)


def test_server_and_client_key_files(tmp_path):
    server = _server(tmp_path)
    assert m.server_key_files(server) == [server / "server.key", server / "state/server-ca.key"]
    m.init_identity(tmp_path / "id")
    public = _public(tmp_path)
    m.init_public_certs(public, ["b.example.com"])
    assert m.client_key_files(tmp_path / "id") == [tmp_path / "id/client.key"]
    assert m.client_key_files(tmp_path / "id", public) == [
        tmp_path / "id/client.key", public / "state/public-ca.key",
        public / "app.example.com/public.key", public / "b.example.com/public.key"]
    assert m.client_key_files(tmp_path / "id", public, ["B.example.com."]) == [
        tmp_path / "id/client.key", public / "state/public-ca.key",
        public / "b.example.com/public.key"]


def test_key_permission_problems_lists_every_loose_key(tmp_path):
    server = _server(tmp_path)
    assert m.key_permission_problems(m.server_key_files(server)) == []
    os.chmod(server / "server.key", 0o644)
    os.chmod(server / "state/server-ca.key", 0o660)
    problems = m.key_permission_problems(m.server_key_files(server))
    assert len(problems) == 2
    assert "server.key" in problems[0] and "0644" in problems[0]
    assert "server-ca.key" in problems[1] and "0660" in problems[1]


# --------------------------------------------------------------------------
# certificate upkeep decisions (runewarp.certcheck): pure functions of (certificate, now)

T0 = dt.datetime(2030, 1, 1, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def dated(not_before=T0, days=90, names=("tunnel.example.com",), cn="tunnel.example.com"):
    """A leaf valid from `not_before` for `days` days; only its dates and names matter here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + days * DAY))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(key, hashes.SHA256())


def at(fraction, days=90):
    """The moment `fraction` of a `days`-long lifetime starting at T0 has passed."""
    return T0 + fraction * days * DAY


def test_renewal_is_due_once_two_thirds_of_the_lifetime_have_passed():
    cert = dated()
    assert cc.renewal_due_at(cert) == T0 + 60 * DAY
    assert cc.validity(cert, at(0.59)) == cc.VALID
    assert not cc.renewal_due(cert, at(0.59))
    assert cc.renewal_due(cert, at(0.67))
    assert not cc.renewal_due(cert, T0 + 60 * DAY - dt.timedelta(seconds=1))
    assert cc.renewal_due(cert, T0 + 60 * DAY)
    # The fraction follows the real lifetime, not a fixed 90 days.
    assert cc.renewal_due_at(dated(days=30)) == T0 + 20 * DAY


def test_not_yet_valid_and_expired_certificates_are_not_valid_and_due():
    cert = dated()
    early = T0 - dt.timedelta(minutes=1)
    assert cc.validity(cert, early) == cc.NOT_YET_VALID and cc.renewal_due(cert, early)
    assert cc.validity(cert, T0 + 90 * DAY) == cc.EXPIRED and cc.renewal_due(cert, T0 + 90 * DAY)
    assert cc.validity(cert, T0 + 200 * DAY) == cc.EXPIRED
    assert "not valid before 2030-01-01T00:00:00Z" in cc.describe(cert, early)
    assert "expired on 2030-04-01T00:00:00Z" in cc.describe(cert, T0 + 100 * DAY)
    assert "10 days left" in cc.describe(cert, T0 + 80 * DAY)


def test_expiry_warning_starts_thirty_days_before_not_after():
    cert = dated()
    ten_days_left = T0 + 80 * DAY
    assert cc.expiring(cert, ten_days_left) and cc.days_left(cert, ten_days_left) == 10
    assert cc.expiring(cert, T0 + 60 * DAY)  # exactly 30 days left
    assert not cc.expiring(cert, T0 + 59 * DAY)  # 31 days left
    assert cc.expiring(cert, T0 + 95 * DAY) and cc.days_left(cert, T0 + 95 * DAY) == 0


@pytest.mark.parametrize("moment, renewable, verdict", [
    (at(0.59), True, cc.OK),
    (at(0.67), True, cc.RENEW),
    (T0 + 80 * DAY, True, cc.RENEW),               # 10 days left
    (T0 + 100 * DAY, True, cc.RENEW),              # expired
    (T0 - DAY, True, cc.RENEW),                    # not yet valid
    (at(0.59), False, cc.OK),                      # 36.9 days left
    (at(0.67), False, cc.WARN),                    # 29.7 days left
    (T0 + 80 * DAY, False, cc.WARN),
    (T0 + 100 * DAY, False, cc.REFUSE),
    (T0 - DAY, False, cc.REFUSE),
], ids=["self-59%", "self-67%", "self-10-days-left", "self-expired", "self-not-yet-valid",
        "other-59%", "other-67%", "other-10-days-left", "other-expired", "other-not-yet-valid"])
def test_decide_renews_its_own_certificates_and_reports_the_others(moment, renewable, verdict):
    assert cc.decide(dated(), moment, renewable=renewable) == verdict
    assert cc.decide(dated(), moment, renewable=renewable,
                     hostname="tunnel.example.com") == verdict


def test_decide_refuses_a_certificate_for_another_hostname_first():
    other = dated(names=("other.example.com",), cn="tunnel.example.com")
    for moment in (at(0.1), at(0.9), T0 + 100 * DAY):
        for renewable in (True, False):
            assert cc.decide(other, moment, renewable=renewable,
                             hostname="tunnel.example.com") == cc.WRONG_HOSTNAME
    assert cc.decide(other, at(0.1), renewable=True) == cc.OK  # no hostname to check


def test_names_hostname_reads_the_san_dns_names_as_tls_clients_do():
    cert = dated(names=("Tunnel.Example.com.", "*.apps.example.com"))
    assert cc.dns_names(cert) == ("tunnel.example.com", "*.apps.example.com")
    assert cc.names_hostname(cert, "tunnel.example.com")
    assert cc.names_hostname(cert, "TUNNEL.example.com.")
    assert cc.names_hostname(cert, "a.apps.example.com")
    assert not cc.names_hostname(cert, "apps.example.com")
    assert not cc.names_hostname(cert, "a.b.apps.example.com")
    assert not cc.names_hostname(cert, "other.example.com")
    assert not cc.names_hostname(dated(names=("*.com",)), "example.com")
    # The subject CN is not a name TLS clients accept when a SAN is there (and Go never does).
    assert not cc.names_hostname(dated(names=(), cn="tunnel.example.com"), "tunnel.example.com")


def test_expiry_warnings_are_due_at_most_once_a_day():
    assert cc.warning_due(None, T0)
    assert not cc.warning_due(T0, T0 + dt.timedelta(hours=23))
    assert cc.warning_due(T0, T0 + DAY)
    warnings = cc.ExpiryWarnings()
    first, renewed = dated(), dated()
    assert warnings.due("a.example.com", first, T0)
    assert not warnings.due("a.example.com", first, T0 + dt.timedelta(hours=23))
    assert warnings.due("b.example.com", first, T0)  # each hostname on its own
    assert warnings.due("a.example.com", renewed, T0 + dt.timedelta(hours=1))  # a new serial
    assert warnings.due("a.example.com", renewed, T0 + dt.timedelta(hours=25))


def test_naive_times_are_utc():
    cert = dated()
    naive = (T0 + 70 * DAY).replace(tzinfo=None)
    assert cc.renewal_due(cert, naive) and cc.expiring(cert, naive)
    assert cc.rfc3339(naive) == "2030-03-12T00:00:00Z"


def test_certcheck_does_no_io():
    import ast
    tree = ast.parse(Path(cc.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    assert not roots & {"os", "pathlib", "time", "socket", "ssl", "OpenSSL", "gevent",
                        "subprocess", "threading", "select"}


def test_server_cert_renewable_only_with_the_ca_that_issued_it(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    assert m.server_cert_renewable(d)
    leaf = m.load_certificate(d / "server.crt")
    assert cc.issued_by(leaf, m.load_certificate(d / "server-ca.crt"))
    # A certificate from another CA dropped into a folder that still holds our CA.
    other = tmp_path / "other"
    m.init_server_cert(other, "tunnel.example.com")
    for name in ("server.crt", "server.key"):
        (d / name).write_bytes((other / name).read_bytes())
    assert not m.server_cert_renewable(d)
    assert not cc.issued_by(m.load_certificate(d / "server.crt"),
                            m.load_certificate(d / "server-ca.crt"))
    (other / "state" / "server-ca.key").unlink()
    assert not m.server_cert_renewable(other)
    assert not m.server_cert_renewable(tmp_path / "absent")


def test_public_cert_renewable_only_with_the_ca_that_issued_it(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["app.example.com"])
    assert m.public_cert_renewable(d, "app.example.com")
    assert m.public_cert_renewable(d, "APP.example.com.")
    assert not m.public_cert_renewable(d, "absent.example.com")
    (d / "state" / "public-ca.key").unlink()
    assert not m.public_cert_renewable(d, "app.example.com")


def test_renewals_dated_by_now_keep_the_ca(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com", now=T0)
    ca = (d / "server-ca.crt").read_bytes()
    r = m.renew_server_cert(d, hostname="tunnel.example.com", now=T0 + 61 * DAY)
    assert r.not_after == T0 + 151 * DAY
    assert (d / "server-ca.crt").read_bytes() == ca
    assert not cc.renewal_due(m.load_certificate(d / "server.crt"), T0 + 62 * DAY)
