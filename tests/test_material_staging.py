"""The staged slot of a material folder (material/staging.py), the rotate --stage/--commit/
--abort commands and their errors, and a server-ca-file bundle of two CAs."""

import os
import socket
import ssl
import threading

import pytest

from runewarp import material
from runewarp.material import staging
from runewarp.tls import client_tunnel_context

from .conftest import run_cli

HOST = "tunnel.example.com"


def listing(folder):
    return sorted(os.listdir(folder))


def test_stage_commit_identity_switches_in_one_rename_and_removes_the_old_key(tmp_path):
    folder = tmp_path / "id"
    old = material.init_identity(folder).identity
    old_version = os.readlink(folder / "current")
    staged = material.stage_identity(folder)
    assert staged.identity != old and staged.cert_path == folder / "next" / "client.crt"
    assert material.show_identity(folder) == old  # the current identity stays in force
    assert material.staged_identity(folder).identity == staged.identity
    assert material.commit_identity(folder) == staged.identity
    assert material.show_identity(folder) == staged.identity
    assert material.staged_identity(folder) is None
    assert not os.path.lexists(folder / "next") and not (folder / old_version).exists()


def test_abort_identity_leaves_the_current_set_byte_for_byte(tmp_path):
    folder = tmp_path / "id"
    old = material.init_identity(folder).identity
    before = {name: (folder / name).read_bytes() for name in ("client.crt", "client.key")}
    material.stage_identity(folder)
    assert material.abort_identity(folder) == old
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert material.staged_identity(folder) is None
    assert staging.View(folder).staged is None
    assert [n for n in listing(folder) if n.startswith("v")] == [os.readlink(folder / "current")]


def test_an_update_while_staged_keeps_the_staged_version(tmp_path, monkeypatch):
    folder = tmp_path / "id"
    material.init_identity(folder)
    staged = material.stage_identity(folder).identity
    monkeypatch.setattr("runewarp.material.store.PRUNE_AFTER", -1.0)  # prune everything allowed
    material.renew_identity(folder)  # the running Client renews its current certificate
    assert material.staged_identity(folder).identity == staged


def test_stage_server_ca_serves_the_current_leaf_and_publishes_both_cas(tmp_path):
    folder = tmp_path / "cert"
    material.init_server_cert(folder, HOST)
    old_ca = material.load_certificate(folder / "server-ca.crt")
    old_leaf = (folder / "server.crt").read_bytes()
    staged, bundle = material.stage_server_ca(folder)
    assert bundle == folder / "server-ca-bundle.crt"
    assert (folder / "server.crt").read_bytes() == old_leaf
    next_ca = material.load_certificate(folder / "next" / "server-ca.crt")
    assert material.load_certificates(bundle) == [old_ca, next_ca]
    material.load_certificate(staged.cert_path).verify_directly_issued_by(next_ca)
    material.commit_server_ca(folder)
    material.load_certificate(folder / "server.crt").verify_directly_issued_by(next_ca)
    assert material.load_certificates(bundle) == [old_ca, next_ca]  # still what Clients trust
    assert material.server_cert_renewable(folder)


def test_abort_server_ca_keeps_the_leaf_and_trims_the_bundle(tmp_path):
    folder = tmp_path / "cert"
    material.init_server_cert(folder, HOST)
    before = {n: (folder / n).read_bytes() for n in ("server.crt", "server.key", "server-ca.crt")}
    material.stage_server_ca(folder)
    material.abort_server_ca(folder)
    assert {n: (folder / n).read_bytes() for n in before} == before
    assert material.load_certificates(folder / "server-ca-bundle.crt") == [
        material.load_certificate(folder / "server-ca.crt")]
    assert not os.path.lexists(folder / "next")


@pytest.mark.parametrize("command", [("client", "identity", "rotate"),
                                     ("server", "cert", "rotate-ca")])
def test_bad_rotation_steps_are_one_line_errors_with_exit_1(tmp_path, command):
    folder = tmp_path / "m"
    if command[0] == "client":
        run_cli("client", "identity", "init", "--dir", folder)
    else:
        run_cli("server", "cert", "init", "--hostname", HOST, "--dir", folder)
    for step in ("--commit", "--abort"):
        proc = run_cli(*command, step, "--dir", folder, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (f"error: {folder}: nothing staged to {step[2:]}; stage a rotation "
                               "with --stage first\n")
    run_cli(*command, "--stage", "--dir", folder)
    for again in (("--stage",), ()):  # a second stage, or the hard cut behind its back
        proc = run_cli(*command, *again, "--dir", folder, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (f"error: {folder}: a rotation is already staged ({folder}/next); "
                               "commit it (--commit) or drop it (--abort) first\n")
    proc = run_cli(*command, "--stage", "--commit", "--dir", folder, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")


def test_a_server_ca_file_bundle_trusts_a_leaf_of_its_second_ca(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    material.init_server_cert(old, HOST)
    material.init_server_cert(new, HOST)
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((old / "server-ca.crt").read_bytes() + (new / "server-ca.crt").read_bytes())
    identity = tmp_path / "id"
    material.init_identity(identity)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(new / "server.crt", new / "server.key")
    server.set_alpn_protocols(["runewarp/1"])
    for ca_file, ok in ((bundle, True), (old / "server-ca.crt", False)):
        client = client_tunnel_context(identity / "client.crt", identity / "client.key",
                                       "ca-file", ca_file)
        assert handshake(server, client) is ok


def handshake(server_ctx, client_ctx):
    """One loopback TLS handshake; True when the Client accepted the Server certificate."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname=HOST):
                    return True
            except ssl.SSLCertVerificationError:
                return False
    finally:
        listener.close()
        thread.join(10)
