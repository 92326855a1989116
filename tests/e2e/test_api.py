"""The Server configuration API (docs/api.md) against a real Server, with curl as the caller
(mutual TLS with a client certificate our CLI issued) and a real Client carrying Visitors
through an API Tunnel."""

import json
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from ..conftest import SERVER_HOSTNAME, Proc, cli_material, free_port, run_cli
from .helpers import curl
from .peers import APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
STATIC = "static.example.com"
LATER = "later.example.com"


class Api:
    """curl against the API of one Server: `call` gives (status, headers, JSON body or None)."""

    def __init__(self, tmp_path, ca_file, port, name="curl"):
        self.dir = tmp_path / name  # curl's files: one folder per concurrent caller
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_file, self.port = ca_file, port
        self.cert, self.key = caller_certificate(tmp_path)

    def run(self, method, path, body=None, headers=(), cert=True, wait=True):
        """curl's CompletedProcess (stdout: the status code), or its Popen with `wait` False."""
        cmd = ["curl", "-sS", "--max-time", "15", "--cacert", str(self.ca_file), "--resolve",
               f"{SERVER_HOSTNAME}:{self.port}:127.0.0.1", "-X", method, "-D", str(self.dir / "h"),
               "-o", str(self.dir / "b"), "-w", "%{http_code}"]
        if cert:
            cmd += ["--cert", str(self.cert), "--key", str(self.key)]
        if body is not None:
            (self.dir / "in").write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
            cmd += ["-H", "Content-Type: application/json", "--data-binary", f"@{self.dir / 'in'}"]
        for header in headers:
            cmd += ["-H", header]
        cmd.append(f"https://{SERVER_HOSTNAME}:{self.port}{path}")
        if not wait:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def raw(self, request, steady=False):
        """The status line and headers the API answers `request` (bytes) with.  `steady`:
        sent 10 KB every 20 ms, as a caller on a slow link does, and every send must succeed
        (else: sent whole, and the API may answer and close before reading it all)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock, \
                ctx.wrap_socket(sock, server_hostname=SERVER_HOSTNAME) as tls:
            if steady:
                for at in range(0, len(request), 10000):
                    tls.sendall(request[at:at + 10000])
                    time.sleep(0.02)
            else:
                try:
                    tls.sendall(request)
                except OSError:
                    pass
            return tls.recv(4096)

    def call(self, method, path, body=None, headers=()):
        done = self.run(method, path, body, headers)
        assert done.returncode == 0, done.stderr
        lines = (self.dir / "h").read_text().splitlines()
        got = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        got = {k.lower(): v for k, v in got.items()}
        raw = (self.dir / "b").read_bytes()
        return int(done.stdout), got, json.loads(raw) if raw else None


def caller_certificate(tmp_path):
    """An API caller's certificate and key, issued by our CLI's Visitor CA (`client visitor-ca
    init`, `client visitor-cert issue`: client certificates), whose CA is the API's."""
    ca_dir, out = tmp_path / "api-ca", tmp_path / "caller"
    if not ca_dir.exists():
        cli_material(ca_dir, "client", "visitor-ca", "init")
        run_cli("client", "visitor-cert", "issue", "--name", "operator", "--dir", ca_dir, "--out-dir", out)
    return out / "operator.crt", out / "operator.key"


def api_ca_file(tmp_path):
    caller_certificate(tmp_path)
    return tmp_path / "api-ca" / "visitor-ca.crt"


def start(deployment, tunnels, port=None, public_port=None):
    """The Server with `[server.api]` on a port of its own (`public_port`: the public
    listener's of a Server started before, for its Clients): (server, Api)."""
    port = port or free_port()
    api = Api(deployment.dir, deployment.ca_file, port)
    extra = (f'[server.api]\nbind-address = "127.0.0.1:{port}"\n'
             f'client-ca-file = "{api_ca_file(deployment.dir)}"\nstate-file = "state/api-tunnels.json"\n')
    if public_port is None:
        server = deployment.start_server(tunnels, extra=extra)
    else:
        path = deployment.server_config(tunnels, extra=extra)
        path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{public_port}"'))
        server = Proc(["server", "-c", path], env=deployment.env)
        deployment.processes.append(server)
    server.wait_for("api-listening")
    return server, api


def tunnel(hostnames, identities):
    return {"public-hostnames": hostnames, "client-identities": identities}


def test_an_api_tunnel_carries_visitors_and_survives_sighup_and_restart(deployment, backend):
    static_id, app_id = deployment.identity("static"), deployment.identity("app")
    server, api = start(deployment, [("static", [STATIC], [static_id])])
    status, headers, body = api.call("PUT", "/v1/tunnels/app", tunnel([APP.upper()], [app_id]))
    assert status == 201, body
    assert body == {"name": "app", "public-hostnames": [APP], "client-identities": [app_id],
                    "source": "api"}  # stored as it routes: the hostname normalized
    assert headers["etag"].startswith('"') and api.call("GET", "/v1/tunnels/app")[1]["etag"] == headers["etag"]
    server.wait_for('api-tunnel-changed method=PUT tunnel=app caller="CN=operator" created=True')
    client = deployment.start_client("app", [([APP], backend.address)])
    visit = curl(deployment.public_port, APP, backend.ca)
    assert visit.returncode == 0 and b"app" in visit.stdout, visit
    status, _, listing = api.call("GET", "/v1/tunnels")
    assert status == 200
    assert [(t["name"], t["source"]) for t in listing["tunnels"]] == [("static", "file"), ("app", "api")]

    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for("server-reloaded tunnels=2", start=mark)
    assert curl(deployment.public_port, APP, backend.ca).returncode == 0

    mark = len(client.lines)
    server.stop()
    client.wait_for("tunnel-connection-(lost|draining)", start=mark)
    server, api = start(deployment, [("static", [STATIC], [static_id])], port=api.port,
                        public_port=deployment.public_port)
    status, headers, body = api.call("GET", "/v1/tunnels/app")
    assert status == 200 and body["source"] == "api"
    assert headers["etag"] == api.call("GET", "/v1/tunnels/app")[1]["etag"]
    client.wait_for("tunnel-connection-established", start=mark, timeout=30)  # by the new Server
    assert curl(deployment.public_port, APP, backend.ca).returncode == 0


def test_dropping_an_identity_or_deleting_an_api_tunnel_closes_its_tunnel_connections(deployment, backend):
    app_id, spare_id = deployment.identity("app"), deployment.identity("spare")
    server, api = start(deployment, [("static", [STATIC], [deployment.identity("static")])])
    assert api.call("PUT", "/v1/tunnels/app", tunnel([APP], [app_id, spare_id]))[0] == 201
    client = deployment.start_client("app", [([APP], backend.address)])
    spare = deployment.start_client("spare", [([APP], backend.address)])

    mark = len(server.lines)
    assert api.call("PUT", "/v1/tunnels/app", tunnel([APP], [app_id]))[0] == 200
    server.wait_for(rf"tunnel-connection-closed tunnel=app .*client-identity={spare_id}"
                    ".*identity no longer authorized", start=mark)
    spare.wait_for("tunnel-connection-(lost|draining)")
    for _ in range(4):  # the kept identity's connection still carries every Visitor
        assert curl(deployment.public_port, APP, backend.ca, timeout=8).returncode == 0
    assert not [line for line in server.lines[mark:]
                if "tunnel-connection-closed" in line and app_id in line]

    etag = api.call("GET", "/v1/tunnels/app")[1]["etag"]
    assert api.call("DELETE", "/v1/tunnels/app", headers=['If-Match: "stale"'])[0] == 412
    status, _, body = api.call("DELETE", "/v1/tunnels/app", headers=[f"If-Match: {etag}"])
    assert status == 204 and body is None
    server.wait_for(r"tunnel-connection-closed tunnel=app .*identity no longer authorized")
    client.wait_for("tunnel-connection-(lost|draining)")
    assert api.call("GET", "/v1/tunnels/app")[0] == 404
    assert curl(deployment.public_port, APP, backend.ca, timeout=8).returncode != 0


def test_refusals_leave_the_table_unchanged(deployment):
    static_id, app_id = deployment.identity("static"), deployment.identity("app")
    server, api = start(deployment, [("static", [STATIC], [static_id])])
    anonymous = api.run("GET", "/v1/tunnels", cert=False)
    assert anonymous.returncode != 0 and anonymous.stdout == "000", anonymous  # handshake refused

    assert api.call("PUT", "/v1/tunnels/app", tunnel([APP], [app_id]))[0] == 201
    before = api.call("GET", "/v1/tunnels")[2]
    status, _, body = api.call("PUT", "/v1/tunnels/static", tunnel([STATIC], [static_id]))
    assert status == 409 and "config file" in body["error"]
    assert api.call("DELETE", "/v1/tunnels/static")[0] == 409

    status, _, body = api.call("PUT", "/v1/tunnels/other", tunnel([STATIC], ["b" * 64]))
    assert status == 422
    assert body["error"] == (f"{deployment.dir / 'state' / 'api-tunnels.json'}: "
                             "api-tunnels.other.public-hostnames[0]: 'static.example.com' is already "
                             "listed at server.tunnels[0].public-hostnames[0]; the same hostname in two "
                             "Tunnels needs public-ports on both, with no port in common")
    status, _, body = api.call("PUT", "/v1/tunnels/other", tunnel(["x.example.com"], [app_id]))
    assert status == 422 and "already listed at api-tunnels.app.client-identities[0]" in body["error"]
    status, _, body = api.call("PUT", "/v1/tunnels/other", tunnel([SERVER_HOSTNAME], ["c" * 64]))
    assert status == 422 and "is the Server hostname" in body["error"]
    assert api.call("PUT", "/v1/tunnels/other", b"{not json")[0] == 400
    assert api.call("PUT", "/v1/tunnels/other", {"public-hostnames": [APP]})[0] == 422
    assert api.call("PUT", "/v1/tunnels/app", tunnel(["y.example.com"], [app_id]),
                    headers=['If-Match: "stale"'])[0] == 412
    status, _, body = api.call("PUT", "/v1/tunnels/big", b"[" + b" " * 70000 + b"]")
    assert status == 413, body
    status, _, body = api.call("PUT", "/v1/tunnels/deep", b"[" * 60000)
    assert status == 400 and "nested too deep" in body["error"], body
    # Chunk framing counts against the connection's byte budget: 20,000 one-byte chunks are
    # 120,000 bytes on the wire for a 20,000-byte body.
    chunked = (b"PUT /v1/tunnels/chunked HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"1\r\n \r\n" * 20000 + b"0\r\n\r\n")
    assert api.raw(chunked).startswith(b"HTTP/1.1 413 "), "a chunked body over the budget"
    # Answered before the body is read: the close lingers while the body still comes, so the
    # caller's sends succeed and it reads the 413 instead of a reset.
    big = b"PUT /v1/tunnels/big HTTP/1.1\r\nHost: api\r\nContent-Length: 200000\r\n\r\n" + b" " * 200000
    assert api.raw(big, steady=True).startswith(b"HTTP/1.1 413 ")
    assert api.call("GET", "/v1/tunnels")[2] == before

    status, headers, body = api.call("POST", "/v1/tunnels")
    assert status == 405 and headers["allow"] == "GET" and "error" in body
    status, headers, _ = api.call("PATCH", "/v1/tunnels/app")
    assert status == 405 and headers["allow"] == "GET, PUT, DELETE"
    assert api.call("GET", "/v2/tunnels")[0] == 404
    assert api.call("GET", "/v1/tunnels/nope")[0] == 404
    status, _, config = api.call("GET", "/v1/config")
    assert status == 200 and [t["name"] for t in config["server"]["tunnels"]] == ["static", "app"]
    assert config["server"]["api"]["bind-address"] == f"127.0.0.1:{api.port}"
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.timeout(300)  # a few hundred requests; on a loaded machine a minute or two
def test_schemathesis_finds_no_server_error(deployment):
    """schemathesis generates requests from the API's own OpenAPI document and checks every
    answer against it (status codes, schemas, headers) and for 5xx.  Python resolves the
    Server hostname to 127.0.0.1 for it, as curl --resolve does for curl."""
    server, api = start(deployment, [("static", [STATIC], [deployment.identity("static")])])
    runner = ("import socket, sys\n"
              "real = socket.getaddrinfo\n"
              f"socket.getaddrinfo = lambda host, *a, **k: real('127.0.0.1' if host == {SERVER_HOSTNAME!r} "
              "else host, *a, **k)\n"
              "from schemathesis.cli import schemathesis\n"
              "sys.exit(schemathesis())\n")
    url = f"https://{SERVER_HOSTNAME}:{api.port}"
    done = subprocess.run(
        [sys.executable, "-c", runner, "run", f"{url}/v1/openapi.json", "--url", url,
         "--tls-verify", str(deployment.ca_file), "--request-cert", str(api.cert),
         "--request-cert-key", str(api.key), "--checks", "all", "--max-examples", "10",
         # A schema cannot say "a valid hostname that no other Tunnel lists": such a PUT is
         # schema-valid and still refused with the documented 422, which this check counts.
         "--exclude-checks", "positive_data_acceptance",
         "--request-timeout", "10", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=deployment.dir)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Traceback" not in server.log()


def test_a_caller_from_another_ca_is_refused_in_the_handshake(deployment, tmp_path):
    server, api = start(deployment, [("static", [STATIC], [deployment.identity("static")])])
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    cli_material(stranger / "ca", "client", "visitor-ca", "init", copy_of="stranger")
    run_cli("client", "visitor-cert", "issue", "--name", "operator", "--dir", stranger / "ca",
            "--out-dir", stranger)
    api.cert, api.key = stranger / "operator.crt", stranger / "operator.key"
    refused = api.run("GET", "/v1/tunnels")
    assert refused.returncode != 0 and refused.stdout == "000", refused
    server.wait_for("api-connection-refused .*certificate")


def test_concurrent_changes_are_serialised_and_if_match_lets_one_win(deployment):
    static_id = deployment.identity("static")
    server, api = start(deployment, [("static", [STATIC], [static_id])])
    assert api.call("PUT", "/v1/tunnels/race", tunnel(["race.example.com"], ["1" * 64]))[0] == 201
    etag = api.call("GET", "/v1/tunnels/race")[1]["etag"]
    callers = []
    for i in range(6):
        racer, other = (Api(deployment.dir, deployment.ca_file, api.port, name=f"{kind}-{i}")
                        for kind in ("racer", "other"))
        callers.append(racer.run("PUT", "/v1/tunnels/race", tunnel([f"r{i}.example.com"], [f"{i + 2}" * 64]),
                                 headers=[f"If-Match: {etag}"], wait=False))
        callers.append(other.run("PUT", f"/v1/tunnels/t{i}", tunnel([f"t{i}.example.com"], ["abcdef"[i] * 64]),
                                 wait=False))
    codes = [proc.communicate(timeout=30)[0] for proc in callers]
    assert sorted(codes[0::2]) == ["200"] + ["412"] * 5  # one writer of "race" wins, on its ETag
    assert codes[1::2] == ["201"] * 6
    names = [t["name"] for t in api.call("GET", "/v1/tunnels")[2]["tunnels"]]
    assert names == ["static", "race", "t0", "t1", "t2", "t3", "t4", "t5"]
    stored = json.loads((deployment.dir / "state" / "api-tunnels.json").read_text())["tunnels"]
    assert sorted(stored) == names[1:]


def test_a_file_that_conflicts_with_an_api_tunnel_fails_a_reload_and_leaves_it_out_at_start(deployment):
    """A reload keeps the running table; a start routes the other API Tunnels, the one left
    out can still be deleted, and one left out routes again once a reloaded file allows it."""
    static_id = deployment.identity("static")
    server, api = start(deployment, [("static", [STATIC], [static_id])])
    assert api.call("PUT", "/v1/tunnels/web", tunnel([APP], ["d" * 64]))[0] == 201
    assert api.call("PUT", "/v1/tunnels/other", tunnel(["other.example.com"], ["e" * 64]))[0] == 201
    assert api.call("PUT", "/v1/tunnels/later", tunnel([LATER], ["f" * 64]))[0] == 201
    before = api.call("GET", "/v1/tunnels")[2]
    path = deployment.dir / "server.toml"
    path.write_text(path.read_text().replace(f'"{STATIC}"', f'"{STATIC}", "{APP}"'))
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    conflict = (r"api-tunnels\.web\.public-hostnames\[0\]: 'app\.example\.com' is already listed at "
                r"server\.tunnels\[0\]\.public-hostnames\[1\]")
    server.wait_for(r"reload-failed reason=\".*: " + conflict, start=mark)
    assert api.call("GET", "/v1/tunnels")[2] == before

    server.stop()
    server, api = start(deployment, [("static", [STATIC, APP, LATER], [static_id])], port=api.port)
    server.wait_for("api-tunnel-refused tunnel=web reason=\".*: " + conflict)
    server.wait_for("api-tunnel-refused tunnel=later ")
    assert [t["name"] for t in api.call("GET", "/v1/tunnels")[2]["tunnels"]] == ["static", "other"]
    assert api.call("DELETE", "/v1/tunnels/web")[0] == 204
    stored = json.loads((deployment.dir / "state" / "api-tunnels.json").read_text())["tunnels"]
    assert sorted(stored) == ["later", "other"]

    path.write_text(path.read_text().replace(f', "{LATER}"', ""))
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for("api-tunnel-admitted tunnel=later", start=mark)
    server.wait_for("server-reloaded", start=mark)
    assert [t["name"] for t in api.call("GET", "/v1/tunnels")[2]["tunnels"]] == ["static", "later", "other"]


def test_an_unreadable_state_file_starts_without_api_tunnels_and_writes_answer_503(deployment):
    state = deployment.dir / "state" / "api-tunnels.json"
    state.parent.mkdir()
    state.write_text("{not a table")
    server, api = start(deployment, [("static", [STATIC], [deployment.identity("static")])])
    server.wait_for("api-tunnels-unavailable .*is not an API Tunnel table")
    assert [t["name"] for t in api.call("GET", "/v1/tunnels")[2]["tunnels"]] == ["static"]
    status, _, body = api.call("PUT", "/v1/tunnels/web", tunnel([APP], ["d" * 64]))
    assert status == 503 and "unavailable" in body["error"]
    assert state.read_text() == "{not a table"
    assert api.call("GET", "/v1/tunnels/web")[0] == 404


def test_a_server_without_file_tunnels_serves_what_the_api_adds(deployment, backend):
    app_id = deployment.identity("app")
    server, api = start(deployment, [])
    server.wait_for("server-ready .*tunnels=0")
    assert api.call("GET", "/v1/tunnels")[2] == {"tunnels": []}
    assert api.call("PUT", "/v1/tunnels/app", tunnel([APP], [app_id]))[0] == 201
    deployment.start_client("app", [([APP], backend.address)])
    assert curl(deployment.public_port, APP, backend.ca).returncode == 0


def served_certificate(api):
    """The serial of the certificate the API presents (openssl s_client with the caller's)."""
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{api.port}", "-servername",
                           SERVER_HOSTNAME, "-CAfile", str(api.ca_file), "-cert", str(api.cert), "-key",
                           str(api.key), "-verify_return_error"],
                          input="", capture_output=True, text=True, timeout=20)
    assert "Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
    shown = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=done.stdout,
                           capture_output=True, text=True, timeout=20)
    return shown.stdout.strip()


def test_a_renewed_server_certificate_is_presented_from_the_next_connection(deployment):
    server, api = start(deployment, [("static", [STATIC], [deployment.identity("static")])])
    before = served_certificate(api)
    run_cli("server", "cert", "renew", "--dir", deployment.cert_dir)
    after = served_certificate(api)
    assert after.startswith("serial=") and after != before
    assert api.call("GET", "/v1/tunnels")[0] == 200
