"""`runewarp doctor` against real processes: a healthy pair, then one fault at a time.

The Server side needs no running process (files and DNS); the Client side dials the
real Server.  Names resolve through RUNEWARP_RESOLVE, as in the runtime, and the
Client dials 127.0.0.1 with `server-name`, so no test depends on DNS.
"""

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from runewarp import harness, material

from ..conftest import SERVER_HOSTNAME, free_port, run_cli
from .helpers import Backend, curl
from .peers import FakeClientEnd, tunnel_tls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]
APP, API, OTHER = "app.example.com", "api.example.com", "other.example.com"
IDENTITY = "0123456789abcdef" * 4  # listed in a Tunnel; no Client has it


def resolving(*names, address="127.0.0.1"):
    """The environment that pins each name to `address`, as curl --resolve would."""
    pins = ",".join(f"{name}={address}" for name in names)
    return dict(os.environ, **{harness.RESOLVE_ENV: pins})


SERVER_ENV = resolving(SERVER_HOSTNAME, APP, API)


def doctor(*args, env=SERVER_ENV):
    """`runewarp doctor ARGS --json`: (exit status, {check: result})."""
    proc = run_cli("doctor", *args, "--json", env=env, check=False)
    results = json.loads(proc.stdout)
    assert len({r["check"] for r in results}) == len(results), results  # names are unique
    return proc.returncode, {r["check"]: r for r in results}


def failing(results):
    return {check: r["status"] for check, r in results.items() if r["status"] != "ok"}


def client_config(deployment, name, services, port=None, public_cert_dir=None):
    """A client.toml dialing 127.0.0.1 with server-name (no resolver involved).
    `services`: (hostnames, backend) or (hostnames, backend, tls-mode) tuples."""
    path = deployment.dir / f"{name}.toml"
    path.write_text(harness.config_text("client", {
        "server-address": f"127.0.0.1:{port or deployment.public_port}",
        "server-name": SERVER_HOSTNAME, "server-trust": "ca-file",
        "server-ca-file": "server-cert/server-ca.crt", "identity-dir": name,
        "public-cert-dir": public_cert_dir,
    }, [{"public-hostnames": hostnames, "backend-address": backend,
         "tls-mode": mode[0] if mode else None} for hostnames, backend, *mode in services]))
    return path


@contextlib.contextmanager
def tls_backend(deployment, hostname):
    """tests/backend.py with a certificate for `hostname` only (the `backend` fixture is APP's)."""
    started = Backend(deployment.dir, hostname.split(".")[0], [hostname])
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def pair(deployment, backend):
    """A Server with Tunnel apps (APP) and its Client serving APP from a TLS backend."""
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    path = client_config(deployment, "client-a", [([APP], backend.address)])
    deployment.processes.append(harness.start_client(path, env=dict(os.environ)))
    return deployment, path, backend, identity


def test_healthy_pair_is_all_ok(pair):
    deployment, client_path, backend, identity = pair
    status, results = doctor("-c", deployment.dir / "server.toml")
    assert status == 0 and not failing(results), results
    cert_dir = deployment.cert_dir
    assert set(results) == {
        "config", f"key-permissions {cert_dir / 'server.key'}",
        f"key-permissions {cert_dir / 'state/server-ca.key'}",
        *(f"certificate-{c} {SERVER_HOSTNAME}" for c in ("files", "key", "expiry", "hostname",
                                                         "chain")),
        f"resolve {SERVER_HOSTNAME}", f"resolve {APP}"}
    assert "127.0.0.1 (this machine" in results[f"resolve {APP}"]["detail"]

    status, results = doctor("client", "-c", client_path)
    assert status == 0 and not failing(results), results
    server = f"127.0.0.1:{deployment.public_port}"
    assert set(results) == {
        "config", "client-identity", f"key-permissions {deployment.dir / 'client-a/client.key'}",
        "server-trust", f"tcp {server}", f"tls {server}", f"identity {server}",
        f"mirroring {server}", f"backend {backend.address}", f"backend-certificate {APP}"}
    assert identity in results["client-identity"]["detail"]
    assert "Tunnel 'apps'" in results[f"identity {server}"]["detail"]
    # The doctor's own Tunnel connection came and went; the Client still serves.
    assert curl(deployment.public_port, APP, backend.ca).stdout == b"backend=app\n"


def test_text_output_is_one_line_per_check(pair):
    deployment, client_path, _backend, _identity = pair
    proc = run_cli("doctor", "-c", client_path, env=SERVER_ENV, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ok   config: {client_path}: [client] is valid"
    assert len(lines) == 10 and all(line.startswith("ok   ") for line in lines), lines


def test_json_shape(pair):
    deployment, *_ = pair
    proc = run_cli("doctor", "-c", deployment.dir / "server.toml", "--json", env=SERVER_ENV)
    results = json.loads(proc.stdout)
    assert isinstance(results, list) and results
    for result in results:
        assert set(result) == {"check", "status", "detail", "fix"}
        assert result["status"] in ("ok", "warn", "fail")
        assert all(isinstance(v, str) for v in result.values())


# --- the Server's material ----------------------------------------------------------


def server_doctor(deployment, identity=IDENTITY):
    deployment.server_config([("apps", [APP], [identity])])
    return doctor("-c", deployment.dir / "server.toml")


def test_expired_server_certificate(deployment):
    material.renew_server_cert(deployment.cert_dir,
                               now=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    status, results = server_doctor(deployment)
    assert status == 1
    assert failing(results) == {f"certificate-expiry {SERVER_HOSTNAME}": "fail"}
    result = results[f"certificate-expiry {SERVER_HOSTNAME}"]
    assert "expired on" in result["detail"]
    assert result["fix"].startswith(f"runewarp server cert renew -c {deployment.dir / 'server.toml'}")


def test_server_certificate_for_another_hostname(deployment):
    shutil.rmtree(deployment.cert_dir)
    run_cli("server", "cert", "init", "--hostname", OTHER, "--dir", deployment.cert_dir)
    status, results = server_doctor(deployment)
    assert status == 1
    assert failing(results) == {f"certificate-hostname {SERVER_HOSTNAME}": "fail"}
    result = results[f"certificate-hostname {SERVER_HOSTNAME}"]
    assert f"is for {OTHER}, not {SERVER_HOSTNAME}" in result["detail"]
    assert result["fix"].startswith("runewarp server cert renew -c ")


def test_key_readable_by_others(deployment):
    key = deployment.cert_dir / "server.key"
    key.chmod(0o644)
    status, results = server_doctor(deployment)
    assert status == 1
    assert failing(results) == {f"key-permissions {key}": "fail"}
    assert "mode 0644" in results[f"key-permissions {key}"]["detail"]
    assert results[f"key-permissions {key}"]["fix"] == f"chmod 600 {key}"
    text = run_cli("doctor", "-c", deployment.dir / "server.toml", env=SERVER_ENV, check=False)
    assert text.returncode == 1
    assert f"fail key-permissions {key}: private key is accessible to group or others (mode " \
           f"0644); fix: chmod 600 {key}" in text.stdout.splitlines()


def test_missing_server_certificate(deployment):
    shutil.rmtree(deployment.cert_dir)
    status, results = server_doctor(deployment)
    assert status == 1
    assert failing(results) == {f"certificate-files {SERVER_HOSTNAME}": "fail"}
    assert results[f"certificate-files {SERVER_HOSTNAME}"]["fix"].startswith(
        "runewarp server cert init -c ")


def test_hostname_resolving_elsewhere_is_a_warning(deployment):
    deployment.server_config([("apps", [APP], [IDENTITY])])
    status, results = doctor("-c", deployment.dir / "server.toml",
                             env=resolving(SERVER_HOSTNAME, APP, address="192.0.2.1"))
    assert status == 0
    assert failing(results) == {f"resolve {SERVER_HOSTNAME}": "warn", f"resolve {APP}": "warn"}
    assert "192.0.2.1: no address of this machine" in results[f"resolve {APP}"]["detail"]


def test_unreachable_acme_directory(deployment):
    path = deployment.dir / "server.toml"
    url = f"https://127.0.0.1:{free_port()}/dir"
    path.write_text(harness.config_text("server", {"hostname": SERVER_HOSTNAME},
                                        [{"public-hostnames": [APP], "client-identity": IDENTITY}],
                                        extra=f'[server.acme]\nemail = "ops@example.com"\n'
                                              f'directory-url = "{url}"\nstate-dir = "acme"'))
    status, results = doctor("-c", path)
    assert status == 1
    assert failing(results) == {f"acme-directory {url}": "fail"}
    assert results[f"certificate-files {SERVER_HOSTNAME}"]["detail"].startswith("managed by ACME")


# --- the Client against the real Server --------------------------------------------


def test_unknown_identity(deployment, backend):
    deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [IDENTITY])])
    path = client_config(deployment, "client-a", [([APP], backend.address)])
    status, results = doctor("-c", path)
    server = f"127.0.0.1:{deployment.public_port}"
    assert status == 1
    assert failing(results) == {f"identity {server}": "fail"}
    identity = material.show_identity(deployment.dir / "client-a")
    assert identity in results[f"identity {server}"]["detail"]
    assert f'client-identity = "{identity}"' in results[f"identity {server}"]["fix"]


def test_mirroring_drift_both_ways(deployment, backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP, API], [identity])])
    with tls_backend(deployment, OTHER) as other:
        path = client_config(deployment, "client-a", [([APP], backend.address),
                                                      ([OTHER], other.address)])
        status, results = doctor("-c", path)
    assert status == 1
    assert failing(results) == {f"mirroring {API}": "fail", f"mirroring {OTHER}": "warn"}
    assert "no Service lists it" in results[f"mirroring {API}"]["detail"]
    assert results[f"mirroring {API}"]["fix"].startswith(f"add {API} to a Service's")
    assert "does not route it" in results[f"mirroring {OTHER}"]["detail"]


def test_catch_all_service_mirrors_every_hostname(deployment, backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP, API], [identity])])
    status, results = doctor("-c", client_config(deployment, "client-a",
                                                 [(None, backend.address)]))
    assert status == 0 and not failing(results), results
    server = f"127.0.0.1:{deployment.public_port}"
    assert "a Catch-all Service takes every hostname" in results[f"mirroring {server}"]["detail"]


def test_dead_backend(deployment):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    dead = f"127.0.0.1:{free_port()}"
    status, results = doctor("-c", client_config(deployment, "client-a", [([APP], dead)]))
    assert status == 1
    assert failing(results) == {f"backend {dead}": "fail"}
    assert "ConnectionRefusedError" in results[f"backend {dead}"]["detail"]
    assert results[f"backend {dead}"]["fix"].startswith(f"start the Local backend at {dead}")


def test_passthrough_backend_with_a_certificate_for_another_name(deployment):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    with tls_backend(deployment, API) as api:
        status, results = doctor("-c", client_config(deployment, "client-a",
                                                     [([APP], api.address)]))
    assert status == 1
    assert failing(results) == {f"backend-certificate {APP}": "fail"}
    assert f"certificate for {API}, not {APP}" in results[f"backend-certificate {APP}"]["detail"]


def test_server_not_running(deployment, backend):
    deployment.identity("client-a")
    port = free_port()
    status, results = doctor("-c", client_config(deployment, "client-a",
                                                 [([APP], backend.address)], port=port))
    assert status == 1
    assert failing(results) == {f"tcp 127.0.0.1:{port}": "fail"}


def test_terminate_public_certificates(deployment, plain_backend):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [APP], [identity])])
    public = deployment.dir / "public-cert"
    run_cli("client", "public-cert", "init", "--hostname", APP, "--dir", public)
    path = client_config(deployment, "client-a", [([APP], plain_backend, "terminate")],
                         public_cert_dir="public-cert")
    status, results = doctor("-c", path)
    assert status == 0 and not failing(results), results
    assert {f"certificate-{c} {APP}" for c in ("files", "key", "expiry", "hostname", "chain")} | \
        {f"key-permissions {public / APP / 'public.key'}",
         f"key-permissions {public / 'state/public-ca.key'}"} <= set(results)
    assert f"backend-certificate {APP}" not in results  # terminate: the backend is plaintext

    material.renew_public_certs(public, [APP], now=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    status, results = doctor("-c", path)
    assert status == 1
    assert failing(results) == {f"certificate-expiry {APP}": "fail"}
    assert results[f"certificate-expiry {APP}"]["fix"] == \
        f"runewarp client public-cert renew --hostname {APP} -c {path}"


def test_welcome_names_the_tunnels_hostnames(deployment):
    identity = deployment.identity("client-a")
    deployment.start_server([("apps", [API, APP], [identity])])
    end = FakeClientEnd(tunnel_tls(deployment.public_port, deployment.ca_file,
                                   deployment.dir / "client-a"))
    assert end.join(hostnames=[APP])["public_hostnames"] == [API, APP]  # sorted


# --- the command line ---------------------------------------------------------------


def test_invalid_config_is_one_failing_line(tmp_path):
    path = tmp_path / "client.toml"
    path.write_text('[client]\nserver-address = "127.0.0.1:1"\n[[client.services]]\n'
                    'backend-address = "127.0.0.1:2"\n')
    proc = run_cli("doctor", "-c", path, check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"fail config: {path}: client.server-address: '127.0.0.1:1': host must be a DNS name, "
        "not an IP address (it is the Server hostname), unless client.server-name names the "
        "Server; fix: correct the key the error names"]


def test_no_config_file(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = run_cli("doctor", env=env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: command line: no config file: pass -c FILE or create "
        f"{tmp_path / 'config/runewarp/config.toml'}"]
    assert proc.stdout == ""


def test_both_roles_need_the_role_named(deployment):
    both = deployment.dir / "both.toml"
    client_config(deployment, "client-a", [([APP], "127.0.0.1:1")], port=1)
    both.write_text(deployment.server_config([("apps", [APP], [IDENTITY])]).read_text()
                    + (deployment.dir / "client-a.toml").read_text())
    proc = run_cli("doctor", "-c", both, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {both}: the file has both [server] and [client]: name the role (server or "
        "client) on the command line"]
    status, results = doctor("server", "-c", both)
    assert status == 0 and "certificate-files tunnel.example.com" in results


def test_every_address_of_a_server_name_is_probed(pair):
    """The Client keeps a Tunnel connection to every address its server-address resolves
    to, so the doctor probes each: here one answers and one has no Server."""
    deployment, _path, backend, _identity = pair
    port = deployment.public_port
    path = deployment.dir / "by-name.toml"
    path.write_text(harness.config_text("client", {
        "server-address": f"{SERVER_HOSTNAME}:{port}", "server-trust": "ca-file",
        "server-ca-file": "server-cert/server-ca.crt", "identity-dir": "client-a",
    }, [{"public-hostnames": [APP], "backend-address": backend.address}]))
    env = dict(os.environ, **{harness.RESOLVE_ENV: f"{SERVER_HOSTNAME}=127.0.0.1|127.0.0.9"})
    status, results = doctor("client", "-c", path, env=env)
    entry = f"{SERVER_HOSTNAME}:{port}"
    assert results[f"resolve {entry}"]["detail"] == "127.0.0.1, 127.0.0.9"
    good, dead = f"{entry} (127.0.0.1:{port})", f"{entry} (127.0.0.9:{port})"
    assert status == 1 and failing(results) == {f"tcp {dead}": "fail"}, results
    assert {f"tcp {good}", f"tls {good}", f"identity {good}", f"mirroring {good}"} <= set(results)
    assert SERVER_HOSTNAME in results[f"tls {good}"]["detail"]  # the entry's name, not the IP


def test_a_visitor_placed_on_the_doctors_connection_may_be_placed_again(deployment, backend):
    """The doctor's Tunnel connection is a pool member until its go away arrives; a Visitor
    placed on it meanwhile reached no backend, so its refusal lets the Server place it again
    (a Visitor reset under load otherwise).  Here the Visitor waits (member-wait) for the
    doctor's connection, the only member, so it is placed there every time."""
    identity = deployment.identity("client-a")
    server = deployment.start_server([("apps", [APP], [identity])],
                                     extra="[server.limits]\nmember-wait = 30\n"
                                           "[server.timeouts]\nclient-hello = 30")
    path = client_config(deployment, "client-a", [([APP], backend.address)])
    with ThreadPoolExecutor(1) as pool:
        visit = pool.submit(curl, deployment.public_port, APP, backend.ca, timeout=30)
        time.sleep(2)  # the Visitor's ClientHello is in; it waits (a loaded machine: the
        # doctor may take seconds to start, hence the long client-hello)
        status, results = doctor("client", "-c", path)
        assert status == 0 and not failing(results), results
        server.wait_for(r"visitor-retry .*tunnel=apps client-instance=doctor-\w+ stream=\d+ "
                        r"reason=failed-before-backend-data retry-on=none")
        visit.result()
