"""The `fleet` phase of bench/bench.py: how soon a change made through one Server node's API
routes on another node of the fleet (issue 19 promises: within 2 s).

One real etcd on loopback (tests/etcd.py's `Etcd`, Debian etcd-server), two Server nodes A
and B with `[server.api]` listeners of their own and `etcd-endpoints` naming it, and one
Client (the bench's identity) with a Tunnel connection to each node (`server-address` in
list form) and one Service, the Catch-all, to the bench backend: it takes every name the
Tunnel routes, so the Tunnel's names can change without a `hostname-mirroring-drift`
warning.  The API Tunnel `fleet` (that identity) is created through A and waited for on
both nodes; then CHANGES PUTs replace its public-hostnames with a fresh name
`c{i}.fleet.bench.example`, written through A, B, A, ... in turn.  The clock starts when
the PUT's answer arrives; each node is then probed every PROBE_EVERY s (a thread a node)
with a real Visitor TLS handshake to its public port with the new name as SNI (a Server
closes a connection for a hostname it does not route, so a handshake completes only once
the name routes end to end: Server, Tunnel connection, Client, backend).  Propagation =
the time to the first completed handshake on the node NOT written to; beside it, when that
probe was sent (the rest is the handshake itself), and the same for the writer (sent at
~0: a node applies its own write before it answers).  A change not routing within BOUND s
counts as a failure; so does a new name that routes before its PUT (checked on both nodes
first: the control that shows the probe can fail).
Without etcd the phase prints "fleet: skipped (etcd not installed)" and measures nothing.
"""

import http.client
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from runewarp import harness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import free_port, run_cli  # noqa: E402 - the repository root first
from tests.etcd import ETCD, Etcd  # noqa: E402

CHANGES = int(os.environ.get("BENCH_FLEET_CHANGES", "20"))
TARGET_S = 2.0
BOUND = 15.0          # s: a change not routing by then is a failure, not a hang
PROBE_EVERY = 0.01    # s between two probe rounds
DOMAIN = "fleet.bench.example"
TUNNEL = "fleet"
NODES = ("a", "b")
_ISSUE = re.compile(r"\b(WARN|ERROR)\b|Traceback")


def unavailable():
    """Why the phase cannot run here; None when it can."""
    return None if ETCD else "etcd not installed"


class Api:
    """The API of one node over mutual TLS (stdlib only): `call` gives (status, JSON body)."""

    def __init__(self, port, hostname, server_ca, cert, key):
        self.port, self.hostname = port, hostname
        self.context = ssl.create_default_context(cafile=str(server_ca))
        self.context.load_cert_chain(str(cert), str(key))

    def call(self, method, path, body=None, timeout=15):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        conn = http.client.HTTPConnection(self.hostname, self.port, timeout=timeout)
        try:
            conn.sock = self.context.wrap_socket(sock, server_hostname=self.hostname)
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            reply = conn.getresponse()
            raw = reply.read()
            return reply.status, json.loads(raw) if raw else None
        finally:
            conn.close()
            sock.close()


_VISITOR = ssl.create_default_context()
_VISITOR.check_hostname = False
_VISITOR.verify_mode = ssl.CERT_NONE


def routes(port, hostname, timeout=2.0):
    """Whether a Visitor's TLS handshake for `hostname` on 127.0.0.1:`port` completes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, \
                _VISITOR.wrap_socket(sock, server_hostname=hostname):
            return True
    except OSError:   # ssl.SSLError, a reset or EOF: the Server closed it (unknown hostname)
        return False


def wait_routing(ports, hostname, since, bound=BOUND):
    """{node: (s from `since` to the start of the first probe for `hostname` that completed,
    s to its completion) or None past `bound`}: one thread a node, probing every PROBE_EVERY
    s, so no node's probe waits for another's."""
    seen = {}

    def probe(node, port):
        while (sent := time.perf_counter()) - since <= bound:
            if routes(port, hostname):
                seen[node] = (sent - since, time.perf_counter() - since)
                return
            time.sleep(PROBE_EVERY)

    threads = [threading.Thread(target=probe, args=item, daemon=True) for item in ports.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(bound + 5)
    return {node: seen.get(node) for node in ports}


def tunnel(hostname, identity):
    return {"public-hostnames": [hostname], "client-identities": [identity]}


def change(apis, ports, identity, i):
    """Change `i` (1-based): written through NODES[(i - 1) % 2], probed on both nodes."""
    writer = NODES[(i - 1) % len(NODES)]
    other = next(node for node in NODES if node != writer)
    name = f"c{i}.{DOMAIN}"
    early = [node for node, port in ports.items() if routes(port, name)]
    if early:   # the probe would measure nothing: the control that keeps it honest
        return {"i": i, "writer": writer, "error": f"{name} routes on {early} before its PUT"}
    sent = time.perf_counter()
    status, body = apis[writer].call("PUT", f"/v1/tunnels/{TUNNEL}", tunnel(name, identity))
    answered = time.perf_counter()
    if status not in (200, 201):
        return {"i": i, "writer": writer, "error": f"PUT through {writer}: {status} {body}"}
    times = wait_routing(ports, name, answered)
    out = {"i": i, "writer": writer, "put_ms": _ms(answered - sent)}
    for role, node in (("other", other), ("writer", writer)):
        probe_sent, done = times[node] or (None, None)
        out[f"{role}_ms"], out[f"{role}_sent_ms"] = _ms(done), _ms(probe_sent)
    if times[other] is None:
        out["error"] = f"{name} not routing on node {other} within {BOUND:g} s"
    return out


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def pct(values, p):
    """Nearest-rank percentile (table.pct's rule); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-p * len(ordered) // 100) - 1)]


def summarize(runs, target_s=TARGET_S):
    """The figures of `runs` (change() results): percentiles of the other node's time (to
    the first completed handshake), how many changes took longer than the target or failed,
    and whether the target was met; beside them the times the successful probes were sent
    and the node written to."""
    def figures(key):
        return [r[key] for r in runs if r.get(key) is not None]

    other, failures = figures("other_ms"), [r["error"] for r in runs if "error" in r]
    over = sum(1 for ms in other if ms > target_s * 1000)
    out = {"changes": len(runs), "measured": len(other), "target_s": target_s,
           "p50_ms": pct(other, 50), "p99_ms": pct(other, 99), "max_ms": max(other, default=None),
           "over_target": over, "failures": failures, "met": bool(other) and not failures and over == 0}
    for key in ("other_sent_ms", "writer_ms", "writer_sent_ms", "put_ms"):
        out[f"{key[:-3]}_p50_ms"], out[f"{key[:-3]}_max_ms"] = pct(figures(key), 50), \
            max(figures(key), default=None)
    return out


def report(res):
    """The lines for the end of the table (and for a BENCH_ONLY=fleet run)."""
    for key, text in (("skipped", "skipped ({})"), ("failed", "FAILED: {}")):
        if key in res:
            return ["fleet: " + text.format(res[key])]
    if "changes" not in res:
        return []
    if not res["measured"]:
        return [f"fleet: no change routed on the other node ({res['changes']} changes; target ≤ "
                f"{res['target_s']:g} s: NOT met)"] + [f"  {e}" for e in res["failures"][:5]]

    def p50_max(key):
        p50, top = res[f"{key}_p50_ms"], res[f"{key}_max_ms"]
        return "-" if p50 is None else f"p50 {p50:.0f} ms, max {top:.0f} ms"

    lines = [f"fleet: a change through one node's API routes on the other in p50 {res['p50_ms']:.0f} ms,"
             f" max {res['max_ms']:.0f} ms ({res['changes']} changes; target ≤ {res['target_s']:g} s: "
             f"{'met' if res['met'] else 'NOT met'})",
             f"  p99 {res['p99_ms']:.0f} ms; over {res['target_s']:g} s: {res['over_target']}; failed:"
             f" {len(res['failures'])}; on the node written to: {p50_max('writer')}; the PUT itself"
             f" (sent to answered): {p50_max('put')}",
             f"  (time from the PUT's answer to the first completed Visitor TLS handshake with the new"
             f" name, probed every {PROBE_EVERY * 1000:.0f} ms on each node; that probe was sent after"
             f" {p50_max('other_sent')} on the other node, {p50_max('writer_sent')} on the writer)"]
    lines += [f"  {e}" for e in res["failures"][:5]]
    return lines


# --- the fleet ------------------------------------------------------------------------------

def caller(folder):
    """The API caller's certificate and key, from a CA made by our CLI: the nodes'
    client-ca-file."""
    run_cli("client", "visitor-ca", "init", "--dir", folder / "api-ca")
    run_cli("client", "visitor-cert", "issue", "--name", "operator", "--dir", folder / "api-ca",
            "--out-dir", folder / "caller")
    return folder / "api-ca" / "visitor-ca.crt", folder / "caller" / "operator.crt", \
        folder / "caller" / "operator.key"


def start_node(folder, name, material, server_hostname, etcd_url, api_ca, env, access_log):
    """One Server node: its own public port and API listener, the fleet's etcd, no static
    Tunnel.  (process, public port, API port)."""
    api_port = free_port()
    path = folder / f"server-{name}.toml"
    path.write_text(harness.config_text("server", {
        "hostname": server_hostname, "public-bind-address": "127.0.0.1:0",
        "cert-dir": material["server_ca"].parent, "graceful-shutdown-duration": 2,
        "access-log": access_log,
    }, extra=(f"[server.api]\nbind-address = \"127.0.0.1:{api_port}\"\n"
              f"client-ca-file = {json.dumps(str(api_ca))}\n"
              f"state-file = {json.dumps(str(folder / f'state-{name}.json'))}\n"
              f"etcd-endpoints = [{json.dumps(etcd_url)}]\n"), log_level="info"))
    proc, port = harness.start_server(path, env, timeout=30, name=f"runewarp-server-fleet-{name}",
                                      new_session=True)
    return proc, port, api_port


def run(folder, material, identity_dir, server_hostname, backend_port, started, access_log=None,
        changes=CHANGES):
    """Start the fleet (every process is appended to `started`, newest last, for the caller
    to stop by PID), make `changes` changes and return the figures with every run."""
    folder.mkdir()
    etcd = Etcd(folder / "etcd")
    started.append(etcd.proc)
    api_ca, cert, key = caller(folder)
    env = harness.resolve_env(server_hostname)
    nodes, ports, apis = {}, {}, {}
    for name in NODES:
        proc, ports[name], api_port = start_node(folder, name, material, server_hostname, etcd.url,
                                                 api_ca, env, access_log)
        started.append(proc)
        nodes[name] = proc
        proc.wait_for("api-listening", timeout=30)
        apis[name] = Api(api_port, server_hostname, material["server_ca"], cert, key)
    identity = material["identity"]
    first = f"c0.{DOMAIN}"
    status, body = apis["a"].call("PUT", f"/v1/tunnels/{TUNNEL}", tunnel(first, identity))
    if status not in (200, 201):
        raise RuntimeError(f"creating the API Tunnel {TUNNEL!r} through node a: {status} {body}")
    nodes["b"].wait_for("api-tunnels-followed tunnels=1", timeout=30)
    path = folder / "client.toml"
    path.write_text(harness.config_text("client", {
        "server-address": [f"127.0.0.1:{ports[name]}" for name in NODES],
        "server-name": server_hostname, "server-trust": "ca-file",
        "server-ca-file": material["server_ca"], "identity-dir": identity_dir,
        "graceful-shutdown-duration": 2, "access-log": access_log,
    }, [{"backend-address": f"127.0.0.1:{backend_port}"}],
        log_level="info"))
    client = harness.start_client(path, env, wait=False, name="runewarp-client-fleet",
                                  new_session=True)
    started.append(client)
    client.wait_count(harness.CLIENT_READY, len(NODES), timeout=30)
    warm = wait_routing(ports, first, time.perf_counter(), bound=30)
    if None in warm.values():
        raise RuntimeError(f"{first} never routed on every node: {warm}")
    print(f"  fleet: etcd {etcd.url} (pid {etcd.proc.pid}), node a public {ports['a']} api"
          f" {apis['a'].port}, node b public {ports['b']} api {apis['b'].port}; {changes} changes",
          flush=True)
    runs = []
    for i in range(1, changes + 1):
        runs.append(result := change(apis, ports, identity, i))
        print(f"  fleet change {i:3} via {result['writer']}: "
              + (f"PUT {result['put_ms']} ms; other node {result['other_ms']} ms (probe sent at"
                 f" {result['other_sent_ms']} ms), writer {result['writer_ms']} ms (sent at"
                 f" {result['writer_sent_ms']} ms)"
                 if "other_ms" in result else "")
              + (f"  ERROR {result['error']}" if "error" in result else ""), flush=True)
    out = summarize(runs)
    out["runs"] = runs
    out["tunnel_connections"] = client.count(harness.CLIENT_READY)
    issues = {p.name: [line for line in p.lines if _ISSUE.search(line)][:10]
              for p in (*nodes.values(), client)}
    out["logs"] = {name: lines for name, lines in issues.items() if lines}
    for text in report(out):
        print(text, flush=True)
    return out
