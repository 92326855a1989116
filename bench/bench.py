"""Runewarp benchmark: the same workloads DIRECT to a TLS backend and THROUGH RUNEWARP.

    make bench            # or: .venv/bin/python bench/bench.py

Everything runs on 127.0.0.1 in a temporary folder: nginx as the TLS backend
(certificate from `runewarp client public-cert init`), one Runewarp Server and
one Client with a Tunnel for bench.example.com.  Each workload runs against
nginx directly and against the Server's public port, so the ratio column is the
price of the extra hops (Visitor → Server → Tunnel connection → Client → nginx).

Knobs (environment): BENCH_BULK_MB (single-stream download, default 512),
BENCH_CONC_MB (per stream in the 8-stream test, default BULK_MB/4),
BENCH_REPEATS (3), BENCH_RATE_SECONDS (10), BENCH_IDLE_CONNS (1000).

Results: a table on stdout and bench/results/latest.json.  All processes this
script starts are stopped by PID in `finally`, also on Ctrl-C / SIGTERM / SIGHUP.

Caveat printed with the results: load generators, curl, nginx and Runewarp all
share this machine's cores, so the DIRECT numbers are often limited by the client
side, and Runewarp competes with the load for CPU.
"""

import concurrent.futures
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "bench.example.com"
SERVER_HOSTNAME = "tunnel.example.com"
MIB = 1024 * 1024

BULK_MB = int(os.environ.get("BENCH_BULK_MB", "512"))
CONC_MB = int(os.environ.get("BENCH_CONC_MB", str(max(1, BULK_MB // 4))))
STREAMS = 8
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
RATE_SECONDS = float(os.environ.get("BENCH_RATE_SECONDS", "10"))
RATE_PROCS, RATE_THREADS = 2, 25
SEQ_PER_REPEAT = 100
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "1000"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

STARTED = []          # every Popen we start, stopped in cleanup()
EXTRA_PIDS = []       # (pid, cmdline prefix) of grandchildren we must not leave (nginx workers)


class Interrupted(Exception):
    """SIGTERM / SIGHUP: unwind like Ctrl-C so `finally` stops everything."""


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


# --- processes ------------------------------------------------------------------------------

class Proc:
    """A child process in its own session (Ctrl-C reaches only us; we stop it by PID),
    with its stderr collected in the background so it can never block on a full pipe."""

    def __init__(self, cmd, env=None, name=None, stdout=subprocess.DEVNULL):
        self.name = name or Path(cmd[0]).name
        self.lines = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True,
                                      env=env, cwd=ROOT, start_new_session=True)
        STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self):
        return self.popen.pid

    def _read(self):
        for line in self.popen.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern, timeout=30):
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                if time.monotonic() > deadline or (self.popen.poll() is not None
                                                   and not self._reader.is_alive()):
                    raise RuntimeError(f"{self.name}: no line matching {pattern!r}; log:\n"
                                       + "\n".join(self.lines[-30:]))
                self._cond.wait(0.2)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signal by PID, wait, then SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(2)
        return self.popen.returncode


def cleanup():
    """Stop everything we started, newest first (load generators before Runewarp before nginx)."""
    for proc in reversed(STARTED):
        sig = signal.SIGQUIT if proc.name == "nginx" else signal.SIGTERM
        try:
            proc.stop(sig, timeout=10)
        except Exception as exc:  # keep going: the others must still be stopped
            print(f"warning: stopping {proc.name} pid {proc.pid}: {exc}", file=sys.stderr)
    for pid, prefix in EXTRA_PIDS:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(prefix):
            os.kill(pid, signal.SIGKILL)


def children(pid):
    """Direct children of `pid` (all its threads), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pids):
    """utime + stime of the processes (all threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


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
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        conf.write_text(textwrap.dedent(f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            worker_rlimit_nofile 16384;
            pid {prefix}/nginx.pid;
            error_log stderr warn;
            events {{ worker_connections 8192; }}
            http {{
                access_log off;
                default_type application/octet-stream;
                client_body_temp_path {temp['client_body']};
                proxy_temp_path {temp['proxy']};
                fastcgi_temp_path {temp['fastcgi']};
                uwsgi_temp_path {temp['uwsgi']};
                scgi_temp_path {temp['scgi']};
                client_header_timeout 300s;
                keepalive_timeout 300s;
                server {{
                    listen 127.0.0.1:{port} ssl;
                    server_name {HOST};
                    ssl_certificate {material['public_cert']};
                    ssl_certificate_key {material['public_key']};
                    ssl_protocols TLSv1.3;
                    location = / {{ return 200 "ok\\n"; }}
                    location = /bulk {{ alias {files['/bulk']}; }}
                    location = /bulk8 {{ alias {files['/bulk8']}; }}
                }}
            }}
        """))
        proc = Proc([nginx, "-e", "stderr", "-p", str(prefix), "-c", str(conf)], name="nginx")
        wait_listening(port, proc)
        deadline = time.monotonic() + 10
        while not (workers := children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        EXTRA_PIDS.extend((pid, b"nginx: worker") for pid in workers)
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        return {"kind": "nginx", "version": version, "port": port, "proc": proc,
                "pids": [proc.pid, *workers], "note": None}
    proc = Proc([sys.executable, str(BENCH / "pybackend.py"), str(port), str(material["public_cert"]),
                 str(material["public_key"]), str(files["/bulk"]), str(files["/bulk8"])],
                name="pybackend")
    wait_listening(port, proc)
    return {"kind": "python-fallback", "version": sys.version.split()[0], "port": port,
            "proc": proc, "pids": [proc.pid],
            "note": f"nginx unavailable ({why}); DIRECT uses a slow Python backend"}


def start_runewarp(tmp, material, backend_port):
    """One Server (public + tunnel on one port) and one Client, log-level info, on loopback."""
    server_toml = tmp / "server.toml"
    server_toml.write_text(textwrap.dedent(f"""\
        log-level = "info"
        [server]
        hostname = "{SERVER_HOSTNAME}"
        public-bind-address = "127.0.0.1:0"
        cert-dir = "{tmp / 'server-cert'}"
        graceful-shutdown-duration = 2
        [[server.tunnels]]
        name = "bench"
        public-hostnames = ["{HOST}"]
        client-identities = ["{material['identity']}"]
    """))
    env = dict(os.environ, RUNEWARP_RESOLVE=f"{SERVER_HOSTNAME}=127.0.0.1")
    server = Proc([sys.executable, "-m", "runewarp", "server", "-c", str(server_toml)],
                  env=env, name="runewarp-server")
    port = int(server.wait_for(r"server-ready .*public-bind-address=127\.0\.0\.1:(\d+)").group(1))
    client_toml = tmp / "client.toml"
    client_toml.write_text(textwrap.dedent(f"""\
        log-level = "info"
        [client]
        server-address = "{SERVER_HOSTNAME}:{port}"
        server-trust = "ca-file"
        server-ca-file = "{material['server_ca']}"
        identity-dir = "{tmp / 'client-identity'}"
        graceful-shutdown-duration = 2
        [[client.services]]
        public-hostnames = ["{HOST}"]
        backend-address = "127.0.0.1:{backend_port}"
    """))
    client = Proc([sys.executable, "-m", "runewarp", "client", "-c", str(client_toml)],
                  env=env, name="runewarp-client")
    client.wait_for("tunnel-connection-established")
    server.wait_for("tunnel-connection-established")
    return server, client, port


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
                  "cpu_multi": 0.0, "bytes_multi": 0} for name in targets}
    for rep in range(REPEATS):
        for name, target in targets.items():
            got, wall, cpu, errors = run_curls(target, ca, "/bulk", 1, BULK_MB * MIB)
            res = out[name]
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
    merged = {"ok": 0, "rate": 0.0, "latencies_ms": [], "errors": {}, "cpu_s": cpu}
    for (out, err), popen in zip(outs, workers, strict=True):
        if popen.returncode != 0:
            raise RuntimeError(f"loadgen failed ({popen.returncode}): {err[-2000:]}")
        data = json.loads(out)
        merged["ok"] += data["ok"]
        merged["rate"] += data["ok"] / data["window_s"]
        merged["latencies_ms"] += data["latencies_ms"]
        for kind, n in data["errors"].items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + n
    return merged


def conn_rate(targets, ca):
    """New connections with 50 in flight: conns/s and latency; CPU per connection."""
    out = {name: {"rates": [], "p50s": [], "p99s": [], "latencies_ms": [], "errors": {},
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
            for kind, n in run["errors"].items():
                res["errors"][kind] = res["errors"].get(kind, 0) + n
            print(f"  conn rate       {name:8} #{rep + 1}: {run['rate']:8.1f} conn/s  "
                  f"p50 {res['p50s'][-1]:.2f} ms  p99 {res['p99s'][-1]:.2f} ms"
                  + (f"  errors {run['errors']}" if run["errors"] else ""), flush=True)
    return out


def sequential(targets, ca):
    """One connection at a time: the latency a single Visitor pays for the extra hops."""
    out = {name: {"p50s": [], "p99s": [], "latencies_ms": [], "errors": {}} for name in targets}
    for rep in range(REPEATS):
        for name, target in targets.items():
            run = loadgen(target, ca, 1, 1, count=SEQ_PER_REPEAT)
            res = out[name]
            res["p50s"].append(pct(run["latencies_ms"], 50))
            res["p99s"].append(pct(run["latencies_ms"], 99))
            res["latencies_ms"] += run["latencies_ms"]
            for kind, n in run["errors"].items():
                res["errors"][kind] = res["errors"].get(kind, 0) + n
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
    conns, errors = [], {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(open_one, i) for i in range(count)]
        for future in futures:
            try:
                conns.append(future.result())
            except Exception as exc:
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
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
                kind = f"sample:{type(exc).__name__}"
                errors[kind] = errors.get(kind, 0) + 1
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


# --- reporting ------------------------------------------------------------------------------

def pct(values, p):
    """Nearest-rank percentile; NaN for no data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cell(values, fmt="{:.1f}"):
    if isinstance(values, (int, float)):
        return fmt.format(values)
    if not values:
        return "-"
    text = fmt.format(statistics.median(values))
    if len(values) > 1:
        text += f" [{fmt.format(min(values))}–{fmt.format(max(values))}]"
    return text


def med(values):
    return values if isinstance(values, (int, float)) else statistics.median(values)


def build_rows(res):
    """(metric, direct values, runewarp values, format, ratio?) for the table."""
    b, r, s, m = res["bulk"], res["rate"], res["seq"], res["idle"]
    d, w = "direct", "runewarp"
    gb_single = {n: b[n]["bytes_single"] / 1e9 for n in b}
    gb_multi = {n: b[n]["bytes_multi"] / 1e9 for n in b}
    return [
        ("bulk 1 stream, MB/s", b[d]["single"], b[w]["single"], "{:.0f}", True),
        (f"bulk {STREAMS} streams aggregate, MB/s", b[d]["multi"], b[w]["multi"], "{:.0f}", True),
        (f"new conns/s, {RATE_PROCS * RATE_THREADS} in flight", r[d]["rates"], r[w]["rates"],
         "{:.0f}", True),
        ("  latency p50 @50, ms", r[d]["p50s"], r[w]["p50s"], "{:.2f}", True),
        ("  latency p99 @50, ms", r[d]["p99s"], r[w]["p99s"], "{:.2f}", True),
        ("sequential conn p50, ms", s[d]["p50s"], s[w]["p50s"], "{:.2f}", True),
        ("sequential conn p99, ms", s[d]["p99s"], s[w]["p99s"], "{:.2f}", True),
        ("idle conn memory, KiB/conn (*)", m[d]["kib_per_conn"], m[w]["kib_per_conn"], "{:.1f}", False),
        ("CPU s per GB, bulk 1 stream (*)", b[d]["cpu_single"] / gb_single[d],
         b[w]["cpu_single"] / gb_single[w], "{:.2f}", False),
        (f"CPU s per GB, bulk {STREAMS} streams (*)", b[d]["cpu_multi"] / gb_multi[d],
         b[w]["cpu_multi"] / gb_multi[w], "{:.2f}", False),
        ("CPU ms per conn, conn-rate test (*)", 1000 * r[d]["cpu_s"] / max(1, r[d]["conns"]),
         1000 * r[w]["cpu_s"] / max(1, r[w]["conns"]), "{:.3f}", False),
    ]


def print_table(rows, res):
    header = ("metric", f"DIRECT ({res['backend']['kind']})", "THROUGH RUNEWARP", "rw/direct")
    lines = [(name, cell(dv, fmt), cell(rv, fmt), f"{med(rv) / med(dv):.2f}x" if med(dv) else "-")
             for name, dv, rv, fmt, _ in rows]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(4)]
    sep = "  "
    print()
    print(sep.join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(sep.join("-" * w for w in widths))
    for line in lines:
        print(sep.join([line[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(line[1:], widths[1:], strict=True))]))
    s = res["seq"]
    added50 = pct(s["runewarp"]["latencies_ms"], 50) - pct(s["direct"]["latencies_ms"], 50)
    added99 = pct(s["runewarp"]["latencies_ms"], 99) - pct(s["direct"]["latencies_ms"], 99)
    print(f"\nadded latency per new connection (sequential, {REPEATS * SEQ_PER_REPEAT} conns each,"
          f" pooled): p50 +{added50:.2f} ms, p99 +{added99:.2f} ms")
    print("median [min–max over repeats]; bulk/conn-rate/sequential: "
          f"{REPEATS} repeats; idle memory: one run of {IDLE_CONNS} connections.")
    print("(*) DIRECT = the backend's processes; RUNEWARP = Server + Client only (backend"
          " excluded): the ratio compares Runewarp's own cost with the backend's.")
    busiest = max(res["foreign_load"].items(), key=lambda kv: kv[1]["foreign_cores"])
    print(f"load generators, curl, backend and Runewarp share {os.cpu_count()} CPUs; other processes"
          f" used up to {busiest[1]['foreign_cores']:.2f} cores (phase {busiest[0]})"
          + (" -- numbers are NOISY" if busiest[1]["foreign_cores"] > 0.25 else "") + ".")
    return added50, added99


def log_issues(proc):
    """WARN/ERROR lines and tracebacks from a process's stderr (nginx: [warn]..[emerg])."""
    pattern = re.compile(r"\b(WARN|ERROR)\b|Traceback|\[(warn|error|crit|alert|emerg)\]")
    return [line for line in proc.lines if pattern.search(line)]


# --- main -----------------------------------------------------------------------------------

def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited as ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="runewarp-bench-"))
    results = {"config": {"bulk_mb": BULK_MB, "conc_mb_per_stream": CONC_MB, "streams": STREAMS,
                          "repeats": REPEATS, "rate_seconds": RATE_SECONDS,
                          "rate_in_flight": RATE_PROCS * RATE_THREADS,
                          "seq_conns_per_repeat": SEQ_PER_REPEAT, "idle_conns": IDLE_CONNS},
               "env": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "kernel": platform.release(), "openssl": ssl.OPENSSL_VERSION}}
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

        def phase(name, title, work):
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
        results["foreign_load"] = monitor.phases
        results["runewarp_rss_peak_kib"] = {
            p.name: int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{p.pid}/status").read_text())[1])
            for p in (server, client)}
        rows = build_rows(results)
        added50, added99 = print_table(rows, results)
        results["table"] = [{"metric": n, "direct": med(d), "runewarp": med(r),
                             "direct_all": d, "runewarp_all": r,
                             "ratio": (med(r) / med(d)) if med(d) else None}
                            for n, d, r, _f, _ in rows]
        results["added_latency_ms"] = {"p50": added50, "p99": added99}
        problems = report_problems(results, server, client, backend["proc"])
        results["problems"] = problems
    finally:
        exit_codes = {}
        procs = [p for p in STARTED if isinstance(p, Proc)]
        cleanup()
        for p in procs:
            exit_codes[p.name] = p.popen.returncode
        shutil.rmtree(tmp, ignore_errors=True)
    results["exit_codes"] = exit_codes
    results["elapsed_s"] = time.monotonic() - began
    for seq in results["seq"].values():   # keep the JSON small: pooled percentiles, not samples
        seq["p50_pooled"], seq["p99_pooled"] = pct(seq["latencies_ms"], 50), pct(seq["latencies_ms"], 99)
        del seq["latencies_ms"]
    for rate in results["rate"].values():
        rate["p50_pooled"], rate["p99_pooled"] = pct(rate["latencies_ms"], 50), pct(rate["latencies_ms"], 99)
        del rate["latencies_ms"]
    out = BENCH / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nexit codes after SIGTERM: {exit_codes}; elapsed {results['elapsed_s']:.0f} s; "
          f"results in {out.relative_to(ROOT)}")


def report_problems(results, server, client, backend_proc):
    """Everything that went wrong under load, side by side: errors seen by the load
    generators and curls, and WARN/ERROR lines in the processes' own logs."""
    problems = {}
    for name in ("direct", "runewarp"):
        found = {}
        if results["bulk"][name]["errors"]:
            found["bulk"] = results["bulk"][name]["errors"][:10]
        for test in ("rate", "seq"):
            if results[test][name]["errors"]:
                found[test] = results[test][name]["errors"]
        idle = results["idle"][name]
        if idle["errors"] or idle["opened"] < IDLE_CONNS or idle["sample_alive"] < idle["sample_size"]:
            found["idle"] = {"errors": idle["errors"], "opened": idle["opened"],
                             "sample_alive": f"{idle['sample_alive']}/{idle['sample_size']}"}
        if found:
            problems[name] = found
    for proc in (server, client, backend_proc):
        lines = log_issues(proc)
        if lines:
            problems[f"{proc.name} log"] = {"count": len(lines), "first": lines[:10]}
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
