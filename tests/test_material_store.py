"""The material store: versioned folders, one atomic switch, readers that never write."""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from runewarp import material as m
from runewarp.errors import MaterialError
from runewarp.material import store
from runewarp.contextcache import file_stamp

from .test_material import assert_server_consistent, mode, openssl_identity, snapshot

SERVER_FILES = ["server-ca.crt", "server.crt", "server.key", "state/server-ca.key"]
IDENTITY_FILES = ["client-identity.txt", "client.crt", "client.key"]
WRITES = ("mkdir", "open", "symlink", "replace", "rename", "unlink", "rmdir", "chmod", "fchmod", "fsync")


def raw(root):
    """Every entry under `root`, links unfollowed, with what would show a write."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            st = os.lstat(p)
            target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, st.st_ino, target)
    return out


def flatten(d):
    """Turn a folder into the flat layout of earlier releases: regular files, no versions."""
    content = snapshot(d)
    shutil.rmtree(d)
    for rel, data in content.items():
        m.atomic_write(d / rel, data, 0o600 if rel.endswith(".key") else 0o644)
    return content


class Crash:
    """Make the n-th filesystem call of an update raise, as if the process died there."""

    def __init__(self, monkeypatch, n):
        self.calls = 0
        for name in WRITES:
            real = getattr(os, name)

            def fake(*a, _real=real, **kw):
                self.calls += 1
                if self.calls == n:
                    raise OSError(5, "simulated crash")
                return _real(*a, **kw)

            monkeypatch.setattr(os, name, fake)


def crash_everywhere(tmp_path, monkeypatch, make, operation, check):
    """Crash `operation` at each of its filesystem calls in turn: readers then see the
    whole old material or the whole new, and the next update succeeds."""
    probe = tmp_path / "probe"
    make(probe)
    counter = Crash(monkeypatch, 0)
    operation(probe)
    monkeypatch.undo()
    assert counter.calls > 5
    for n in range(1, counter.calls + 1):
        d = tmp_path / f"d{n}"
        make(d)
        before = snapshot(d)
        Crash(monkeypatch, n)
        try:
            operation(d)
        except MaterialError:
            pass
        finally:
            monkeypatch.undo()
        check(d)
        after = snapshot(d)
        assert sorted(after) == sorted(before), n
        assert after == before or all(after[k] != before[k] for k in before), n
        operation(d)
        check(d)


def check_server(d):
    """assert_server_consistent without openssl: the crash tests run it hundreds of times."""
    m.load_server_cert_paths(d)
    assert m.server_cert_renewable(d)


def versioned_server(d):
    m.init_server_cert(d, "tunnel.example.com")


def flat_server(d):
    versioned_server(d)
    flatten(d)


def check_identity(d):
    shown = m.show_identity(d)
    cert, key = m.load_identity_paths(d)
    assert openssl_identity(key) == shown == m.identity_of_certificate(m.load_certificate(cert))


@pytest.mark.parametrize("make", [versioned_server, flat_server], ids=["versioned", "flat"])
def test_rotate_server_ca_crash_at_every_step_is_all_or_nothing(tmp_path, monkeypatch, make):
    crash_everywhere(tmp_path, monkeypatch, make, m.rotate_server_ca, check_server)


def test_rotate_identity_crash_at_every_step_is_all_or_nothing(tmp_path, monkeypatch):
    crash_everywhere(tmp_path, monkeypatch, lambda d: (m.init_identity(d), flatten(d)),
                     m.rotate_identity, check_identity)


def test_rotate_public_ca_crash_at_every_step_is_all_or_nothing(tmp_path, monkeypatch):
    def check(d):
        for host in ("a.example.com", "b.example.com"):
            cert, key = m.load_public_cert_paths(d, host)
            assert m.public_cert_renewable(d, host)

    crash_everywhere(tmp_path, monkeypatch,
                     lambda d: m.init_public_certs(d, ["a.example.com", "b.example.com"]),
                     m.rotate_public_ca, check)


# --------------------------------------------------------------------------
# layout


def test_fresh_write_is_a_version_behind_links(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    assert os.readlink(d / "current") == "v1"
    assert os.readlink(d / "server.crt") == "current/server.crt"
    assert os.readlink(d / "state/server-ca.key") == "../current/state/server-ca.key"
    assert sorted(snapshot(d / "v1")) == SERVER_FILES
    assert mode(d / "v1") == 0o700 and mode(d / "v1/state") == 0o700
    assert mode(d / "v1/server.key") == 0o600 and mode(d / "v1/server.crt") == 0o644
    m.renew_server_cert(d)
    assert os.readlink(d / "current") == "v2"
    assert snapshot(d / "v1")["server-ca.crt"] == snapshot(d / "v2")["server-ca.crt"]
    assert snapshot(d / "v1")["server.crt"] != snapshot(d / "v2")["server.crt"]
    assert_server_consistent(d)


def test_a_copied_folder_still_works(tmp_path):
    m.init_identity(tmp_path / "id")
    shutil.copytree(tmp_path / "id", tmp_path / "copy", symlinks=True)
    assert m.show_identity(tmp_path / "copy") == m.show_identity(tmp_path / "id")


def test_old_versions_are_pruned_keeping_the_previous_one(tmp_path, monkeypatch):
    d = tmp_path / "identity"
    m.init_identity(d)
    for _ in range(3):
        m.renew_identity(d)
    assert sorted(p.name for p in d.glob("v*")) == ["v1", "v2", "v3", "v4"]  # young: kept
    monkeypatch.setattr(store, "PRUNE_AFTER", 0.0)
    m.renew_identity(d)
    assert sorted(p.name for p in d.glob("v*")) == ["v4", "v5"]
    assert os.readlink(d / "current") == "v5"
    check_identity(d)


def test_a_file_an_operator_puts_in_place_of_a_link_is_read_then_migrated(tmp_path):
    d, other = tmp_path / "server", tmp_path / "other"
    m.init_server_cert(d, "tunnel.example.com")
    m.init_server_cert(other, "tunnel.example.com")
    for name in ("server.crt", "server.key"):  # `install`/`mv` replace the link with a file
        (d / name).unlink()
        (d / name).write_bytes((other / name).read_bytes())
    assert m.load_server_cert_paths(d) == (d / "server.crt", d / "server.key")
    assert not m.server_cert_renewable(d)
    m.rotate_server_ca(d)
    assert os.readlink(d / "server.crt") == "current/server.crt"
    assert_server_consistent(d)


# --------------------------------------------------------------------------
# flat layout of earlier releases, and its journal


def test_flat_folder_loads_and_is_migrated_on_the_first_write(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    flat = flatten(d)
    assert not (d / "current").exists() and not (d / "server.crt").is_symlink()
    assert m.load_server_cert_paths(d) == (d / "server.crt", d / "server.key")
    assert m.init_server_cert(d, "tunnel.example.com").created is False
    assert not (d / "current").exists()  # nothing to write, nothing migrated
    m.renew_server_cert(d)
    assert os.readlink(d / "current") == "v2"
    assert snapshot(d / "v1") == flat  # the rollback point holds exactly the flat files
    assert all((d / rel).is_symlink() for rel in SERVER_FILES)
    assert snapshot(d)["server-ca.crt"] == flat["server-ca.crt"]
    assert snapshot(d)["server.crt"] != flat["server.crt"]
    assert_server_consistent(d)


def interrupted_flat_identity(tmp_path):
    """A flat identity folder whose old-style update died after its journal and first rename."""
    d, other = tmp_path / "identity", tmp_path / "other"
    m.init_identity(d)
    flatten(d)
    new = m.init_identity(other).identity
    for name in IDENTITY_FILES:
        (d / (name + ".new")).write_bytes((other / name).read_bytes())
    os.replace(d / "client.key.new", d / "client.key")
    (d / ".pending-commit").write_text(json.dumps(["client.key", "client.crt", "client-identity.txt"]))
    return d, new


def read_everything(d):
    return m.show_identity(d), m.load_identity_paths(d), m.identity_needs_renewal(d)


def test_a_leftover_journal_is_read_as_completed_and_readers_write_nothing(tmp_path, monkeypatch):
    d, new = interrupted_flat_identity(tmp_path)
    before = raw(d)
    for name in WRITES:
        if name not in ("open", "fsync"):  # reading opens files; nothing else may happen
            monkeypatch.setattr(os, name, lambda *a, _n=name, **kw: pytest.fail(f"a reader called os.{_n}"))
    shown, (cert, key), _ = read_everything(d)
    monkeypatch.undo()
    assert shown == new
    assert (cert, key) == (d / "client.crt.new", d / "client.key")
    assert raw(d) == before


def test_a_leftover_journal_is_completed_by_the_first_write(tmp_path):
    d, new = interrupted_flat_identity(tmp_path)
    assert m.renew_identity(d).identity == new
    assert sorted(p.name for p in d.iterdir()) == ["client-identity.txt", "client.crt", "client.key",
                                                   "current", "v1", "v2"]
    assert snapshot(d / "v1")["client.key"] == snapshot(d / "v2")["client.key"]
    check_identity(d)


def test_an_unreadable_journal_is_reported_not_guessed(tmp_path):
    d, _ = interrupted_flat_identity(tmp_path)
    (d / ".pending-commit").write_text('["../escape"]')
    with pytest.raises(MaterialError, match="escapes"):
        m.show_identity(d)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_folders_load_and_refuse_updates_unchanged(tmp_path):
    d, new = interrupted_flat_identity(tmp_path)
    versioned = tmp_path / "versioned"
    m.init_identity(versioned)
    for folder in (d, versioned):
        before = raw(folder)
        os.chmod(folder, 0o500)
        try:
            read_everything(folder)
            with pytest.raises(MaterialError):
                m.renew_identity(folder)
        finally:
            os.chmod(folder, 0o700)
        assert raw(folder) == before
    assert m.show_identity(d) == new


# --------------------------------------------------------------------------
# crash between a version written and the switch


def test_a_crash_before_the_switch_leaves_the_old_version_in_use(tmp_path, monkeypatch):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    before = snapshot(d)
    real = os.replace

    def no_switch(src, dst, *a, **kw):
        if os.path.basename(dst) == "current":
            raise OSError(5, "simulated crash")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", no_switch)
    with pytest.raises(MaterialError):
        m.renew_server_cert(d)
    monkeypatch.undo()
    assert sorted(snapshot(d / "v2")) == SERVER_FILES  # written whole, never switched to
    assert os.readlink(d / "current") == "v1" and snapshot(d) == before
    assert_server_consistent(d)
    monkeypatch.setattr(store, "PRUNE_AFTER", 0.0)
    m.renew_server_cert(d)
    assert sorted(p.name for p in d.glob("v*")) == ["v1", "v3"]
    assert not list(d.glob(".*tmp"))
    assert_server_consistent(d)


# --------------------------------------------------------------------------
# one folder, several processes: `cert renew` from cron racing the running daemon


_WRITER = """
import sys
from runewarp import material as m
for _ in range(int(sys.argv[2])):
    m.renew_server_cert(sys.argv[1])
"""

_READER = """
import os, sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from runewarp import material as m
folder, stop = sys.argv[1], sys.argv[2]
spki = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
reads = 0
while not os.path.exists(stop) or reads < 20:
    cert_path, key_path = m.pin(*m.load_server_cert_paths(folder))  # checked, then opened as the daemon does
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    if spki(cert.public_key()) != spki(key.public_key()):
        sys.exit(f"mismatched pair {cert_path} {key_path}")
    reads += 1
print(reads)
"""


def test_a_writer_racing_readers_never_fails_and_never_shows_a_mismatched_pair(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    stop = tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(d), str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    writer = subprocess.run([sys.executable, "-c", _WRITER, str(d), "40"],
                            capture_output=True, text=True, timeout=120)
    stop.touch()
    results = [r.communicate(timeout=60) for r in readers]
    assert writer.returncode == 0, writer.stderr
    assert [r.returncode for r in readers] == [0, 0, 0], [err for _, err in results]
    assert all(int(out) >= 20 for out, _ in results)
    assert os.readlink(d / "current") == "v41"
    assert_server_consistent(d)


def test_concurrent_writers_take_turns(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(d), "15"],
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=90)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert os.readlink(d / "current") == "v46"
    assert_server_consistent(d)
    assert not list(d.rglob(".*tmp"))


def test_folder_lock_is_released_at_once_under_gevent(tmp_path):
    """gevent defers os.close of a folder's fd to the next loop iteration: the lock must
    not wait for it, or the next update of the same folder in the same greenlet hangs."""
    m.init_identity(tmp_path / "id")
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import gevent, sys\nfrom runewarp import material as m\n"
            "m.show_identity(sys.argv[1])\n"
            "assert not gevent.spawn(m.identity_needs_renewal, sys.argv[1]).get()\n"
            "m.renew_identity(sys.argv[1]); m.renew_identity(sys.argv[1])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "id")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


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
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "simulated crash")))
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


def test_file_stamp_follows_the_switch(tmp_path):
    d = tmp_path / "server"
    m.init_server_cert(d, "tunnel.example.com")
    paths = m.server_cert_paths(d)
    first = file_stamp(paths)  # the runtime's ContextCache stamp (tls.py)
    m.renew_server_cert(d)
    assert m.server_cert_paths(d) == paths == (d / "server.crt", d / "server.key")
    assert file_stamp(paths) != first


def test_pin_resolves_links_through_one_reading_of_current(tmp_path):
    d = tmp_path / "public"
    m.init_public_certs(d, ["app.example.com"])
    m.renew_public_certs(d)
    cert, key = m.load_public_cert_paths(d, "app.example.com")
    assert (cert, key) == (d / "app.example.com/public.crt", d / "app.example.com/public.key")
    assert m.pin(cert, key, tmp_path / "elsewhere") == (
        d / "v2/app.example.com/public.crt", d / "v2/app.example.com/public.key", tmp_path / "elsewhere")
