"""Two Server nodes behind HAProxy, two Client replicas, Visitors under load, a rollout.

    python -m tools.ha_demo [--rate 300] [--duration 60] [--json]     (`make ha-demo`)

Everything is real and runs in network namespaces (tools/netns.py; needs root):

    visitor 10.99.0.3 --> haproxy 10.99.0.2:443 --> node1 10.99.0.11:443 \\ Tunnel connections
                          (TCP, /readyz checks)  \\-> node2 10.99.0.12:443 / from both Clients
    client-a 10.99.0.21 and client-b 10.99.0.22: one Tunnel's identity, each connected to
    both nodes, each with nginx (`ssl proxy_protocol`) as its Local backend on 127.0.0.1.

The load generator (tools/ha_loadgen.py) runs in the visitor namespace for the whole
scenario: rolling hand-over of node1 then node2 (SIGUSR2), graceful restart of each Client
in turn, SIGHUP reload of both nodes — zero failed Visitor requests expected — then
`kill -9` of node1: only its in-flight requests may fail, and requests started after
HAProxy's check interval all succeed.  tests/e2e/test_ha.py runs the same with less load.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from signal import SIGHUP, SIGKILL, SIGTERM, SIGUSR2

from runewarp import harness
from runewarp.material import public_cert_folder
from tools import ha_results as results
from tools import netns

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "tools" / "ha_loadgen.py"
NGINX = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
HAPROXY = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
SERVER_HOSTNAME = "tunnel.example.com"
APP = "app.example.com"
PUBLIC_PORT = 443
METRICS_PORT = 9464
BACKEND_PORT = 8443
HOSTS = {"haproxy": 2, "visitor": 3, "node1": 11, "node2": 12, "client-a": 21, "client-b": 22}
NODES = ("node1", "node2")
CLIENTS = ("client-a", "client-b")
CHECK_INTER_MS, CHECK_FALL = 500, 2
CHECK_WINDOW = CHECK_INTER_MS * CHECK_FALL / 1000 + 0.5  # seconds until HAProxy stops sending


@dataclass
class Plan:
    """How hard and how long: `rate` requests/s over `loadgens` processes."""

    rate: float = 300.0
    loadgens: int = 2
    threads: int = 48
    duration: float = 60.0  # the load's whole run, kill -9 phase included
    settle: float = 1.0     # seconds of load between two steps
    after_kill: float = 5.0


def haproxy_config():
    """HAProxy in TCP mode in front of both nodes' public port (docs/deployment.md shows it)."""
    addr = {name: str(netns.SUBNET.network_address + n) for name, n in HOSTS.items()}
    return f"""global
    log stderr format raw local0
    maxconn 4096

defaults
    mode tcp
    log global
    option tcplog
    option dontlog-normal
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1

frontend visitors
    bind {addr['haproxy']}:{PUBLIC_PORT}
    default_backend runewarp

backend runewarp
    balance roundrobin
    option httpchk GET /readyz
    default-server check port {METRICS_PORT} inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise 2 send-proxy-v2
    server node1 {addr['node1']}:{PUBLIC_PORT}
    server node2 {addr['node2']}:{PUBLIC_PORT}
"""


def server_config(identity, haproxy_address):
    settings = {"hostname": SERVER_HOSTNAME, "public-bind-address": f"0.0.0.0:{PUBLIC_PORT}",
                "cert-dir": "server-cert", "graceful-shutdown-duration": 5,
                "pid-file": "server.pid", "access-log": False,
                "trusted-proxies": [f"{haproxy_address}/32"]}
    return harness.config_text("server", settings, [
        {"name": "app", "public-hostnames": [APP], "client-identities": [identity]}],
        log_level="info", extra=f'[server.metrics]\nbind-address = "0.0.0.0:{METRICS_PORT}"')


def client_config():
    """One name with two A records (/etc/netns/<client>/hosts): a connection to each node."""
    return harness.config_text("client", {
        "server-address": f"{SERVER_HOSTNAME}:{PUBLIC_PORT}", "connections-per-server": 1,
        "resolve-interval": 5, "server-trust": "ca-file", "server-ca-file": "server-ca.crt",
        "identity-dir": "identity", "graceful-shutdown-duration": 5, "access-log": False,
    }, [{"public-hostnames": [APP], "backend-address": f"127.0.0.1:{BACKEND_PORT}",
         "proxy-protocol": "v2"}], log_level="info")


def nginx_config(folder, name, cert, key):
    """A TLS backend that takes the PROXY header and answers with the Visitor address it
    carried and its own name."""
    return harness.nginx_config(folder, f"""    access_log off;
    server {{
        listen 127.0.0.1:{BACKEND_PORT} ssl proxy_protocol;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "$proxy_protocol_addr {name}\\n"; }}
    }}
""", connections=4096, error_log=f"{folder}/error.log warn")


def cli(*args):
    proc = subprocess.run(harness.runewarp_cmd(*args), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"runewarp {' '.join(map(str, args))}: {proc.stderr}")
    return proc.stdout


class Scenario:
    """The namespaces, files and processes of one run; `close()` removes all of them."""

    def __init__(self, workdir, plan, log=print):
        self.dir = Path(workdir)
        self.plan = plan
        self.log = log
        self.procs = []  # harness.Process, stopped newest first
        self.nodes, self.clients = {}, {}
        self.steps = []
        self.net = netns.Network("rwha")

    # -- set-up --
    def start(self):
        for name, octet in HOSTS.items():
            self.net.add_host(name, octet)
        node_addresses = [self.net.address(n) for n in NODES]
        for name in CLIENTS:  # the Tunnel's one name, resolving to every node
            self.net.set_hosts(name, [(a, SERVER_HOSTNAME) for a in node_addresses])
        material = self.dir / "material"
        cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", material / "server-cert")
        identity = cli("client", "identity", "init", "--dir", material / "identity").strip()
        cli("client", "public-cert", "init", "--hostname", APP, "--dir", material / "public-cert")
        self.ca = material / "public-cert" / "public-ca.crt"
        server_toml = server_config(identity, self.net.address("haproxy"))
        for name in NODES:
            folder = self.dir / name
            shutil.copytree(material / "server-cert", folder / "server-cert", symlinks=True)
            (folder / "server.toml").write_text(server_toml)
            self.start_node(name)
        self.start_haproxy()
        client_toml = client_config()
        public = material / "public-cert" / public_cert_folder(APP)
        for name in CLIENTS:
            folder = self.dir / name
            shutil.copytree(material / "identity", folder / "identity", symlinks=True)
            shutil.copy(material / "server-cert" / "server-ca.crt", folder / "server-ca.crt")
            (folder / "client.toml").write_text(client_toml)
            (folder / "nginx").mkdir()
            conf = folder / "nginx" / "nginx.conf"
            conf.write_text(nginx_config(folder / "nginx", name, public / "public.crt",
                                         public / "public.key"))
            nginx = self.spawn(name, [NGINX, "-p", f"{folder / 'nginx'}/", "-e", "stderr", "-c", conf],
                               f"nginx-{name}")
            harness.wait_listening(nginx, [BACKEND_PORT])
            self.start_client(name)

    def spawn(self, host, cmd, name, **options):
        proc = harness.Process([*self.net.exec_prefix(host), *cmd], name=name, **options)
        self.procs.append(proc)
        return proc

    def start_node(self, name):
        proc, _ = harness.start_server(self.dir / name / "server.toml", dict(os.environ),
                                       bind_ip="0.0.0.0", prefix=self.net.exec_prefix(name),
                                       timeout=30, name=f"server-{name}")
        self.procs.append(proc)
        self.nodes[name] = proc

    def start_haproxy(self):
        conf = self.dir / "haproxy.cfg"
        conf.write_text(haproxy_config())
        self.haproxy = self.spawn("haproxy", [HAPROXY, "-db", "-f", conf], "haproxy")
        harness.wait_listening(self.haproxy, [PUBLIC_PORT])

    def start_client(self, name):
        """A Client, once it holds a Tunnel connection to every node."""
        proc = harness.start_client(self.dir / name / "client.toml", dict(os.environ),
                                    wait=False, prefix=self.net.exec_prefix(name),
                                    cwd=self.dir / name, name=f"client-{name}")
        self.procs.append(proc)
        self.clients[name] = proc
        proc.wait_count(harness.CLIENT_READY, len(NODES), timeout=30)

    def node_pid(self, name):
        return harness.read_pid_file(self.dir / name / "server.pid")

    # -- the load --
    def start_load(self):
        plan = self.plan
        cmd = [sys.executable, LOADGEN, "--address", self.net.address("haproxy"),
               "--port", PUBLIC_PORT, "--host", APP, "--ca", self.ca,
               "--rate", plan.rate / plan.loadgens, "--threads", plan.threads // plan.loadgens,
               "--max-duration", plan.duration + 60]
        self.loadgens = [self.spawn("visitor", cmd, f"loadgen-{i}", stdout=subprocess.PIPE)
                         for i in range(plan.loadgens)]
        self.load_started = time.time()

    def stop_load(self):
        outputs = []
        for proc in self.loadgens:
            proc.signal(SIGTERM)
        for proc in self.loadgens:
            out = proc.popen.stdout.read()
            if proc.popen.wait(60) != 0 or not out:
                raise RuntimeError(f"{proc.name} failed:\n{proc.log()}")
            outputs.append(json.loads(out))
        return results.merge(outputs)

    # -- the steps --
    def step(self, label, action):
        started = time.time()
        action()
        self.steps.append({"step": label, "start": round(started, 3),
                           "seconds": round(time.time() - started, 2)})
        self.log(f"  {label}: {time.time() - started:.1f}s")
        time.sleep(self.plan.settle)

    def handover(self, name):
        """kill -USR2: the successor rewrites the pid-file; every Client reconnects to it."""
        old = self.node_pid(name)
        marks = {c: self.clients[c].count(harness.CLIENT_READY) for c in CLIENTS}
        os.kill(old, SIGUSR2)
        new = harness.wait_pid_file(self.dir / name / "server.pid", other_than=old, timeout=30)
        for client in CLIENTS:
            self.clients[client].wait_count(harness.CLIENT_READY, marks[client] + 1, timeout=30)
        self.log(f"    {name}: pid {old} -> {new}")

    def restart_client(self, name):
        self.clients[name].stop(SIGTERM, timeout=30)
        self.start_client(name)

    def reload_nodes(self):
        """Both nodes get the same edit (a longer graceful-shutdown-duration) and SIGHUP."""
        marks = {n: len(self.nodes[n].lines) for n in NODES}
        for name in NODES:
            path = self.dir / name / "server.toml"
            path.write_text(path.read_text().replace("graceful-shutdown-duration = 5",
                                                     "graceful-shutdown-duration = 6"))
            os.kill(self.node_pid(name), SIGHUP)
        for name in NODES:
            self.nodes[name].wait_for("server-reloaded", start=marks[name], timeout=30)

    def run(self):
        """The whole scenario; the summary dict."""
        plan = self.plan
        self.start_load()
        time.sleep(plan.settle * 2)
        for name in NODES:
            self.step(f"hand-over {name} (kill -USR2)", lambda n=name: self.handover(n))
        for name in CLIENTS:
            self.step(f"graceful restart {name}", lambda n=name: self.restart_client(n))
        self.step("reload node1 and node2 (kill -HUP)", self.reload_nodes)
        rest = plan.duration - plan.after_kill - (time.time() - self.load_started)
        time.sleep(max(0.0, rest))
        victim = self.node_pid("node1")
        self.killed_at = time.time()
        os.kill(victim, SIGKILL)
        self.log(f"  kill -9 node1 (pid {victim})")
        try:
            self.haproxy.wait_for(r"Server runewarp/node1 is DOWN", timeout=plan.after_kill)
            self.marked_down = round(time.time() - self.killed_at, 2)
        except harness.NoMatch:
            self.marked_down = None
        self.log(f"  HAProxy marked node1 down after {self.marked_down}s")
        time.sleep(max(0.0, plan.after_kill - (time.time() - self.killed_at)))
        expected = self.net.address("visitor")
        summary = results.summarize(self.stop_load(), self.killed_at, CHECK_WINDOW, expected,
                                    self.steps, self.marked_down)
        return summary

    def close(self):
        try:
            for name in NODES:  # a hand-over's successor is not our child: stop it by pid
                pid = self.node_pid(name) if name in self.nodes else None
                if pid and pid != self.nodes[name].pid:
                    try:
                        harness.stop_pid(pid, timeout=10)
                    except TimeoutError as exc:
                        print(f"warning: {exc}", file=sys.stderr)
            harness.stop_all(self.procs)
        finally:
            self.net.close()


def missing():
    """Why the scenario cannot run here, or None."""
    why = netns.unavailable()
    if why:
        return why
    if not (NGINX and HAPROXY):
        return "needs nginx and haproxy (.ci/run installs them)"
    return None


def run_scenario(workdir, plan, log=print):
    scenario = Scenario(workdir, plan, log)
    try:
        scenario.start()
        return scenario.run()
    finally:
        scenario.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=Plan.rate)
    parser.add_argument("--duration", type=float, default=Plan.duration)
    parser.add_argument("--loadgens", type=int, default=Plan.loadgens)
    parser.add_argument("--json", action="store_true", help="print the whole summary as JSON")
    args = parser.parse_args()
    why = missing()
    if why:
        sys.exit(f"ha-demo: {why}")
    import tempfile
    with tempfile.TemporaryDirectory(prefix="runewarp-ha-") as workdir:
        plan = replace(Plan(), rate=args.rate, duration=args.duration, loadgens=args.loadgens)
        summary = run_scenario(workdir, plan)
    if args.json:
        print(json.dumps(summary, indent=2))
    print(results.report(summary))
    broken = results.check(summary, CLIENTS)
    for line in broken:
        print(f"FAILED: {line}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
