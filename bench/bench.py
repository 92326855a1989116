"""Runewarp benchmark: the same workloads DIRECT to a TLS backend and THROUGH RUNEWARP.

    make bench            # or: .venv/bin/python bench/bench.py

Everything runs on 127.0.0.1 in a temporary folder: nginx as the TLS backend
(certificate from `runewarp client public-cert init`), one Runewarp Server and
one Client with a Tunnel for bench.example.com.  Each workload runs against
nginx directly and against the Server's public port, so the ratio column is the
price of the extra hops (Visitor → Server → Tunnel connection → Client → nginx).

Two more measurements for the targets of issue 6:

* many streams: BENCH_STREAMS_CONNS (10,000) TLS connections held open at once
  (bench/streams.py, selector-based, several processes, Visitors from 64 loopback
  source addresses), then one GET on every one of them; opened / errors, file
  descriptors and RSS at peak.  RLIMIT_NOFILE is raised first for us and every child.
* a 50 ms RTT link: network namespaces rwb-a-PID and rwb-b-PID (10.203.0.1 / .2)
  joined by a veth pair with `tc netem delay 25ms` on both ends; Runewarp Server
  and curl in a, Runewarp Client and an nginx of its own in b, so the Tunnel
  connection crosses the delayed link.  One download per run, bounded by
  BENCH_RTT_SECONDS (15) or BENCH_RTT_MB (256), DIRECT (curl in a -> nginx in b)
  and THROUGH RUNEWARP, BENCH_RTT_REPEATS (2) each.  When the kernel has no netem
  (CONFIG_NET_SCH_NETEM unset) the link is two veth pairs through a third namespace
  rwb-m-PID where bench/delayline.py delays every frame by 25 ms in userspace; the
  table says which was used.  If namespaces cannot be made, the exact error is
  printed and only this measurement is skipped.  The namespaces are deleted in
  `finally`, after the processes in them are stopped.

Proxy: plain TCP through `runewarp proxy --listen` + Server + Client with a terminate
Service, against direct TCP to the same backend: bulk MB/s (BENCH_PROXY_MB, 256) and
connection setup (connect to first byte), see bench/proxybench.py.

ssh -R: the same seq, idle, bulk and rate workloads through OpenSSH's reverse tunnel
(`ssh -N -R` with aes128-gcm@openssh.com to an sshd of our own on loopback), alternating
with DIRECT and RUNEWARP, as a third column with "beats ssh -R" per row, see bench/sshpeer.py;
skipped with a note where sshd or ssh is missing.

Workers: where the build accepts `workers` (`runewarp config check`), the 8-stream bulk and
the connection rate with `workers = 2` against the pair above (one worker), and the Visitor
connections each Server worker carried (its /metrics), see bench/workersbench.py.

QUIC: UDP datagrams through the Server's public QUIC socket (`public-quic = true`) and the
Client (`quic-backend-address`) to a UDP echo backend, against the echo backend directly;
each flow opens with a real sealed Initial: datagrams per second, round-trip p50/p99 and
CPU per datagram, see bench/quicbench.py (BENCH_QUIC_SECONDS, 3 s per rate run).

Fleet: one etcd (tests/etcd.py), two Server nodes sharing API Tunnels through it and one
Client connected to both; BENCH_FLEET_CHANGES (20) PUTs through either node in turn, each
timed from its answer until a Visitor's TLS handshake for the new name completes on the
other node: p50 / p99 / max against issue 19's 2 s, see bench/fleetbench.py (skipped where
etcd is not installed).

Knobs (environment): BENCH_BULK_MB (single-stream download, default 512),
BENCH_CONC_MB (per stream in the 8-stream test, default BULK_MB/4),
BENCH_REPEATS (3), BENCH_RATE_SECONDS (10), BENCH_IDLE_CONNS (1000),
BENCH_STREAMS_CONNS (10000), BENCH_RTT_MB (256), BENCH_RTT_SECONDS (15),
BENCH_RTT_REPEATS (2), BENCH_FLEET_CHANGES (20).  BENCH_ONLY=idle,bulk,... runs only those
phases (seq, idle, bulk, rate, streams, rtt, proxy, quic, workers, fleet; `ssh` adds the
ssh -R target to the listed ones among seq, idle, bulk and rate, and alone means all four)
and prints their raw figures instead of the table, for quick A/B runs while working on one
figure.

Results: a table on stdout (with the targets of issue 20 beside the figures) and
bench/results/latest.json.  All processes this script starts are stopped by PID in
`finally`, also on Ctrl-C / SIGTERM / SIGHUP.

Caveat printed with the results: load generators, curl, nginx and Runewarp all
share this machine's cores, so the DIRECT numbers are often limited by the client
side, and Runewarp competes with the load for CPU.
"""

import concurrent.futures
from collections import Counter
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runewarp import harness

import fleetbench
import procfs
import proxybench
import quicbench
import sshpeer
import workersbench
from procfs import children, cpu_seconds, fd_count, rss_kib
from settings import (ACCESS_LOG, BENCH, BULK_MB, CONC_MB, HOST, IDLE_CONNS, MIB, NOFILE, ONLY,
                      PHASES, RATE_PROCS, RATE_SECONDS, RATE_THREADS, REPEATS,
                      ROOT, RTT_A, RTT_B, RTT_BACKEND_PORT, RTT_MB,
                      RTT_ONE_WAY_MS, RTT_REPEATS, RTT_SECONDS, RTT_SYSCTLS,
                      SEQ_PER_REPEAT, SERVER_HOSTNAME, SSH_PHASES, STREAMS,
                      STREAMS_CONNS, STREAMS_INFLIGHT, STREAMS_PROCS,
                      STREAMS_SOURCES, TARGETS)
from table import added_latency, beats, build_rows, med, pct, print_table, ratio

CLK_TCK = procfs.CLK_TCK

STARTED = []          # every Popen we start, stopped in cleanup()
EXTRA_PIDS = []       # (pid, cmdline prefix) of grandchildren we must not leave (nginx workers)
NAMESPACES = []       # network namespaces we created, deleted in cleanup() after the processes


class Interrupted(Exception):
    """SIGTERM / SIGHUP: unwind like Ctrl-C so `finally` stops everything."""


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


# --- processes ------------------------------------------------------------------------------

class Proc(harness.Process):
    """A child in its own session (Ctrl-C reaches only us; we stop it by PID), stopped in
    cleanup()."""

    def __init__(self, cmd, env=None, name=None, stdout=subprocess.DEVNULL):
        super().__init__(cmd, env=env, name=name, stdout=stdout, new_session=True)
        STARTED.append(self)


def cleanup():
    """Stop everything we started, newest first (load generators before Runewarp before nginx),
    then delete the network namespaces.  A second Ctrl-C must not leave half of it behind,
    so the signals that would interrupt us are ignored from here on."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stop_all(STARTED, EXTRA_PIDS)
    delete_namespaces()


def stop_all(procs, extra_pids):
    """Stop `procs` by PID, newest first; then SIGKILL leftovers among `extra_pids`
    ((pid, cmdline prefix) pairs: a PID is killed only while its command line still matches)."""
    harness.stop_all(procs, 10, lambda proc: signal.SIGQUIT if proc.name.startswith("nginx")
                     else signal.SIGTERM)
    for pid, prefix in extra_pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(prefix):
            os.kill(pid, signal.SIGKILL)


def delete_namespaces():
    while NAMESPACES:
        name = NAMESPACES.pop()
        proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"warning: ip netns del {name}: {proc.stderr.strip()}", file=sys.stderr)


class LoadMonitor:
    """How much CPU *other* processes burned during each phase.

    This machine may be shared (other test suites, other engineers): system-wide busy
    time from /proc/stat minus the CPU of everything this script started (live:
    from /proc; finished curls and load generators: os.times() children) is the
    foreign load, reported per phase in average cores, so noisy numbers are visible.
    """

    def __init__(self):
        self.live_pids = []
        self.phases = {}

    def _snapshot(self):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / CLK_TCK   # minus idle and iowait
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        try:
            ours += cpu_seconds(self.live_pids)
        except OSError:
            pass
        return time.monotonic(), busy, ours

    def start(self):
        return self._snapshot()

    def stop(self, name, began):
        end = self._snapshot()
        wall = end[0] - began[0]
        foreign = max(0.0, (end[1] - began[1]) - (end[2] - began[2]))
        self.phases[name] = {"wall_s": round(wall, 1), "foreign_cores": round(foreign / wall, 2)}
        return self.phases[name]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} is not listening on {port}:\n" + "\n".join(proc.lines[-30:]))


def runewarp_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "runewarp", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"runewarp {' '.join(map(str, args))}: {proc.stderr}")
    return proc.stdout.strip()


# --- setup ----------------------------------------------------------------------------------

def make_material(tmp):
    """All key material made by our own CLI, exactly as an operator would."""
    runewarp_cli("server", "cert", "init", "--hostname", SERVER_HOSTNAME, "--dir", tmp / "server-cert")
    identity = runewarp_cli("client", "identity", "init", "--dir", tmp / "client-identity")
    runewarp_cli("client", "public-cert", "init", "--hostname", HOST, "--dir", tmp / "public-cert")
    return {
        "server_ca": tmp / "server-cert" / "server-ca.crt",
        "identity": identity,
        "public_ca": tmp / "public-cert" / "public-ca.crt",
        "public_cert": tmp / "public-cert" / HOST / "public.crt",
        "public_key": tmp / "public-cert" / HOST / "public.key",
    }


def find_nginx():
    """nginx from PATH or /usr/sbin; install nginx-light once if we are root and it is missing."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path, None if path else "nginx not installed"
    print("nginx missing: apt-get install -y nginx-light ...", flush=True)
    proc = subprocess.run(["apt-get", "install", "-y", "nginx-light"], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode == 0 and os.path.exists("/usr/sbin/nginx"):
        return "/usr/sbin/nginx", None
    return None, f"apt-get install nginx-light failed: {proc.stderr.strip()[-200:]}"


def write_nginx_conf(prefix, listen, files, material):
    """A minimal nginx config of our own: 1 worker, TLS 1.3, `/` -> "ok\\n" and the files.
    worker_connections / worker_rlimit_nofile leave room for the 10,000-stream test."""
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    locations = "".join(f"        location = {path} {{ alias {file}; }}\n"
                        for path, file in files.items())
    conf.write_text(harness.nginx_config(prefix, f"""\
    access_log off;
    default_type application/octet-stream;
    client_header_timeout 300s;
    keepalive_timeout 300s;
    server {{
        listen {listen} ssl;
        server_name {HOST};
        ssl_certificate {material['public_cert']};
        ssl_certificate_key {material['public_key']};
        ssl_protocols TLSv1.3;
        location = / {{ return 200 "ok\\n"; }}
{locations}    }}
""", connections=min(nofile_limit() - 64, max(8192, STREAMS_CONNS + 4096)), error_log="stderr warn",
        main=f"master_process on;\nworker_processes 1;\nworker_rlimit_nofile {nofile_limit()};"))
    return conf


def nginx_workers(proc, timeout=10):
    deadline = time.monotonic() + timeout
    while not (workers := children(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers


def start_backend(tmp, material):
    """nginx with a minimal config of its own (1 worker: Runewarp is one process too);
    the Python fallback only when nginx cannot be had.  Returns a description dict."""
    www = tmp / "www"
    www.mkdir()
    files = {"/bulk": www / "bulk.bin", "/bulk8": www / "bulk8.bin"}
    for path, mib in ((files["/bulk"], BULK_MB), (files["/bulk8"], CONC_MB)):
        with open(path, "wb") as out:   # sparse: costs no disk, reads as zeros
            out.truncate(mib * MIB)
        path.chmod(0o644)
    # As root nginx workers run as nobody: they must be able to reach the files.
    for folder in (tmp, www):
        folder.chmod(0o755)
    port = free_port()
    nginx, why = find_nginx()
    if nginx:
        prefix = tmp / "nginx"
        conf = write_nginx_conf(prefix, f"127.0.0.1:{port}", files, material)
        proc = Proc([nginx, "-e", "stderr", "-p", str(prefix), "-c", str(conf)], name="nginx")
        wait_listening(port, proc)
        workers = nginx_workers(proc)
        EXTRA_PIDS.extend((pid, b"nginx: worker") for pid in workers)
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        return {"kind": "nginx", "binary": nginx, "version": version, "port": port, "proc": proc,
                "pids": [proc.pid, *workers], "note": None}
    proc = Proc([sys.executable, str(BENCH / "pybackend.py"), str(port), str(material["public_cert"]),
                 str(material["public_key"]), str(files["/bulk"]), str(files["/bulk8"])],
                name="pybackend")
    wait_listening(port, proc)
    return {"kind": "python-fallback", "version": sys.version.split()[0], "port": port,
            "proc": proc, "pids": [proc.pid],
            "note": f"nginx unavailable ({why}); DIRECT uses a slow Python backend"}


def start_runewarp(tmp, material, backend_port, *, server_ip="127.0.0.1", backend_ip="127.0.0.1",
                   server_ns=None, client_ns=None, tag="", runewarp=None, terminate=False,
                   quic_backend=None, workers=None, metrics_port=None):
    """One Server (public + tunnel on one port) and one Client, log-level info, on loopback
    (or: the Server in network namespace `server_ns`, the Client in `client_ns`).
    `runewarp` is the command that runs Runewarp (bench/ab.py passes another revision's).
    `terminate`: the Client terminates HOST's TLS (its public-cert) for a plain backend.
    `quic_backend`: the Server opens its public UDP socket and the Service sends QUIC
    flows to this UDP address.  `workers`: both roles run that many workers (the Server
    waits for a Tunnel connection on each); `metrics_port`: the Server's metrics listener."""
    server_toml = write_server_config(tmp, material, tag, server_ip=server_ip, workers=workers,
                                      quic=bool(quic_backend), metrics_port=metrics_port)
    env = harness.resolve_env(SERVER_HOSTNAME, server_ip)
    server, port = harness.start_server(server_toml, env, bind_ip=server_ip, timeout=30,
                                        runewarp=runewarp, prefix=netns_prefix(server_ns),
                                        name=f"runewarp-server{tag}", new_session=True)
    STARTED.append(server)
    client_toml = write_client_config(tmp, material, tag, port, f"{backend_ip}:{backend_port}",
                                      workers=workers, terminate=terminate,
                                      quic_backend=quic_backend)
    client = harness.start_client(client_toml, env, timeout=30, runewarp=runewarp,
                                  prefix=netns_prefix(client_ns), name=f"runewarp-client{tag}",
                                  new_session=True)
    STARTED.append(client)
    server.wait_count(harness.CLIENT_READY, workers or 1, timeout=30)
    return server, client, port


def write_server_config(tmp, material, tag, *, server_ip="127.0.0.1", workers=None, quic=False,
                        metrics_port=None):
    """server{tag}.toml: public and Tunnel listener on one port 0, one Tunnel for HOST."""
    path = tmp / f"server{tag}.toml"
    path.write_text(harness.config_text("server", {
        "hostname": SERVER_HOSTNAME, "public-bind-address": f"{server_ip}:0",
        "cert-dir": tmp / "server-cert", "graceful-shutdown-duration": 2, "access-log": ACCESS_LOG,
        "public-quic": True if quic else None, "workers": workers,
        "metrics.bind-address": f"127.0.0.1:{metrics_port}" if metrics_port else None,
    }, [{"name": "bench", "public-hostnames": [HOST], "client-identities": [material["identity"]]}],
        log_level="info"))
    return path


def write_client_config(tmp, material, tag, server_port, backend, *, workers=None, terminate=False,
                        quic_backend=None):
    """client{tag}.toml: one Service for HOST to `backend` through the Server's `server_port`."""
    path = tmp / f"client{tag}.toml"
    path.write_text(harness.config_text("client", {
        "server-address": f"{SERVER_HOSTNAME}:{server_port}", "server-trust": "ca-file",
        "server-ca-file": material["server_ca"], "identity-dir": tmp / "client-identity",
        "graceful-shutdown-duration": 2, "access-log": ACCESS_LOG,
        "public-cert-dir": tmp / "public-cert" if terminate else None, "workers": workers,
    }, [{"public-hostnames": [HOST], "backend-address": backend,
         "tls-mode": "terminate" if terminate else None, "quic-backend-address": quic_backend}],
        log_level="info"))
    return path


def netns_prefix(ns):
    """`ip netns exec NS cmd` execs cmd in place (no fork): the PID we get is cmd's own."""
    return ["ip", "netns", "exec", ns] if ns else []


def netns_cmd(ns, cmd):
    return [*netns_prefix(ns), *cmd]


# --- workloads ------------------------------------------------------------------------------

def curl_cmd(port, ca, path):
    return ["curl", "-s", "-o", "/dev/null", "--max-time", "300", "-w",
            "%{size_download} %{speed_download}", "--cacert", str(ca),
            "--resolve", f"{HOST}:{port}:127.0.0.1", f"https://{HOST}:{port}{path}"]


def run_curls(target, ca, path, count, expected):
    """`count` curls at once; returns (bytes, wall seconds, cpu seconds of target pids, errors)."""
    cpu0 = cpu_seconds(target["pids"])
    started = time.perf_counter()
    procs = [subprocess.Popen(curl_cmd(target["port"], ca, path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for _ in range(count)]
    for popen in procs:
        STARTED.append(_Wrapped(popen))
    results = [popen.communicate() + (popen.returncode,) for popen in procs]
    wall = time.perf_counter() - started
    cpu = cpu_seconds(target["pids"]) - cpu0
    total, errors = 0, []
    for out, err, code in results:
        size = int(out.split()[0]) if out.split() else 0
        total += size
        if code != 0 or size != expected:
            errors.append(f"curl exit {code}, {size}/{expected} bytes {err.strip()}")
    return total, wall, cpu, errors


class _Wrapped:
    """Lets cleanup() stop a plain Popen (curl, loadgen) like a Proc."""

    def __init__(self, popen, name="curl"):
        self.popen, self.name, self.pid = popen, name, popen.pid

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout)


def bulk(targets, ca):
    """1 stream of BULK_MB and STREAMS streams of CONC_MB each, interleaved DIRECT/RUNEWARP
    per repeat so drift (thermal, page cache, neighbours) hits both sides alike."""
    out = {name: {"single": [], "multi": [], "errors": [], "cpu_single": 0.0, "bytes_single": 0,
                  "cpu_multi": 0.0, "bytes_multi": 0, "sys_single": 0.0} for name in targets}
    for rep in range(REPEATS):
        for name, target in targets.items():
            sys0 = cpu_seconds(target["pids"], kernel_only=True)
            got, wall, cpu, errors = run_curls(target, ca, "/bulk", 1, BULK_MB * MIB)
            res = out[name]
            res["sys_single"] += cpu_seconds(target["pids"], kernel_only=True) - sys0
            res["single"].append(got / wall / 1e6)
            res["cpu_single"] += cpu
            res["bytes_single"] += got
            res["errors"] += errors
            print(f"  bulk 1 stream   {name:8} #{rep + 1}: {got / wall / 1e6:8.1f} MB/s", flush=True)
        for name, target in targets.items():
            got, wall, cpu, errors = run_curls(target, ca, "/bulk8", STREAMS, CONC_MB * MIB)
            res = out[name]
            res["multi"].append(got / wall / 1e6)
            res["cpu_multi"] += cpu
            res["bytes_multi"] += got
            res["errors"] += errors
            print(f"  bulk {STREAMS} streams  {name:8} #{rep + 1}: {got / wall / 1e6:8.1f} MB/s"
                  + (f"  ({len(errors)} failed)" if errors else ""), flush=True)
    return out


def loadgen(target, ca, procs, threads, duration=None, count=None):
    """Run `procs` loadgen.py workers side by side; merge their JSON."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(target["port"]),
           "--host", HOST, "--ca", str(ca), "--threads", str(threads)]
    cmd += ["--count", str(count)] if count else ["--duration", str(duration)]
    cpu0 = cpu_seconds(target["pids"])
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True) for _ in range(procs)]
    for popen in workers:
        STARTED.append(_Wrapped(popen, "loadgen"))
    outs = [popen.communicate(timeout=(duration or 0) + 300) for popen in workers]
    cpu = cpu_seconds(target["pids"]) - cpu0
    merged = {"ok": 0, "rate": 0.0, "latencies_ms": [], "errors": Counter(), "cpu_s": cpu}
    for (out, err), popen in zip(outs, workers, strict=True):
        if popen.returncode != 0:
            raise RuntimeError(f"loadgen failed ({popen.returncode}): {err[-2000:]}")
        data = json.loads(out)
        merged["ok"] += data["ok"]
        merged["rate"] += data["ok"] / data["window_s"]
        merged["latencies_ms"] += data["latencies_ms"]
        merged["errors"].update(data["errors"])
    return merged


def conn_rate(targets, ca):
    """New connections with 50 in flight: conns/s and latency; CPU per connection."""
    out = {name: {"rates": [], "p50s": [], "p99s": [], "latencies_ms": [], "errors": Counter(),
                  "cpu_s": 0.0, "conns": 0} for name in targets}
    for rep in range(REPEATS):
        for name, target in targets.items():
            run = loadgen(target, ca, RATE_PROCS, RATE_THREADS, duration=RATE_SECONDS)
            res = out[name]
            res["rates"].append(run["rate"])
            res["p50s"].append(pct(run["latencies_ms"], 50))
            res["p99s"].append(pct(run["latencies_ms"], 99))
            res["latencies_ms"] += run["latencies_ms"]
            res["cpu_s"] += run["cpu_s"]
            res["conns"] += run["ok"] + sum(run["errors"].values())
            res["errors"].update(run["errors"])
            print(f"  conn rate       {name:8} #{rep + 1}: {run['rate']:8.1f} conn/s  "
                  f"p50 {res['p50s'][-1]:.2f} ms  p99 {res['p99s'][-1]:.2f} ms"
                  + (f"  errors {run['errors']}" if run["errors"] else ""), flush=True)
    return out


def proxy_bench(tmp, material):
    """Plain TCP via `runewarp proxy --listen` + Server + Client (terminate) vs direct TCP to
    the same backend: bulk MB/s and connection setup (bench/proxybench.py)."""
    port = free_port()
    source = harness.Process([sys.executable, BENCH / "proxybench.py", "source", port],
                             name="proxy-source", new_session=True)
    STARTED.append(source)
    wait_listening(port, source)
    server, client, public_port = start_runewarp(tmp, material, port, tag="-proxy", terminate=True)
    proxy = harness.Process([*harness.runewarp_cmd(), "proxy", "--hostname", HOST, "--server",
                             f"127.0.0.1:{public_port}", "--ca-file", material["public_ca"],
                             "--listen", "0"], name="runewarp-proxy", new_session=True)
    STARTED.append(proxy)
    local = int(proxy.wait_for(r"proxy-listening address=127\.0\.0\.1:(\d+)", timeout=30).group(1))
    try:
        return proxybench.measure({"direct": port, "runewarp": local})
    finally:
        for proc in (proxy, client, server, source):
            proc.stop(timeout=10)


def quic_bench(tmp, material):
    """UDP datagrams through the Server's public QUIC socket and the Client to a UDP echo
    backend vs to the echo backend directly (bench/quicbench.py)."""
    echo = harness.Process([sys.executable, "-m", "tests.h3peers", "udp-echo"], cwd=ROOT,
                           name="udp-echo", stdout=subprocess.PIPE, new_session=True)
    STARTED.append(echo)
    echo_port = int(echo.popen.stdout.readline())
    # The Service's TCP backend-address is never dialled here: nothing listens on it.
    server, client, public_port = start_runewarp(tmp, material, free_port(), tag="-quic",
                                                 quic_backend=f"127.0.0.1:{echo_port}")
    try:
        out = quicbench.measure({"direct": (echo_port, [echo.pid]),
                                 "runewarp": (public_port, [server.pid, client.pid])},
                                HOST, cpu_seconds)
        for name, res in out.items():
            res["p50_ms"], res["p99_ms"] = pct(res["latencies_ms"], 50), pct(res["latencies_ms"], 99)
            print(f"  quic round trip {name:8}: p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms"
                  f"  lost {res['lost']}; CPU {res['cpu_us_per_datagram']:.1f} us per datagram",
                  flush=True)
        out["logs"] = {p.name: log_issues(p)[:10] for p in (server, client) if log_issues(p)}
        return out
    finally:
        for proc in (client, server, echo):
            proc.stop(timeout=10)


def sequential(targets, ca):
    """One connection at a time: the latency a single Visitor pays for the extra hops."""
    out = {name: {"p50s": [], "p99s": [], "latencies_ms": [], "errors": Counter()} for name in targets}
    for rep in range(REPEATS):
        for name, target in targets.items():
            run = loadgen(target, ca, 1, 1, count=SEQ_PER_REPEAT)
            res = out[name]
            res["p50s"].append(pct(run["latencies_ms"], 50))
            res["p99s"].append(pct(run["latencies_ms"], 99))
            res["latencies_ms"] += run["latencies_ms"]
            res["errors"].update(run["errors"])
            print(f"  sequential      {name:8} #{rep + 1}: p50 {res['p50s'][-1]:.2f} ms  "
                  f"p99 {res['p99s'][-1]:.2f} ms", flush=True)
    return out


def idle_memory(name, target, ca, count):
    """Open `count` TLS connections (handshake done, no request) and hold them: RSS delta
    per connection of target's processes.  Afterwards a sample must still answer GET /,
    so connections silently dropped while idle would show up."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def open_one(_):
        raw = socket.create_connection(("127.0.0.1", target["port"]), timeout=30)
        return ctx.wrap_socket(raw, server_hostname=HOST)

    time.sleep(1)
    before = rss_kib(target["pids"])
    conns, errors = [], Counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(open_one, i) for i in range(count)]
        for future in futures:
            try:
                conns.append(future.result())
            except Exception as exc:
                errors[type(exc).__name__] += 1
    try:
        time.sleep(2)   # let both ends settle (session tickets, backend connects)
        after = rss_kib(target["pids"])
        sample, alive = conns[:: max(1, len(conns) // 20)], 0
        for tls in sample:
            try:
                tls.settimeout(10)
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                reply = b""
                while not reply.endswith(b"\r\n\r\nok\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    reply += chunk
                alive += 1
            except Exception as exc:
                errors[f"sample:{type(exc).__name__}"] += 1
    finally:
        for tls in conns:
            tls.close()
    time.sleep(2)
    released = rss_kib(target["pids"])
    per_conn = (after - before) / max(1, len(conns))
    print(f"  idle            {name:8}: {len(conns)} open, {per_conn:.1f} KiB/conn,"
          f" sample alive {alive}/{len(sample)}" + (f"  errors {errors}" if errors else ""),
          flush=True)
    return {"opened": len(conns), "rss_before_kib": before, "rss_idle_kib": after,
            "rss_after_close_kib": released, "kib_per_conn": per_conn,
            "sample_alive": alive, "sample_size": len(sample), "errors": errors}


def many_streams(name, target, ca, count, logs=()):
    """Hold `count` TLS connections open at once (each a completed handshake with the
    backend: through Runewarp, a live stream on the one Tunnel connection), then one
    GET / on every one of them at the same time.  Opened / errors, the file descriptors
    and RSS of target's processes while all are open, and whether the Tunnel
    connection survived (no new tunnel-connection-established line in `logs`)."""
    tunnels_before = [sum("tunnel-connection-established" in line for line in p.lines) for p in logs]
    sources = ",".join(f"127.0.1.{i}" for i in range(1, STREAMS_SOURCES + 1))
    shares = [count // STREAMS_PROCS + (i < count % STREAMS_PROCS) for i in range(STREAMS_PROCS)]
    time.sleep(1)
    rss_before, fds_before = rss_kib(target["pids"]), fd_count(target["pids"])
    cpu0 = cpu_seconds(target["pids"])
    workers = []
    for share in shares:
        popen = subprocess.Popen(
            [sys.executable, str(BENCH / "streams.py"), "--port", str(target["port"]), "--host", HOST,
             "--ca", str(ca), "--count", str(share), "--sources", sources,
             "--inflight", str(STREAMS_INFLIGHT), "--timeout", "60", "--open-deadline", "150"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        STARTED.append(_Wrapped(popen, "streams"))
        workers.append(popen)

    def answer(popen, phase):
        line = popen.stdout.readline()
        if not line:
            popen.wait(10)
            raise RuntimeError(f"streams.py exited {popen.returncode} in phase {phase}: "
                               + popen.stderr.read()[-2000:])
        data = json.loads(line)
        assert data["phase"] == phase, data
        return data

    opened, errors, get_ok, get_errors = 0, Counter(), 0, Counter()
    try:
        began = time.perf_counter()
        for popen in workers:
            data = answer(popen, "open")
            opened += data["opened"]
            errors.update(data["errors"])
        open_s = time.perf_counter() - began
        cpu_open = cpu_seconds(target["pids"]) - cpu0
        time.sleep(2)   # let both ends settle with everything open
        rss_open, fds_open = rss_kib(target["pids"]), fd_count(target["pids"])
        began = time.perf_counter()
        for popen in workers:
            popen.stdin.write("get\n")
            popen.stdin.flush()
        for popen in workers:
            data = answer(popen, "get")
            get_ok += data["ok"]
            get_errors.update(data["errors"])
        get_s = time.perf_counter() - began
        rss_after_get = rss_kib(target["pids"])
    finally:
        for popen in workers:
            try:
                popen.stdin.write("close\n")
                popen.stdin.close()
            except OSError:
                pass
        for popen in workers:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
    time.sleep(2)
    rss_closed, fds_closed = rss_kib(target["pids"]), fd_count(target["pids"])
    tunnels_after = [sum("tunnel-connection-established" in line for line in p.lines) for p in logs]
    new_tunnels = sum(tunnels_after) - sum(tunnels_before)
    total_errors = sum(errors.values()) + sum(get_errors.values())
    print(f"  10k streams     {name:8}: {opened}/{count} open in {open_s:.1f} s"
          f" ({fds_open - fds_before:+d} fds, RSS {rss_open / 1024:.0f} MiB,"
          f" {(rss_open - rss_before) / max(1, opened):.1f} KiB/conn);"
          f" GET ok {get_ok}/{opened} in {get_s:.1f} s"
          + (f"  open errors {errors}" if errors else "")
          + (f"  GET errors {get_errors}" if get_errors else "")
          + (f"  NEW TUNNEL CONNECTIONS: {new_tunnels}" if new_tunnels else ""), flush=True)
    return {"requested": count, "opened": opened, "open_errors": errors, "open_s": open_s,
            "cpu_open_s": cpu_open, "get_ok": get_ok, "get_errors": get_errors, "get_s": get_s,
            "errors_total": total_errors + (count - opened - sum(errors.values())),
            "fds_before": fds_before, "fds_open": fds_open, "fds_closed": fds_closed,
            "rss_before_kib": rss_before, "rss_open_kib": rss_open,
            "rss_after_get_kib": rss_after_get, "rss_closed_kib": rss_closed,
            "rss_peak_kib": max(rss_open, rss_after_get), "new_tunnel_connections": new_tunnels}


class NetnsError(Exception):
    pass


def ip_cmd(*args):
    proc = subprocess.run(["ip", *map(str, args)], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(map(str, args))}` exited {proc.returncode}: "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def ensure_iproute2():
    """`ip` and `tc` from PATH; install iproute2 once if we are root and they are missing."""
    if shutil.which("ip") and shutil.which("tc"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "iproute2 (ip, tc) not installed"
    print("  iproute2 missing: apt-get install -y iproute2 ...", flush=True)
    proc = subprocess.run(["apt-get", "install", "-y", "iproute2"], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 0 and shutil.which("ip") and shutil.which("tc"):
        return None
    return f"apt-get install iproute2 failed: {proc.stderr.strip()[-200:]}"


def wait_listening_in_ns(proc, address, port, timeout=15):
    """Wait until `proc` (in some network namespace) has a socket listening on address:port:
    /proc/PID/net/tcp shows the sockets of that process's namespace."""
    local = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.popen.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1] == local and fields[3] == "0A":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} is not listening on {address}:{port}:\n"
                       + "\n".join(proc.lines[-30:]))


def delete_stale_namespaces():
    """Namespaces of an earlier run of this script that was killed before its `finally`
    (rwb-{a,b,m}-PID whose PID is gone): ours by name, so we remove them."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(r"^(rwb-[abm]-(\d+))\b", listing, re.M):
        if not Path(f"/proc/{name[1]}").exists():
            print(f"  removing namespace {name[0]} left by a killed run", flush=True)
            subprocess.run(["ip", "netns", "del", name[0]], capture_output=True)


def make_delayed_link(pid):
    """Namespaces a and b, 10.203.0.1/24 and .2/24, with RTT_ONE_WAY_MS each way between them.
    tc netem on both veth ends if the kernel has it; else a third namespace m with two veth
    pairs and bench/delayline.py.  Returns (ns_a, ns_b, description dict)."""
    ns_a, ns_b, ns_m = f"rwb-a-{pid}", f"rwb-b-{pid}", f"rwb-m-{pid}"
    dev_a, dev_b = f"rwb{pid}a", f"rwb{pid}b"
    for ns in (ns_a, ns_b):
        ip_cmd("netns", "add", ns)
        NAMESPACES.append(ns)
    link = {"namespaces": [ns_a, ns_b], "one_way_delay_ms": RTT_ONE_WAY_MS, "sysctls": RTT_SYSCTLS}
    ip_cmd("link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
    netem_error = None
    for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
        cmd = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{RTT_ONE_WAY_MS}ms",
               "limit", "100000"]
        proc = subprocess.run(netns_cmd(ns, cmd), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            netem_error = f"`{' '.join(cmd)}` (in {ns}) exited {proc.returncode}: {proc.stderr.strip()}"
            break
    if netem_error is None:
        link["method"] = f"tc netem delay {RTT_ONE_WAY_MS}ms limit 100000 on both veth ends"
    else:
        print(f"  {netem_error}\n  -> no netem in this kernel: the same delay by bench/delayline.py"
              f" (userspace, namespace {ns_m})", flush=True)
        link["netem_error"] = netem_error
        link["method"] = (f"userspace delay line (bench/delayline.py, {RTT_ONE_WAY_MS} ms each way,"
                          " limit 100000 frames): tc netem unavailable")
        ip_cmd("-n", ns_a, "link", "del", dev_a)          # takes its peer in b with it
        ip_cmd("netns", "add", ns_m)
        NAMESPACES.append(ns_m)
        link["namespaces"].append(ns_m)
        ip_cmd("link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", f"{dev_a}m",
               "netns", ns_m)
        ip_cmd("link", "add", dev_b, "netns", ns_b, "type", "veth", "peer", "name", f"{dev_b}m",
               "netns", ns_m)
        ip_cmd("-n", ns_m, "link", "set", "lo", "up")
        for dev in (f"{dev_a}m", f"{dev_b}m"):
            ip_cmd("-n", ns_m, "link", "set", dev, "up", "promisc", "on")
        # Real-time priority (SCHED_FIFO 10): it needs little CPU, but must not wait behind the
        # load it carries to send on time (with nice -15, up to a third of the frames left
        # > 2 ms late on 2 busy CPUs; with this, well under 1%).
        line = Proc(netns_cmd(ns_m, ["chrt", "-f", "10", sys.executable, str(BENCH / "delayline.py"),
                                     f"{dev_a}m", f"{dev_b}m", str(RTT_ONE_WAY_MS)]), name="delayline")
        line.wait_for("delayline-ready")
        link["delayline"] = line
    for ns, dev, address in ((ns_a, dev_a, RTT_A), (ns_b, dev_b, RTT_B)):
        ip_cmd("-n", ns, "link", "set", "lo", "up")
        ip_cmd("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        ip_cmd("-n", ns, "link", "set", dev, "up")
        for key, value in RTT_SYSCTLS.items():
            proc = subprocess.run(netns_cmd(ns, ["sysctl", "-q", "-w", f"{key}={value}"]),
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise NetnsError(f"sysctl -w {key} in {ns}: {proc.stderr.strip()}")
    return ns_a, ns_b, link


def rtt_curl(ns, ca, address, port, path, max_time):
    cmd = netns_cmd(ns, ["curl", "-s", "-o", "/dev/null", "--max-time", f"{max_time:g}", "-w",
                         "%{size_download} %{time_total} %{time_connect}", "--cacert", str(ca),
                         "--resolve", f"{HOST}:{port}:{address}", f"https://{HOST}:{port}{path}"])
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    STARTED.append(_Wrapped(popen))
    out, err = popen.communicate(timeout=max_time + 30)
    fields = out.split()
    size, total, connect = (int(fields[0]), float(fields[1]), float(fields[2])) if len(fields) == 3 \
        else (0, 0.0, 0.0)
    return size, total, connect, popen.returncode, err.strip()


def rtt_bench(tmp, material, ca, nginx):
    """One stream over a link with 50 ms RTT, DIRECT (curl in a -> nginx in b) and THROUGH
    RUNEWARP (curl in a -> Server in a -> Tunnel connection across the link -> Client in b
    -> nginx in b), RTT_REPEATS each, interleaved.  Everything started here is stopped and
    the namespaces deleted before returning (and by cleanup() on Ctrl-C)."""
    out = {"target_mb_s": 40, "rtt_ms_nominal": 2 * RTT_ONE_WAY_MS, "max_time_s": RTT_SECONDS,
           "file_mib": RTT_MB}
    why = ensure_iproute2() or (None if nginx else "nginx unavailable")
    if why:
        print(f"  SKIPPED: {why}", flush=True)
        return dict(out, skipped=why)
    first, extra = len(STARTED), []
    try:
        delete_stale_namespaces()
        try:
            ns_a, ns_b, link = make_delayed_link(os.getpid())
        except NetnsError as exc:
            print(f"  SKIPPED: cannot build the namespaces: {exc}", flush=True)
            return dict(out, skipped=str(exc))
        link.pop("delayline", None)
        out["link"] = link
        print(f"  link: {link['method']}; in {ns_a} and {ns_b}: "
              + ", ".join(f"{k}={v!r}" for k, v in RTT_SYSCTLS.items()), flush=True)
        rtt_file = tmp / "www" / "rtt.bin"
        with open(rtt_file, "wb") as fh:
            fh.truncate(RTT_MB * MIB)
        rtt_file.chmod(0o644)
        prefix = tmp / "nginx-rtt"
        conf = write_nginx_conf(prefix, f"{RTT_B}:{RTT_BACKEND_PORT}", {"/rtt": rtt_file}, material)
        backend = Proc(netns_cmd(ns_b, [nginx, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]),
                       name="nginx-rtt")
        wait_listening_in_ns(backend, RTT_B, RTT_BACKEND_PORT)
        extra += [(pid, b"nginx: worker") for pid in nginx_workers(backend)]
        server, client, port = start_runewarp(tmp, material, RTT_BACKEND_PORT, server_ip=RTT_A,
                                              backend_ip=RTT_B, server_ns=ns_a, client_ns=ns_b,
                                              tag="-rtt")
        # TCP connect time a -> b = one round trip (the first also resolves ARP).
        connects = [rtt_curl(ns_a, ca, RTT_B, RTT_BACKEND_PORT, "/", 10)[2] * 1000 for _ in range(4)]
        out["rtt_ms_measured"] = statistics.median(connects[1:])
        print(f"  measured RTT (TCP connect a -> b): {out['rtt_ms_measured']:.1f} ms", flush=True)
        targets = {"direct": (RTT_B, RTT_BACKEND_PORT), "runewarp": (RTT_A, port)}
        for name in targets:
            out[name] = {"mb_s": [], "bytes": [], "seconds": [], "errors": []}
        rw_pids, cpu_rw, bytes_rw = [server.pid, client.pid], 0.0, 0
        for rep in range(RTT_REPEATS):
            for name, (address, tport) in targets.items():
                cpu0 = cpu_seconds(rw_pids)
                size, total, _c, code, err = rtt_curl(ns_a, ca, address, tport, "/rtt", RTT_SECONDS)
                if name == "runewarp":
                    cpu_rw += cpu_seconds(rw_pids) - cpu0
                    bytes_rw += size
                res = out[name]
                speed = size / total / 1e6 if total else 0.0
                complete = size == RTT_MB * MIB
                # curl exit 28 = our --max-time: a time-bounded run, not an error, if bytes moved.
                if not (code == 0 and complete) and not (code == 28 and size > 0):
                    res["errors"].append(f"curl exit {code}, {size} bytes {err}")
                res["mb_s"].append(speed)
                res["bytes"].append(size)
                res["seconds"].append(total)
                print(f"  50 ms RTT       {name:8} #{rep + 1}: {speed:8.1f} MB/s"
                      f"  ({size / MIB:.0f} MiB in {total:.1f} s"
                      + ("" if complete else ", stopped by --max-time") + ")"
                      + (f"  ERROR {res['errors'][-1]}" if code not in (0, 28) else ""), flush=True)
        out["runewarp"]["cpu_s_per_gb"] = cpu_rw / (bytes_rw / 1e9) if bytes_rw else None
        out["logs"] = {p.name: log_issues(p)[:10] for p in (server, client, backend) if log_issues(p)}
    except Interrupted:
        raise
    except Exception as exc:   # this measurement only: the rest of the results still count
        print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
        out["failed"] = f"{type(exc).__name__}: {exc}"
    finally:
        procs = STARTED[first:]
        del STARTED[first:]
        stop_all(procs, extra)
        out["exit_codes"] = {p.name: p.popen.returncode for p in procs if isinstance(p, harness.Process)}
        for p in procs:
            if p.name == "delayline" and p.lines and p.lines[-1].startswith("{"):
                out.setdefault("link", {})["delayline_stats"] = json.loads(p.lines[-1])
        delete_namespaces()
    return out


# --- reporting ------------------------------------------------------------------------------

def log_issues(proc):
    """WARN/ERROR lines and tracebacks from a process's stderr (nginx: [warn]..[emerg])."""
    pattern = re.compile(r"\b(WARN|ERROR)\b|Traceback|\[(warn|error|crit|alert|emerg)\]")
    return [line for line in proc.lines if pattern.search(line)]


# --- main -----------------------------------------------------------------------------------

def raise_nofile():
    """RLIMIT_NOFILE up to NOFILE for us and (inherited) every child: Server, Client, nginx,
    the openers.  The hard limit too if we may (root with CAP_SYS_RESOURCE); else up to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = None
    if hard != resource.RLIM_INFINITY and hard < NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        except (ValueError, OSError) as exc:
            note = f"hard limit {hard} kept ({exc})"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": soft, "hard": hard, "note": note}


def nofile_limit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return NOFILE if soft == resource.RLIM_INFINITY else soft


def wanted(phase):
    """Whether this run measures `phase` (BENCH_ONLY lists phases; `ssh` adds the ssh -R
    target to the listed workload phases, and alone means all of them)."""
    if not ONLY or phase in ONLY or phase == "quiet":
        return True
    return phase in SSH_PHASES and ONLY == [sshpeer.NAME]


def start_ssh(tmp, backend_port):
    """The ssh -R target (sshpeer.py) or, where it cannot run, why not (printed)."""
    why = sshpeer.unavailable()
    if why:
        print(f"ssh -R column skipped: {why}", flush=True)
        return {"skipped": why}
    target = sshpeer.start(tmp / "ssh", backend_port, free_port(), free_port(),
                           lambda cmd, name: Proc(cmd, name=name))
    EXTRA_PIDS.extend(target.pop("session_pids"))
    print(f"ssh -R: {target['version']}, {target['cipher']}, Visitors on 127.0.0.1:{target['port']}"
          f" (sshd and its session: pids {target['pids'][:-1]}, ssh: {target['pids'][-1]})", flush=True)
    return target


def on_its_own(work):
    """`work()` as a measurement of its own: every process it started (appended to STARTED)
    is stopped by PID when it ends, and a failure other than an interruption is printed and
    returned as {"failed": why}, so the rest of the results still count."""
    first = len(STARTED)
    try:
        return work()
    except Interrupted:
        raise
    except Exception as exc:   # this phase only: the rest of the results still count
        print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
        return {"failed": f"{type(exc).__name__}: {exc}"}
    finally:
        procs = STARTED[first:]
        del STARTED[first:]
        stop_all(procs, [])


def workers_bench(tmp, material, backend_port, one, ca):
    """`workers = 2` against the bench's own pair (`workers = 1`): 8-stream bulk and the
    connection rate, alternating, and the Visitors each Server worker carried (its /metrics)."""
    checks = {"server": write_server_config(tmp, material, "-check", workers=workersbench.WORKERS),
              "client": write_client_config(tmp, material, "-check", 443, f"127.0.0.1:{backend_port}",
                                            workers=workersbench.WORKERS)}
    why = workersbench.unavailable(checks, ROOT)
    if why:
        print(f"  workers: {why}", flush=True)
        return {"skipped": why}

    def work():
        metrics_port = free_port()
        server, client, port = start_runewarp(tmp, material, backend_port, tag="-w2",
                                              workers=workersbench.WORKERS, metrics_port=metrics_port)
        server_workers = procfs.descendants(server.pid)
        two = {"port": port, "pids": [server.pid, *server_workers, client.pid,
                                      *procfs.descendants(client.pid)]}
        cpu0 = {pid: cpu_seconds([pid]) for pid in server_workers}
        out = workersbench.measure(
            {"workers=1": one, f"workers={workersbench.WORKERS}": two},
            lambda t: run_curls(t, ca, "/bulk8", STREAMS, CONC_MB * MIB),
            lambda t: loadgen(t, ca, RATE_PROCS, RATE_THREADS, duration=RATE_SECONDS),
            max(1, REPEATS - 1), metrics_port)
        # A second witness beside /metrics: the CPU each Server worker process burned.
        out["server_worker_cpu_s"] = {pid: round(cpu_seconds([pid]) - cpu0[pid], 2)
                                      for pid in server_workers}
        print(f"  CPU s per Server worker process (/proc): {out['server_worker_cpu_s']}", flush=True)
        return out

    return on_its_own(work)


def fleet_bench(tmp, material, backend_port):
    """Two Server nodes sharing API Tunnels through one etcd: how soon a change made through
    one node's API routes on the other (bench/fleetbench.py)."""
    why = fleetbench.unavailable()
    if why:
        print(f"fleet: skipped ({why})", flush=True)
        return {"skipped": why}
    return on_its_own(lambda: fleetbench.run(tmp / "fleet", material, tmp / "client-identity",
                                             SERVER_HOSTNAME, backend_port, STARTED,
                                             access_log=ACCESS_LOG))


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    nofile = raise_nofile()
    print(f"RLIMIT_NOFILE for this run and its children: {nofile['soft']}"
          + (f" ({nofile['note']})" if nofile["note"] else ""), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="runewarp-bench-"))
    results = {"config": {"bulk_mb": BULK_MB, "conc_mb_per_stream": CONC_MB, "streams": STREAMS,
                          "repeats": REPEATS, "rate_seconds": RATE_SECONDS,
                          "rate_in_flight": RATE_PROCS * RATE_THREADS,
                          "seq_conns_per_repeat": SEQ_PER_REPEAT, "idle_conns": IDLE_CONNS,
                          "streams_conns": STREAMS_CONNS, "streams_openers": STREAMS_PROCS,
                          "streams_inflight_per_opener": STREAMS_INFLIGHT,
                          "streams_source_addresses": STREAMS_SOURCES,
                          "rtt_ms": 2 * RTT_ONE_WAY_MS, "rtt_file_mb": RTT_MB,
                          "rtt_max_time_s": RTT_SECONDS, "rtt_repeats": RTT_REPEATS,
                          "rlimit_nofile": nofile},
               "env": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "kernel": platform.release(), "openssl": ssl.OPENSSL_VERSION},
               "targets_issue_20": TARGETS}
    began = time.monotonic()
    try:
        material = make_material(tmp)
        backend = start_backend(tmp, material)
        server, client, public_port = start_runewarp(tmp, material, backend["port"])
        results["backend"] = {k: backend[k] for k in ("kind", "version", "note")}
        print(f"backend: {backend['version']} on 127.0.0.1:{backend['port']}  |  "
              f"runewarp server public port {public_port}  |  {os.cpu_count()} CPUs", flush=True)
        if backend["note"]:
            print(f"NOTE: {backend['note']}", flush=True)
        ca = material["public_ca"]
        targets = {
            "direct": {"port": backend["port"], "pids": backend["pids"]},
            "runewarp": {"port": public_port, "pids": [server.pid, client.pid]},
        }
        monitor = LoadMonitor()
        monitor.live_pids = backend["pids"] + [server.pid, client.pid]
        ssh_procs = ()
        if wanted("ssh"):
            results["ssh"] = start_ssh(tmp, backend["port"])
            ssh_procs = results["ssh"].pop("procs", ())
            if "port" in results["ssh"]:
                targets[sshpeer.NAME] = {k: results["ssh"][k] for k in ("port", "pids")}
                monitor.live_pids += results["ssh"]["pids"]

        def phase(name, title, work):
            if not wanted(name):
                return {}
            print(title, flush=True)
            mark = monitor.start()
            value = work()
            load = monitor.stop(name, mark)
            print(f"  ({load['wall_s']:.0f} s; other processes on this machine used "
                  f"{load['foreign_cores']:.2f} cores meanwhile)", flush=True)
            return value

        phase("quiet", "checking for foreign load (1 s) ...", lambda: time.sleep(1))
        results["seq"] = phase("seq", "sequential new-connection latency ...",
                               lambda: sequential(targets, ca))
        results["idle"] = phase("idle", f"idle memory ({IDLE_CONNS} connections each) ...",
                                lambda: {name: idle_memory(name, target, ca, IDLE_CONNS)
                                         for name, target in targets.items()})
        results["bulk"] = phase("bulk", f"bulk ({BULK_MB} MiB x1, {CONC_MB} MiB x{STREAMS}) ...",
                                lambda: bulk(targets, ca))
        results["rate"] = phase(
            "rate", f"new-connection rate ({RATE_PROCS}x{RATE_THREADS} in flight, "
                    f"{RATE_SECONDS:g} s) ...", lambda: conn_rate(targets, ca))

        def streams_work():
            out = {}
            for name in ("direct", "runewarp"):    # not ssh -R: issue 6's guard rail only
                target = targets[name]
                try:
                    out[name] = many_streams(name, target, ca, STREAMS_CONNS,
                                             logs=(server, client) if name == "runewarp" else ())
                except Interrupted:
                    raise
                except Exception as exc:   # report, and keep the rest of the results
                    print(f"  FAILED ({name}): {type(exc).__name__}: {exc}", flush=True)
                    out["failed"] = f"{name}: {type(exc).__name__}: {exc}"
                    break
            return out

        results["streams"] = phase(
            "streams", f"{STREAMS_CONNS:,} concurrent streams (held open at once, then 1 GET each) ...",
            streams_work)
        results["runewarp_rss_peak_kib"] = {
            p.name: int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{p.pid}/status").read_text())[1])
            for p in (server, client)}
        results["rtt"] = phase(
            "rtt", f"one stream over a {2 * RTT_ONE_WAY_MS} ms RTT link (network namespaces) ...",
            lambda: rtt_bench(tmp, material, ca, backend.get("binary")))
        results["proxy"] = phase(
            "proxy", f"plain TCP through runewarp proxy ({proxybench.PROXY_MB} MiB x"
                     f"{proxybench.PROXY_REPEATS}, {proxybench.PROXY_SETUPS} setups) ...",
            lambda: proxy_bench(tmp, material))
        results["quic"] = phase(
            "quic", f"QUIC datagrams ({quicbench.QUIC_FLOWS} flows x {quicbench.QUIC_WINDOW} in "
                    f"flight, {quicbench.QUIC_SECONDS:g} s x{quicbench.QUIC_REPEATS}; "
                    f"{quicbench.QUIC_ROUND_TRIPS} round trips) ...",
            lambda: quic_bench(tmp, material))
        results["workers"] = phase(
            "workers", f"workers = {workersbench.WORKERS} against workers = 1 ({STREAMS} streams,"
                       f" {RATE_PROCS * RATE_THREADS} in flight) ...",
            lambda: workers_bench(tmp, material, backend["port"], targets["runewarp"], ca))
        results["fleet"] = phase(
            "fleet", f"fleet: {fleetbench.CHANGES} API changes through one Server node, routing on"
                     " the other (2 nodes, 1 etcd) ...",
            lambda: fleet_bench(tmp, material, backend["port"]))
        results["foreign_load"] = monitor.phases
        if ONLY:
            print(json.dumps(summary_of(results), indent=1, default=str))
            for text in fleetbench.report(results["fleet"]):   # the figure again, after the JSON
                print(text)
            return
        rows = build_rows(results)
        added50, added99 = print_table(rows, results)
        results["table"] = [
            {"metric": line["metric"], **{n: med(v) for n, v in line["values"].items()},
             **{f"{n}_all": v for n, v in line["values"].items()},
             "ratio": ratio(line["values"].get("direct"), line["values"].get("runewarp")),
             "ratio_ssh": ratio(line["values"].get("direct"), line["values"].get(sshpeer.NAME)),
             "target_issue_20": line["target"] or None, "met": line["met"],
             "beats_ssh": beats(line)} for line in rows]
        results["added_latency_ms"] = {"p50": added50, "p99": added99}
        if sshpeer.NAME in results["seq"]:
            ssh50, ssh99 = added_latency(results, sshpeer.NAME)
            results["added_latency_ms"][sshpeer.NAME] = {"p50": ssh50, "p99": ssh99}
        problems = report_problems(results, (server, client, backend["proc"]), ssh_procs)
        results["problems"] = problems
    finally:
        exit_codes = {}
        procs = [p for p in STARTED if isinstance(p, harness.Process)]
        cleanup()
        for p in procs:
            exit_codes[p.name] = p.popen.returncode
        shutil.rmtree(tmp, ignore_errors=True)
    results["exit_codes"] = exit_codes
    results["elapsed_s"] = time.monotonic() - began
    for seq in results["seq"].values():   # keep the JSON small: pooled percentiles, not samples
        seq["p50_pooled"], seq["p99_pooled"] = pct(seq["latencies_ms"], 50), pct(seq["latencies_ms"], 99)
        del seq["latencies_ms"]
    for quic in (results.get("quic") or {}).values():
        quic.pop("latencies_ms", None)
    for rate in results["rate"].values():
        rate["p50_pooled"], rate["p99_pooled"] = pct(rate["latencies_ms"], 50), pct(rate["latencies_ms"], 99)
        del rate["latencies_ms"]
    out = BENCH / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nexit codes after SIGTERM: {exit_codes}; elapsed {results['elapsed_s']:.0f} s; "
          f"results in {out.relative_to(ROOT)}")


def summary_of(results):
    """The raw figures of a BENCH_ONLY run: what the table would be built from."""
    keep = {}
    for phase in (p for p in PHASES if wanted(p)):
        for name, value in results.get(phase, {}).items():
            if name == "runs":   # fleet: one dict per change, printed as it was measured
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in ("latencies_ms", "errors")
                         or (k == "errors" and v)}
            keep[f"{phase}.{name}"] = value
    return keep


def report_problems(results, procs, ssh_procs):
    """Everything that went wrong under load, side by side: errors seen by the load
    generators and curls, and WARN/ERROR lines in the processes' own logs (sshd and ssh:
    their error: and fatal: lines)."""
    problems = {}
    for name in results["bulk"]:
        found = {}
        if results["bulk"][name]["errors"]:
            found["bulk"] = results["bulk"][name]["errors"][:10]
        for test in ("rate", "seq"):
            if results[test][name]["errors"]:
                found[test] = results[test][name]["errors"]
        streams = results["streams"].get(name)
        if streams and (streams["errors_total"] or streams["new_tunnel_connections"]):
            found["streams"] = {k: streams[k] for k in ("opened", "open_errors", "get_ok", "get_errors",
                                                        "new_tunnel_connections")}
        rtt = results["rtt"].get(name)
        if rtt and rtt["errors"]:
            found["rtt"] = rtt["errors"]
        quic = (results.get("quic") or {}).get(name)
        if quic and (quic["lost"] or quic["refills"]):
            found["quic"] = {"round trips lost": quic["lost"], "rate refills": quic["refills"]}
        idle = results["idle"][name]
        if idle["errors"] or idle["opened"] < IDLE_CONNS or idle["sample_alive"] < idle["sample_size"]:
            found["idle"] = {"errors": idle["errors"], "opened": idle["opened"],
                             "sample_alive": f"{idle['sample_alive']}/{idle['sample_size']}"}
        if found:
            problems[name] = found
    for proc in procs:
        lines = log_issues(proc)
        if lines:
            problems[f"{proc.name} log"] = {"count": len(lines), "first": lines[:10]}
    for proc in ssh_procs:
        lines = [line for line in proc.lines if re.search(r"\b(error|fatal):", line)]
        if lines:
            problems[f"{proc.name} log"] = {"count": len(lines), "first": lines[:10]}
    for name, lines in (results.get("quic") or {}).get("logs", {}).items():
        problems[f"{name} log"] = {"first": lines}
    for name, lines in results["rtt"].get("logs", {}).items():
        problems[f"{name} log"] = {"first": lines}
    for key in ("failed", "skipped"):
        if key in results["streams"]:
            problems[f"streams {key}"] = results["streams"][key]
        if key in results["rtt"]:
            problems[f"rtt {key}"] = results["rtt"][key]
    print("\nproblems observed: " + ("none" if not problems else ""))
    for key, value in problems.items():
        print(f"  {key}: {json.dumps(value)[:1500]}")
    return problems


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\ninterrupted ({type(exc).__name__} {exc}); everything started was stopped.",
              file=sys.stderr)
        sys.exit(130)
