"""The `workers` phase of bench/bench.py: `workers = 2` against `workers = 1` in one run.

A build that accepts `workers` in [server] and [client] (found out by `runewarp config
check` on a file that sets it) gets a second Server + Client pair with `workers = 2` and a
metrics listener; the 8-stream bulk download and the 50-in-flight connection rate then
alternate between the pair with one worker (the bench's own pair) and this one.  The
Server's /metrics carries a `worker` label on every series: the Visitor connections counted
per label show whether both workers carried traffic.  A build without the key prints
"workers: not available in this build" and measures nothing.
"""

import re
import statistics
import subprocess
import urllib.request

from runewarp import harness

WORKERS = 2
VISITORS = "runewarp_visitor_connections_total"
_SERIES = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def unavailable(configs, cwd):
    """Why `workers = 2` cannot be measured with this build; None when it can.  `configs`:
    role -> a complete config file that sets `workers`; the judge is the product's own
    `runewarp config check`, which names an unknown key."""
    for role, path in configs.items():
        proc = subprocess.run([*harness.runewarp_cmd(), "config", "check", role, "-c", path],
                              cwd=cwd, capture_output=True, text=True, timeout=60)
        said = (proc.stderr or proc.stdout).strip()
        if proc.returncode != 0 and re.search(rf"{role}\.workers: unknown key", said):
            return "not available in this build"
        if proc.returncode != 0:
            return f"`runewarp config check {role}` on a file with workers failed: {said[-300:]}"
    return None


def per_worker(metrics_text, name=VISITORS):
    """{worker label: sum of `name` over its other labels} from a Prometheus text page."""
    counts = {}
    for line in metrics_text.splitlines():
        match = _SERIES.match(line.strip())
        if not match or match[1] != name:
            continue
        labels = dict(_LABEL.findall(match[2]))
        worker = labels.get("worker", "-")
        counts[worker] = counts.get(worker, 0) + float(match[3])
    return counts


def scrape(port, timeout=10):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return reply.read().decode()


def measure(targets, run_multi, run_rate, repeats, metrics_port):
    """Alternate `run_multi(target)` (8-stream bulk: bytes, wall s, cpu s, errors) and
    `run_rate(target)` (loadgen's merged dict) over `targets` ({"workers=1": ...,
    "workers=2": ...}), then count the Visitor connections per worker on the second."""
    out = {name: {"multi_mb_s": [], "rates": [], "cpu_multi": 0.0, "bytes_multi": 0,
                  "cpu_rate": 0.0, "conns": 0, "errors": []} for name in targets}
    for rep in range(repeats):
        order = list(targets) if rep % 2 == 0 else list(reversed(targets))
        for name in order:
            got, wall, cpu, errors = run_multi(targets[name])
            res = out[name]
            res["multi_mb_s"].append(got / wall / 1e6)
            res["cpu_multi"] += cpu
            res["bytes_multi"] += got
            res["errors"] += errors
            print(f"  workers bulk 8  {name:9} #{rep + 1}: {got / wall / 1e6:8.1f} MB/s", flush=True)
        for name in order:
            run = run_rate(targets[name])
            res = out[name]
            res["rates"].append(run["rate"])
            res["cpu_rate"] += run["cpu_s"]
            res["conns"] += run["ok"] + sum(run["errors"].values())
            res["errors"] += [f"rate {kind}: {n}" for kind, n in run["errors"].items()]
            print(f"  workers rate    {name:9} #{rep + 1}: {run['rate']:8.1f} conn/s", flush=True)
    for res in out.values():
        res["cpu_s_per_gb_multi"] = res["cpu_multi"] / (res["bytes_multi"] / 1e9) if res["bytes_multi"] else None
        res["cpu_ms_per_conn"] = 1000 * res["cpu_rate"] / res["conns"] if res["conns"] else None
    try:
        out["visitors_per_worker"] = per_worker(scrape(metrics_port))
    except OSError as exc:
        out["visitors_per_worker"] = {}
        out["metrics_error"] = f"{type(exc).__name__}: {exc}"
    carried = [w for w, n in out["visitors_per_worker"].items() if n > 0]
    out["every_worker_carried"] = len(carried) >= WORKERS
    print(f"  Visitor connections per worker (Server /metrics, {VISITORS}): "
          + (", ".join(f"worker {w}: {n:.0f}" for w, n in sorted(out["visitors_per_worker"].items()))
             or out.get("metrics_error", "no series"))
          + ("" if out["every_worker_carried"] else "  -- NOT every worker carried traffic"),
          flush=True)
    return out


def report(res):
    """Lines for the end of the table: the pair with two workers against the one with one."""
    if "skipped" in res:
        return [f"workers: {res['skipped']}"]
    if "failed" in res:
        return [f"workers: FAILED: {res['failed']}"]
    one, two = res.get("workers=1"), res.get(f"workers={WORKERS}")
    if not (one and two):
        return []
    lines = [f"workers = {WORKERS} against workers = 1 (same run, alternating):"]
    for label, key, fmt in (("bulk 8 streams aggregate, MB/s", "multi_mb_s", "{:.0f}"),
                            ("new conns/s, 50 in flight", "rates", "{:.0f}")):
        a, b = statistics.median(one[key]), statistics.median(two[key])
        lines.append(f"  {label:32} {fmt.format(a):>8} -> {fmt.format(b):>8}"
                     + (f"  ({b / a:.2f}x)" if a else ""))
    for label, key, fmt in (("CPU s per GB, 8 streams", "cpu_s_per_gb_multi", "{:.2f}"),
                            ("CPU ms per conn", "cpu_ms_per_conn", "{:.3f}")):
        a, b = one[key], two[key]
        if a and b:
            lines.append(f"  {label:32} {fmt.format(a):>8} -> {fmt.format(b):>8}  ({b / a:.2f}x)")
    per = res.get("visitors_per_worker") or {}
    lines.append("  Visitor connections per Server worker: "
                 + (", ".join(f"worker {w}: {n:.0f}" for w, n in sorted(per.items()))
                    or res.get("metrics_error", "none seen"))
                 + ("  (every worker carried traffic)" if res.get("every_worker_carried")
                    else "  -- NOT every worker carried traffic"))
    if res.get("server_worker_cpu_s"):
        lines.append("  CPU s per Server worker process (/proc): "
                     + ", ".join(f"pid {pid}: {cpu:.2f}" for pid, cpu in res["server_worker_cpu_s"].items()))
    return lines

