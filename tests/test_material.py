"""Certificate/key material: cross-checked against the openssl CLI."""

import datetime as dt
import hashlib
import os
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

UTC = dt.UTC


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
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class ReplaceCrash:
    """Make the n-th os.replace raise, as if the process died there."""

    def __init__(self, monkeypatch, n: int):
        self.calls = 0
        self.n = n
        real = os.replace

        def fake(src, dst, *a, **kw):
            self.calls += 1
            if self.calls == self.n:
                raise OSError(5, "simulated crash")
            return real(src, dst, *a, **kw)

        monkeypatch.setattr(os, "replace", fake)


def count_replaces(monkeypatch, fn) -> int:
    counter = ReplaceCrash(monkeypatch, n=0)
    fn()
    monkeypatch.undo()
    return counter.calls


def assert_server_consistent(cert_dir: Path) -> None:
    cert_path, key_path = m.load_server_cert_paths(cert_dir)
    openssl_verify(cert_dir / "server-ca.crt", cert_path, "-purpose", "sslserver")
    assert openssl_identity(key_path) == m.identity_of_certificate(certs(cert_path)[0])
    assert openssl_identity(cert_dir / "state/server-ca.key") == m.identity_of_certificate(
        certs(cert_dir / "server-ca.crt")[0]
    )
    assert certs(cert_path)[1] == certs(cert_dir / "server-ca.crt")[0]


# --------------------------------------------------------------------------
# primitives


def test_atomic_write_creates_private_parents_and_sets_mode(tmp_path):
    old = os.umask(0)
    try:
        target = tmp_path / "a" / "b" / "f.key"
        m.atomic_write(target, b"secret", 0o600)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"secret"
    assert mode(target) == 0o600
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    m.atomic_write(target, b"new", 0o644)
    assert target.read_bytes() == b"new" and mode(target) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.key"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    m.atomic_write(target, b"old")
    ReplaceCrash(monkeypatch, 1)
    with pytest.raises(OSError):
        m.atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_ensure_dir_ignores_umask(tmp_path):
    old = os.umask(0)
    try:
        m.ensure_dir(tmp_path / "x" / "y")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x") == 0o700 and mode(tmp_path / "x" / "y") == 0o700


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


def test_init_server_cert_ip_address(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "192.0.2.7")
    openssl_verify(d / "server-ca.crt", d / "server.crt", "-verify_ip", "192.0.2.7")


def test_init_server_cert_rejects_bad_hostname(tmp_path):
    with pytest.raises(MaterialError):
        m.init_server_cert(tmp_path / "s", "bad host/../x")
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


def test_renew_server_crash_on_second_replace_keeps_old_material(tmp_path, monkeypatch):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    ReplaceCrash(monkeypatch, 2)
    with pytest.raises(MaterialError):
        m.renew_server_cert(d)
    monkeypatch.undo()
    assert snapshot(d) == before
    openssl_verify(d / "server-ca.crt", d / "server.crt")
    assert_server_consistent(d)
    m.renew_server_cert(d)
    assert_server_consistent(d)


def test_hard_crash_leftovers_are_ignored_then_discarded(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    (d / "server.key.new").write_bytes(b"half-staged")
    (d / ".server.crt.new.x1y2.tmp").write_bytes(b"half-written")
    assert_server_consistent(d)
    m.renew_server_cert(d)
    assert sorted(snapshot(d)) == sorted(before)
    assert_server_consistent(d)


def test_interrupted_commit_is_rolled_forward_by_readers(tmp_path):
    d = tmp_path / "identity"
    m.init_identity(d)
    other = tmp_path / "other"
    new = m.init_identity(other).identity
    for name in ("client.key", "client.crt", "client-identity.txt"):
        (d / (name + ".new")).write_bytes((other / name).read_bytes())
    # as if the process died after the journal and the first rename
    os.replace(d / "client.key.new", d / "client.key")
    (d / ".pending-commit").write_text('["client.key", "client.crt", "client-identity.txt"]')
    assert m.show_identity(d) == new
    assert sorted(snapshot(d)) == ["client-identity.txt", "client.crt", "client.key"]
    m.load_identity_paths(d)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_renew_server_in_read_only_folder_keeps_old_material(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    os.chmod(d, 0o500)
    try:
        with pytest.raises(MaterialError):
            m.renew_server_cert(d)
    finally:
        os.chmod(d, 0o700)
    assert snapshot(d) == before
    assert_server_consistent(d)


def test_rotate_server_ca_crash_at_every_step_is_all_or_nothing(tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    m.init_server_cert(probe, "tunnel.example.com")
    total = count_replaces(monkeypatch, lambda: m.rotate_server_ca(probe))
    staged_and_journal = 4 + 1
    assert total == staged_and_journal + 4
    for n in range(1, total + 1):
        d = tmp_path / f"s{n}"
        m.init_server_cert(d, "tunnel.example.com")
        before = snapshot(d)
        ReplaceCrash(monkeypatch, n)
        with pytest.raises(MaterialError):
            m.rotate_server_ca(d)
        monkeypatch.undo()
        assert_server_consistent(d)  # completes an interrupted commit first
        after = snapshot(d)
        assert sorted(after) == sorted(before), n
        if n <= staged_and_journal:
            assert after == before, n
        else:
            assert all(after[k] != before[k] for k in before), n


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


def test_renew_identity_crash_on_second_replace(tmp_path, monkeypatch):
    d = tmp_path / "identity"
    m.init_identity(d)
    before = snapshot(d)
    ReplaceCrash(monkeypatch, 2)
    with pytest.raises(MaterialError):
        m.renew_identity(d)
    monkeypatch.undo()
    assert snapshot(d) == before
    openssl_verify(d / "client.crt", d / "client.crt", "-partial_chain")
    assert m.show_identity(d) == before["client-identity.txt"].decode().strip()


def test_rotate_identity_crash_at_every_step_is_all_or_nothing(tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    m.init_identity(probe)
    total = count_replaces(monkeypatch, lambda: m.rotate_identity(probe))
    assert total == 3 + 1 + 3
    for n in range(1, total + 1):
        d = tmp_path / f"i{n}"
        old = m.init_identity(d).identity
        before = snapshot(d)
        ReplaceCrash(monkeypatch, n)
        with pytest.raises(MaterialError):
            m.rotate_identity(d)
        monkeypatch.undo()
        shown = m.show_identity(d)
        cert_path, key_path = m.load_identity_paths(d)
        assert openssl_identity(key_path) == shown == m.identity_of_certificate(certs(cert_path)[0])
        if n <= 4:
            assert shown == old and snapshot(d) == before, n
        else:
            assert shown != old, n


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


@pytest.mark.parametrize("bad", ["..", "a/b", "", "192.0.2.1", "state/../x"])
def test_public_hostnames_validated(tmp_path, bad):
    with pytest.raises(MaterialError):
        m.init_public_certs(tmp_path / "public", [bad])


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


def test_rotate_public_ca_crash_keeps_old_material(tmp_path, monkeypatch):
    d = tmp_path / "public"
    m.init_public_certs(d, ["a.example.com"])
    before = snapshot(d)
    ReplaceCrash(monkeypatch, 2)
    with pytest.raises(MaterialError):
        m.rotate_public_ca(d)
    monkeypatch.undo()
    assert snapshot(d) == before
    openssl_verify(d / "public-ca.crt", d / "a.example.com/public.crt")
    m.rotate_public_ca(d)
    assert sorted(snapshot(d)) == sorted(before)


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


def test_file_stamp_changes_when_a_file_is_rewritten_and_fails_when_one_is_missing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("one")
    b.write_text("two")
    first = m.file_stamp(a, b)
    assert m.file_stamp(a, b) == first
    b.write_text("three")  # another size, so even a coarse clock cannot hide the change
    assert m.file_stamp(a, b) != first
    b.unlink()
    with pytest.raises(OSError):
        m.file_stamp(a, b)


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


# --------------------------------------------------------------------------
# one folder, several processes: a running Server or Client renews its own material
# while an operator may run a material command


_RENEW_LOOP = """
import sys
from runewarp import material as m
for _ in range(int(sys.argv[2])):
    m.renew_server_cert(sys.argv[1])
    m.load_server_cert_paths(sys.argv[1])
"""


def test_concurrent_renewals_from_several_processes_keep_a_consistent_pair(tmp_path):
    import sys
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    procs = [subprocess.Popen([sys.executable, "-c", _RENEW_LOOP, str(d), "25"],
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=90)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert_server_consistent(d)
    assert not (d / ".pending-commit").exists()
    assert not list(d.rglob("*.new")) and not list(d.rglob("*.tmp"))


def test_folder_lock_is_released_at_once_under_gevent(tmp_path):
    """gevent defers os.close of a folder's fd to the next loop iteration: the lock must
    not wait for it, or the next read of the same folder in the same greenlet hangs."""
    import sys
    m.init_identity(tmp_path / "id")
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import gevent, sys\nfrom runewarp import material as m\n"
            "m.show_identity(sys.argv[1])\n"
            "assert not gevent.spawn(m.identity_needs_renewal, sys.argv[1]).get()\n"
            "m.renew_identity(sys.argv[1]); m.renew_identity(sys.argv[1])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "id")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
