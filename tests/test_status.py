"""`runewarp server|client status`: the /status document as tables (runewarp/status.py),
and the CLI's exits when no process answers."""

import http.server
import json
import threading

import pytest

from runewarp import cli, status

from .test_daemon import runewarp_lookalike

NOW = 1_790_000_000  # 2026-09-21T...Z
IDENTITY = "17ad449285b03164149ca52ef0e23c643e0fbf3cce4a9aaa8eced6629a968268"

SERVER = {
    "version": "0.1.0", "role": "server", "uptime_seconds": 7384.5,
    "config": "/etc/runewarp/server.toml", "ready": True,
    "certificates": [{"kind": "server", "hostname": "tunnel.example.com",
                      "not_after": "2026-10-01T00:00:00Z", "not_after_seconds": NOW + 9 * 86400 + 5}],
    "tunnels": [
        {"name": "apps", "public_hostnames": ["app.example.com", "api.example.com"],
         "active_streams": 3,
         "members": [{"client_identity": IDENTITY, "instance": "8d94c8545fb5",
                      "peer": "203.0.113.7:40122", "connected_since": "2026-09-20T23:10:05Z",
                      "active_streams": 3, "ping_rtt_seconds": 0.0021,
                      "hostnames": ["app.example.com"], "catch_all": False},
                     {"client_identity": IDENTITY, "instance": "0c1d2e3f4a5b",
                      "peer": "203.0.113.8:40500", "connected_since": "2026-09-20T23:11:00Z",
                      "active_streams": 0, "ping_rtt_seconds": None,
                      "hostnames": ["api.example.com"], "catch_all": True}]},
        {"name": "empty", "public_hostnames": ["idle.example.com"], "active_streams": 0,
         "members": []},
    ],
}

CLIENT = {
    "version": "0.1.0", "role": "client", "uptime_seconds": 42, "config": None, "ready": False,
    "certificates": [{"kind": "public", "hostname": "admin.example.com",
                      "not_after": "2026-09-01T00:00:00Z", "not_after_seconds": NOW - 86400}],
    "servers": [
        {"address": "tunnel.example.com:443", "resolved_address": "192.0.2.7:443",
         "connection": 0, "server_worker": 1, "server_workers": 2,
         "client_identity": IDENTITY, "state": "established",
         "connected_since": "2026-09-21T10:00:00Z", "last_error": None,
         "next_retry_seconds": None, "active_streams": 2},
        {"address": "backup.example.com:443", "resolved_address": None, "connection": None,
         "state": "waiting", "connected_since": None,
         "last_error": "connection refused\x1b[2J", "next_retry_seconds": 1.5,
         "active_streams": 0},
    ],
    "services": [
        {"public_hostnames": ["app.example.com"], "backend": "127.0.0.1:8443",
         "tls_mode": "passthrough", "active_streams": 2},
        {"public_hostnames": [], "backend": "127.0.0.1:9000", "tls_mode": "terminate",
         "active_streams": 0},
    ],
}


def row(text, first):
    """The table row whose first cell is `first`, split on runs of 2+ spaces."""
    import re

    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_server_document_as_tables():
    text = status.render(SERVER, NOW)
    assert text.startswith("Runewarp server 0.1.0: ready, up 2h 3m\nConfig: /etc/runewarp/server.toml")
    assert row(text, "apps") == ["apps", "app.example.com, api.example.com", "2", "3"]
    assert row(text, "empty") == ["empty", "idle.example.com", "0", "0"]
    members = text.split("Pool members\n")[1]
    assert row(members, "apps") == ["apps", IDENTITY[:12], "8d94c8545fb5", "203.0.113.7:40122",
                                    "app.example.com", "2026-09-20T23:10:05Z", "3", "2.1 ms", "-"]
    assert "api.example.com, (Catch-all)" in members.splitlines()[2]  # replicas side by side
    assert row(text, "server") == ["server", "tunnel.example.com", "2026-10-01T00:00:00Z", "9"]
    assert IDENTITY not in text  # the prefix is enough to tell members apart


def test_server_quic_sockets_and_flows_show_only_with_public_quic():
    assert "QUIC" not in status.render(SERVER, NOW)
    text = status.render({**SERVER, "quic": {"addresses": ["0.0.0.0:443", "[::]:443"],
                                             "flows": 12, "pending_flows": 1}}, NOW)
    assert row(text.split("QUIC\n")[1], "0.0.0.0:443, [::]:443") == [
        "0.0.0.0:443, [::]:443", "12", "1"]


def test_client_document_as_tables():
    text = status.render(CLIENT, NOW)
    assert text.startswith("Runewarp client 0.1.0: NOT READY, up 42s\n")
    assert "Config:" not in text
    assert row(text, "tunnel.example.com:443") == [
        "tunnel.example.com:443", "192.0.2.7:443", "0", "1/2", IDENTITY[:12], "established",
        "2026-09-21T10:00:00Z", "2", "-", "-"]
    assert row(text, "backup.example.com:443") == [
        "backup.example.com:443", "-", "-", "-", "-", "waiting", "-", "0", "connection refused\\x1b[2J",
        "1.5s"]
    assert row(text, "app.example.com") == ["app.example.com", "127.0.0.1:8443", "passthrough", "2", "-"]
    assert row(text, "(Catch-all)") == ["(Catch-all)", "127.0.0.1:9000", "terminate", "0", "-"]
    assert row(text, "public") == ["public", "admin.example.com", "2026-09-01T00:00:00Z", "EXPIRED"]
    assert "\x1b" not in text


def test_empty_and_partial_documents_still_render():
    text = status.render({"role": "server", "tunnels": [], "certificates": []}, NOW)
    assert "(no Tunnels)" in text and "(no Tunnel connections)" in text
    assert "(none in use)" in text
    assert status.render({"role": "client"}, NOW).count("(no ") == 2
    assert status.render({}, NOW).startswith("Runewarp ? ?: readiness unknown")


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.9, "59s"), (61, "1m 1s"),
                                          (3600, "1h 0m"), (90061, "1d 1h")])
def test_uptime(seconds, text):
    assert status.duration(seconds) == text


# -- the CLI against a stand-in listener and against nothing --

class Answer(http.server.BaseHTTPRequestHandler):
    document = SERVER

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = json.dumps(self.document).encode() if self.path == "/status" else b"no"
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


SERVER_TOML = """\
[server]
hostname = "tunnel.example.com"
public-bind-address = "127.0.0.1:8443"
{metrics}
[[server.tunnels]]
name = "apps"
public-hostnames = ["app.example.com"]
client-identities = ["{identity}"]
"""


def server_config(write, metrics=""):
    return write(SERVER_TOML.format(metrics=metrics, identity=IDENTITY))


def test_status_prints_the_table_and_json(write, listener, capsys, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy must never be used
    path = server_config(write, f'[server.metrics]\nbind-address = "0.0.0.0:{listener}"')
    assert cli.main(["server", "status", "-c", str(path)]) == 0
    assert "Pool members" in capsys.readouterr().out
    assert cli.main(["server", "status", "-c", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SERVER


def test_status_without_a_metrics_listener_names_the_key(write, capsys):
    path = server_config(write)
    assert cli.main(["server", "status", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "server.metrics.bind-address" in err and "not enabled" in err


def test_status_with_nothing_listening_says_so(write, tmp_path, capsys):
    """No pid file either: not running.  A pid file naming a live Runewarp Server: it runs
    but does not answer."""
    pid_file = tmp_path / "server.pid"
    looks_like_a_server = runewarp_lookalike(tmp_path, "server")
    try:
        with __import__("socket").socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: refused
            path = server_config(write, f'pid-file = "{pid_file}"\n'
                                 f'[server.metrics]\nbind-address = "127.0.0.1:{port}"')
            assert cli.main(["server", "status", "-c", str(path)]) == 1
            assert capsys.readouterr().err == (
                f"error: the server is not running: nothing answers at 127.0.0.1:{port} "
                f"(server.metrics.bind-address in {path}) and there is no pid file at "
                f"{pid_file}\n")
            pid_file.write_text(f"{looks_like_a_server.pid}\n")
            assert cli.main(["server", "status", "-c", str(path)]) == 1
    finally:
        looks_like_a_server.kill()
        looks_like_a_server.wait()
    err = capsys.readouterr().err
    assert f"not running or not reachable at 127.0.0.1:{port}" in err
    assert "server.metrics.bind-address" in err


def test_status_without_a_config_is_a_configuration_error(env, monkeypatch, capsys):
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert cli.main(["client", "status"]) == 2
    assert "no config file" in capsys.readouterr().err
