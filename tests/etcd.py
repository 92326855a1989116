"""A real etcd (Debian `etcd-server`) for the fleet tests, on 127.0.0.1.

`Etcd(folder)` starts one single-member etcd on free client and peer ports with its data dir
under `folder`, and returns once `/health` says true.  `stop()` ends it by PID (the tests'
outage); `start()` brings it back on the same ports and data dir, so what was written before
the outage is still there.  The tests that need it are skipped, saying why, only when the
`etcd` binary is missing.

Run as `python -m tests.etcd follow URL PREFIX STATE_FILE`, it is a monkey-patched Server-like
process around one EtcdStore: it follows the prefix and logs each table it is given
(`follower-table`, JSON log lines) and a `hub-alive` tick each 0.5 s, so a test sees both the
watch and that the watch never blocks the event loop.

Run as `python -m tests.etcd put STATE_FILE NAME RECORD URL...`, it is a monkey-patched
process that makes one `EtcdStore.put` and logs how it ended (`store-put-done`, or
`store-put-failed` with the reason): a store call's deadline holds only where gevent's
Timeout can interrupt a socket, as in the Server.
"""

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from runewarp import harness
from runewarp.config.model import ApiConfig

from .conftest import ROOT, cli_material, free_port, run_cli

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
needs_etcd = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (Debian etcd-server; "
                                                      ".ci/run installs it)")
START_DEADLINE = 20.0


class Etcd:
    """`tls` (from `tls_material`): HTTPS at https://localhost:PORT.  With `tls.client_auth`
    (from `client_auth_material`), etcd also requires a client certificate from `tls.ca`
    (--client-cert-auth)."""

    def __init__(self, folder, tls=None):
        self.folder = Path(folder)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.tls = tls
        self.url = (f"https://localhost:{self.client_port}" if tls
                    else f"http://127.0.0.1:{self.client_port}")
        self.proc = None
        self.start()

    def start(self):
        peer = f"http://127.0.0.1:{self.peer_port}"
        listen = self.url.replace("localhost", "127.0.0.1")
        cmd = [ETCD, "--name", "test", "--data-dir", self.folder / "data",
               "--listen-client-urls", listen, "--advertise-client-urls", self.url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"test={peer}", "--log-level", "warn", "--logger", "zap"]
        if self.tls:
            cmd += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
        if getattr(self.tls, "client_auth", False):
            cmd += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        self.proc = harness.Process(cmd, name="etcd")
        deadline = time.monotonic() + START_DEADLINE
        while not self.healthy():
            if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise harness.NoMatch(f"etcd did not become healthy:\n{self.proc.log()}")
            time.sleep(0.1)

    def healthy(self):
        context = ssl.create_default_context(cafile=self.tls.ca) if self.tls else None
        if getattr(self.tls, "client_auth", False):
            context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1,
                                        context=context) as response:
                return json.load(response).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self):
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None


def tls_material(folder):
    """etcd's certificate for `localhost` (a Server certificate made by our CLI, `ca` its CA)
    and a client pair (a Visitor certificate): the CLI's material, used as etcd's."""
    folder = Path(folder)
    cli_material(folder / "cert", "server", "cert", "init", "--hostname", "localhost")
    cli_material(folder / "clients", "client", "visitor-ca", "init")
    run_cli("client", "visitor-cert", "issue", "--name", "runewarp-node", "--dir",
            folder / "clients", "--out-dir", folder)
    return SimpleNamespace(cert=folder / "cert/server.crt", key=folder / "cert/server.key",
                           ca=folder / "cert/server-ca.crt",
                           client_ca=folder / "clients/visitor-ca.crt",
                           client_cert=folder / "runewarp-node.crt",
                           client_key=folder / "runewarp-node.key")


def client_auth_material(folder):
    """A PKI made with the openssl CLI for etcd's --client-cert-auth: one CA; etcd's
    certificate for localhost, also for client authentication (etcd 3.4's gateway dials etcd
    with it, so our CLI's server certificates do not serve); a node's client certificate."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)

    def issue(name, subject, extensions):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr", "-subj", subject)
        (folder / f"{name}.ext").write_text(extensions)
        openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.crt",
                "-CAkey", folder / "ca.key", "-CAcreateserial", "-days", "1",
                "-out", folder / f"{name}.crt", "-extfile", folder / f"{name}.ext")

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", folder / "ca.key", "-out", folder / "ca.crt", "-subj", "/CN=etcd test CA",
            "-days", "1")
    issue("etcd", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                   "extendedKeyUsage=serverAuth,clientAuth\n")
    issue("node", "/CN=runewarp-node", "extendedKeyUsage=clientAuth\n")
    return SimpleNamespace(cert=folder / "etcd.crt", key=folder / "etcd.key", ca=folder / "ca.crt",
                           client_cert=folder / "node.crt", client_key=folder / "node.key",
                           client_auth=True)


@pytest.fixture
def etcd(tmp_path):
    server = Etcd(tmp_path / "etcd")
    yield server
    server.stop()


def gateway(etcd, path, body):
    """A request to etcd's gateway made without Runewarp: the other writer, the raw reader."""
    request = urllib.request.Request(f"{etcd.url}/v3/{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def raw_put(etcd, key, value):
    """`etcdctl put KEY VALUE`: a value written by hand."""
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    gateway(etcd, "kv/put", {"key": b64(key), "value": b64(value)})


def api_config(state_file, endpoints, prefix="/runewarp/tunnels/", tls=None):
    """The `[server.api]` of a Server whose API Tunnels are in etcd at `endpoints` (`tls`:
    from `tls_material`, or any object with `ca`, `client_cert` and `client_key`)."""
    return ApiConfig(state_file=Path(state_file), etcd_endpoints=tuple(endpoints),
                     etcd_prefix=prefix, etcd_ca_file=tls and tls.ca,
                     etcd_cert_file=tls and tls.client_cert, etcd_key_file=tls and tls.client_key)


def follower(url, prefix, state_file):
    """The `follow` process below, once it logged its first table (the load)."""
    proc = harness.Process([sys.executable, "-m", "tests.etcd", "follow", url, prefix, state_file],
                           cwd=ROOT, name="etcd-follower")
    try:
        proc.wait_for("follower-loaded", timeout=20)
    except harness.NoMatch:
        proc.kill()
        raise
    return proc


def follower_tables(proc):
    """Every table the follower was given, oldest first."""
    return [json.loads(json.loads(line)["table"]) for line in proc.log().splitlines()
            if '"follower-table"' in line]


def wait_table(proc, table, timeout=10):
    """Until the last table the follower was given is `table`; NoMatch after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (follower_tables(proc) and follower_tables(proc)[-1] == table):
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise harness.NoMatch(f"the follower never had {table}:\n{proc.log()}")
        time.sleep(0.05)


def put_in_process(state_file, name, record, *urls):
    """The reason of the StoreUnavailable a monkey-patched `put` raised, or None once it
    stored the record."""
    proc = harness.Process([sys.executable, "-m", "tests.etcd", "put", state_file, name,
                            json.dumps(record), *urls], cwd=ROOT, name="etcd-put")
    try:
        proc.wait_for('"store-put-(done|failed)"', timeout=20)
    finally:
        proc.kill()
    line = next(json.loads(line) for line in proc.log().splitlines() if '"store-put-' in line)
    return line.get("reason")


def _put(state_file, name, record, *urls):
    from gevent import monkey

    monkey.patch_all()
    from runewarp.io.etcdstore import EtcdStore
    from runewarp.io.tunnelstore import StoreUnavailable
    from runewarp.logs import Logger

    log = Logger(fmt="json", stream=sys.stderr)
    store = EtcdStore(api_config(state_file, urls), log)
    try:
        store.put(name, json.loads(record))
    except StoreUnavailable as exc:
        log.info("store-put-failed", reason=str(exc))
    else:
        log.info("store-put-done")


def _follow(url, prefix, state_file):
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from runewarp.io.etcdstore import EtcdStore
    from runewarp.logs import Logger

    log = Logger(fmt="json", stream=sys.stderr)
    store = EtcdStore(api_config(state_file, [url], prefix), log)
    table = store.load()
    log.info("follower-loaded", table=json.dumps(table, sort_keys=True))
    store.follow(lambda table, is_current: log.info("follower-table",
                                                    table=json.dumps(table, sort_keys=True)))
    while True:
        log.info("hub-alive")
        gevent.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1:2] == ["follow"] and len(sys.argv) == 5:
        _follow(*sys.argv[2:])
    elif sys.argv[1:2] == ["put"] and len(sys.argv) >= 6:
        _put(*sys.argv[2:])
    else:
        raise SystemExit("usage: python -m tests.etcd follow URL PREFIX STATE_FILE\n"
                         "       python -m tests.etcd put STATE_FILE NAME RECORD URL...")
