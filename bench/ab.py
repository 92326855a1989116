"""A/B two revisions of Runewarp in one run, on the same backend, alternating.

    python bench/ab.py [REV]        (make bench-ab REV=...; default HEAD~1)

A = the committed revision REV (its `runewarp/` package exported to a temporary
folder), B = the working tree.  Both run at once as separate Server + Client
pairs, and every workload alternates A, B, B, A, A, B ... so that a noisy moment
on a shared machine hits both and neither always runs second; the figures that matter for a code change (CPU per
GB, CPU per connection, latency) are printed side by side with B/A ratios.
BENCH_ONLY (default idle,bulk,rate,seq), BENCH_REPEATS and the other knobs of
bench.py apply.  Everything started is stopped by PID in `finally`.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402 - after the path tweak

PHASES = b.ONLY or ["idle", "bulk", "rate", "seq"]


def runewarp_from(folder):
    """A command running the `runewarp` package found in `folder`, monkey-patching first."""
    code = (f"import sys; sys.path.insert(0, {str(folder)!r}); "
            "from runewarp.entry import main; sys.exit(main())")
    return (sys.executable, "-c", code)


def ratio(a, c):
    return f"{c / a:.2f}" if a else "-"


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    tmp = Path(tempfile.mkdtemp(prefix="runewarp-ab-"))
    exported = tmp / "rev"
    exported.mkdir()
    archive = subprocess.run(["git", "-C", str(b.ROOT), "archive", rev, "runewarp"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(exported)], input=archive, check=True)
    a_name, b_name = f"A {rev}", "B tree"
    try:
        material = b.make_material(tmp)
        backend = b.start_backend(tmp, material)
        pairs = {a_name: b.start_runewarp(tmp, material, backend["port"], tag="-a",
                                          runewarp=runewarp_from(exported)),
                 b_name: b.start_runewarp(tmp, material, backend["port"], tag="-b")}
        targets = {name: {"port": port, "pids": [server.pid, client.pid]}
                   for name, (server, client, port) in pairs.items()}
        ca = material["public_ca"]
        rows = []
        repeats, b.REPEATS = b.REPEATS, 1

        def alternating(run):
            """`run(targets)` once per repeat, A first in even repeats and B first in odd
            ones, so that neither side always runs right after the other."""
            runs = []
            for rep in range(repeats):
                names = list(targets) if rep % 2 == 0 else list(reversed(targets))
                runs.append(run({n: targets[n] for n in names}))
            return runs

        def total(runs, name, key):
            return sum(r[name][key] for r in runs)

        def every(runs, name, key):
            return [v for r in runs for v in r[name][key]]

        if "idle" in PHASES:
            per = {n: b.idle_memory(n, t, ca, b.IDLE_CONNS)["kib_per_conn"] for n, t in targets.items()}
            rows.append(("idle memory, KiB per connection", per[a_name], per[b_name]))
        if "bulk" in PHASES:
            runs = alternating(lambda t: b.bulk(t, ca))
            for key, label in (("single", "CPU s per GB, 1 stream"), ("multi", "CPU s per GB, 8 streams")):
                per = {n: total(runs, n, f"cpu_{key}") / (total(runs, n, f"bytes_{key}") / 1e9)
                       for n in targets}
                rows.append((label, per[a_name], per[b_name]))
                rows.append((f"  MB/s median, {key}", b.med(every(runs, a_name, key)),
                             b.med(every(runs, b_name, key))))
        if "rate" in PHASES:
            runs = alternating(lambda t: b.conn_rate(t, ca))
            per = {n: 1000 * total(runs, n, "cpu_s") / max(1, total(runs, n, "conns")) for n in targets}
            rows.append(("CPU ms per connection", per[a_name], per[b_name]))
            rows.append(("  conn/s median", b.med(every(runs, a_name, "rates")),
                         b.med(every(runs, b_name, "rates"))))
        if "seq" in PHASES:
            runs = alternating(lambda t: b.sequential(t, ca))
            for q in (50, 99):
                rows.append((f"sequential p{q}, ms", b.pct(every(runs, a_name, "latencies_ms"), q),
                             b.pct(every(runs, b_name, "latencies_ms"), q)))
        print(f"\n{'':32} {a_name:>14} {b_name:>14}    B/A")
        for label, a, c in rows:
            print(f"{label:32} {a:14.3f} {c:14.3f} {ratio(a, c):>6}")
    finally:
        b.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
