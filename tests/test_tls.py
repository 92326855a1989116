"""tls.py: the one ContextCache (what its stamp sees, what it keeps) and the rule that
every private pyOpenSSL use stays in tls.py."""

import os

import pytest
from OpenSSL import SSL

from runewarp import material
from runewarp.errors import MaterialError
from runewarp.io.terminate import PublicCertificates
from runewarp.logs import Logger
from runewarp.contextcache import ContextCache, file_stamp
from runewarp.tls import terminate_context

from .test_dependencies import discovered_private_attributes, discovered_private_modules

APP = "app.example.com"
# Private gevent attributes (splice.py, listener.py): not pyOpenSSL's.
GEVENT = {"_sock", "_spawn", "_handle"}


class Builds:
    """A `build` that counts its calls and raises the existing error for missing files."""

    def __init__(self):
        self.calls = []

    def __call__(self, key, paths):
        self.calls.append((key, paths))
        if paths is None:
            raise MaterialError(f"no certificate for {key}")
        return object()


def replace(path, data, mtime_ns=None):
    """Atomic replace (write a sibling, rename over), as material and certbot's plugin do."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    if mtime_ns is not None:
        os.utime(new, ns=(mtime_ns, mtime_ns))
    os.replace(new, path)


@pytest.fixture
def files(tmp_path):
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    cert.write_bytes(b"cert-1")
    key.write_bytes(b"key-1")
    return cert, key


def test_the_context_is_built_once_while_the_files_are_unchanged(files):
    build = Builds()
    cache = ContextCache(lambda key: files, build)
    first = cache.current(APP)
    assert cache.current(APP) is first and cache.current(APP) is first
    assert build.calls == [(APP, files)]


def test_a_replaced_file_rebuilds_even_with_the_same_size_and_mtime(files):
    build = Builds()
    cache = ContextCache(lambda key: files, build)
    first = cache.current()
    mtime = os.stat(files[0]).st_mtime_ns
    replace(files[0], b"cert-2", mtime_ns=mtime)  # (mtime, size) alone would not see this
    second = cache.current()
    assert second is not first and len(build.calls) == 2
    assert cache.current() is second


def test_a_new_location_rebuilds(files, tmp_path):
    other = (tmp_path / "b.crt", tmp_path / "b.key")
    for path, source in zip(other, files, strict=True):
        os.link(source, path)  # same inode, mtime and size: only the path differs
    located = [files]
    build = Builds()
    cache = ContextCache(lambda key: located[0], build)
    first = cache.current()
    located[0] = other
    assert cache.current() is not first and build.calls[-1] == (None, other)


def test_a_missing_file_gives_the_builders_error_every_time_until_it_exists(files):
    build = Builds()
    cache = ContextCache(lambda key: files, build)
    files[1].unlink()
    for _ in range(2):
        with pytest.raises(MaterialError, match="no certificate for app"):
            cache.current("app")
    assert build.calls == [("app", None), ("app", None)]  # a raise keeps nothing
    files[1].write_bytes(b"key-2")
    assert cache.current("app") is not None


def test_nothing_located_is_missing_too(files):
    build = Builds()
    with pytest.raises(MaterialError):
        ContextCache(lambda key: None, build).current("x")
    assert build.calls == [("x", None)]


def test_file_stamp_is_none_when_a_file_is_missing(files):
    assert file_stamp(files) == file_stamp(files)
    files[0].unlink()
    assert file_stamp(files) is None


def test_a_refusal_is_kept_so_a_missing_public_certificate_is_reported_once(tmp_path):
    """PublicCertificates through ContextCache: the existing warning, once; then the
    certificate is picked up as soon as it exists."""
    events = []

    class Events(Logger):
        def log(self, level, event, **fields):
            events.append((level, event, fields))

    folder = tmp_path / "public-cert"
    certs = PublicCertificates(folder, Events("trace"))
    refused = certs.context_for(APP)
    assert certs.context_for(APP) is refused
    assert [e[:2] for e in events] == [("warn", "public-certificate-missing")]
    assert events[0][2]["fix"] == certs.init_command(APP)
    material.init_public_certs(folder, [APP])
    loaded = certs.context_for(APP)
    assert loaded is not refused and isinstance(loaded, SSL.Context)
    assert events[-1][:2] == ("info", "public-certificate-loaded")


def test_terminate_context_without_a_certificate_refuses():
    assert isinstance(terminate_context(), SSL.Context)


def test_every_private_pyopenssl_use_is_in_tls_py():
    """One module to port when pyOpenSSL moves (test_dependencies checks each one exists)."""
    attributes = discovered_private_attributes()
    imports, _ = discovered_private_modules()
    pyopenssl = [where for attribute, uses in attributes.items() if attribute not in GEVENT
                 for where in uses]
    pyopenssl += [where for (module, _), uses in imports.items() if module.startswith("OpenSSL")
                  for where in uses]
    assert pyopenssl, "the scanner found no private pyOpenSSL use: drop this test"
    outside = sorted(where for where in pyopenssl if not where.startswith("runewarp/tls.py:"))
    assert not outside, outside
