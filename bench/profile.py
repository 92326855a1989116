"""Where a proxied connection's CPU goes: syscalls, greenlet switches and a profile per side.

    .venv/bin/python bench/profile.py [REV]    (PROFILE_CONNS=400, PROFILE_SECONDS=8)

REV (optional): profile the `runewarp/` package of that commit instead of the working
tree (the before of a change); the counting wrapper is always the tree's.

One Server + Client pair as bench/bench.py starts them (its helpers, its nginx), each
role run through bench/counted.py.  Two workloads, both bench/loadgen.py: PROFILE_CONNS
sequential connections (one in flight) and PROFILE_CONNS with 50 in flight.  For each
workload and side, per proxied connection:

- greenlet switches and greenlets run (bench/counted.py, a run on its own);
- system calls by name (`strace -c -f -p PID` attached for a second run: strace slows
  the process, so its run is not the one the switches are counted in);
- with py-spy installed, a third run with 50 in flight is sampled (`py-spy record
  --nonblocking`) and the top functions by own samples are printed per side.

Everything started is stopped by PID in `finally` (bench.cleanup()).
"""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402 - after the path tweak

CONNS = int(os.environ.get("PROFILE_CONNS", "400"))
SECONDS = float(os.environ.get("PROFILE_SECONDS", "8"))
TOP = 20
WORKLOADS = {"sequential": (1, 1), "50 in flight": (2, 25)}  # loadgen processes, threads
TRACED = {"sendto", "recvfrom", "sendmsg", "recvmsg", "epoll_wait", "epoll_ctl", "getpid",
          "accept4", "connect", "close", "socket", "mmap", "munmap", "setsockopt",
          "getsockopt", "getsockname", "getpeername", "write", "read", "futex"}


def export(rev, folder):
    """`rev`'s runewarp/ package in `folder` (as bench/ab.py exports its A side)."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(b.ROOT), "archive", rev, "runewarp"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def counted_cmd():
    return (sys.executable, "-m", "bench.counted")


def snapshot(pid, folder):
    """(switches, greenlets) of a counted role so far."""
    path = folder / f"counts-{pid}"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGWINCH)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no counts from pid {pid}")
        time.sleep(0.02)
    return tuple(int(v) for v in path.read_text().split())


def drive(target, ca, procs, threads):
    """Run the workload; the number of connections the roles carried (warm-ups included)."""
    run = b.loadgen(target, ca, procs, threads, count=CONNS // procs)
    return run["ok"] + sum(run["errors"].values()) + 5 * procs  # loadgen's 5 warm-ups each


def strace_summary(path):
    """{syscall: calls} from an `strace -c` table."""
    calls = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def with_strace(sides, run, folder):
    """Run `run()` with `strace -c -f` attached to each side; ({side: {syscall: calls}}, conns)."""
    tracers = {}
    for side, pid in sides.items():
        out = folder / f"strace-{side}.txt"
        tracers[side] = (subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)],
                                          start_new_session=True), out)
    try:
        time.sleep(1)  # attached to every thread before the first connection
        conns = run()
    finally:
        for proc, _ in tracers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in tracers.values():
            proc.wait(timeout=30)
    return {side: strace_summary(out) for side, (_, out) in tracers.items()}, conns


def with_pyspy(sides, run, folder):
    """Run `run()` sampled by py-spy on each side; {side: [(function, share of samples)]}."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    samplers = {}
    for side, pid in sides.items():
        out = folder / f"pyspy-{side}.txt"
        samplers[side] = (subprocess.Popen([pyspy, "record", "--nonblocking", "--format", "raw",
                                            "-r", "200", "-o", str(out), "-p", str(pid)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True), out)
    try:
        time.sleep(1)
        run()
    finally:
        for proc, _ in samplers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in samplers.values():
            proc.wait(timeout=60)
    return {side: own_time(out) for side, (_, out) in samplers.items()}


def own_time(path):
    """Top functions from py-spy's collapsed stacks ("f1;f2;... count"): by own samples, and
    Runewarp's by inclusive samples (where a step's time goes, callees included)."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]  # per function
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if "runewarp/" in frame:
                inclusive[frame] += int(count)
    if not total:
        return [], []
    return ([(name, n / total) for name, n in own.most_common(TOP)],
            [(name, n / total) for name, n in inclusive.most_common(TOP)])


def main():
    if not shutil.which("strace"):
        sys.exit("strace is needed: apt-get install strace")
    tmp = Path(tempfile.mkdtemp(prefix="runewarp-profile-"))
    os.environ["RUNEWARP_COUNT_DIR"] = str(tmp)
    path = [str(b.ROOT)]  # bench.counted, and the tree's runewarp unless REV names another
    if len(sys.argv) > 1:
        path.insert(0, str(export(sys.argv[1], tmp / "rev")))
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    try:
        material = b.make_material(tmp)
        backend = b.start_backend(tmp, material)
        server, client, port = b.start_runewarp(tmp, material, backend["port"],
                                                runewarp=counted_cmd())
        sides = {"Server": server.pid, "Client": client.pid}
        target = {"port": port, "pids": list(sides.values())}
        ca = material["public_ca"]
        lines = ["| per proxied connection | " + " | ".join(
            f"{w}, {s}" for w in WORKLOADS for s in sides) + " |",
                 "|---|" + "---:|" * (len(WORKLOADS) * len(sides))]
        columns = []
        for name, (procs, threads) in WORKLOADS.items():
            before = {side: snapshot(pid, tmp) for side, pid in sides.items()}
            cpu0 = b.cpu_seconds(target["pids"])
            conns = drive(target, ca, procs, threads)
            cpu = b.cpu_seconds(target["pids"]) - cpu0
            after = {side: snapshot(pid, tmp) for side, pid in sides.items()}
            calls, traced = with_strace(sides, lambda p=procs, t=threads: drive(target, ca, p, t), tmp)
            for side in sides:
                switches, greenlets = (a - c for a, c in zip(after[side], before[side], strict=True))
                columns.append({"conns": conns, "traced": traced, "switches": switches,
                                "greenlets": greenlets, "calls": calls[side]})
            print(f"{name}: {conns} connections, CPU (both sides, no tracer) "
                  f"{1000 * cpu / conns:.2f} ms per connection", flush=True)
        names = sorted({n for col in columns for n in col["calls"]},
                       key=lambda n: -sum(col["calls"].get(n, 0) / col["traced"] for col in columns))
        rows = [("greenlet switches", [c["switches"] / c["conns"] for c in columns]),
                ("greenlets run", [c["greenlets"] / c["conns"] for c in columns]),
                ("system calls (all)", [sum(c["calls"].values()) / c["traced"] for c in columns])]
        rows += [(f"`{n}`", [c["calls"].get(n, 0) / c["traced"] for c in columns])
                 for n in names if n in TRACED or any(c["calls"].get(n, 0) / c["traced"] >= 0.5
                                                      for c in columns)]
        lines += [f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
                  for label, values in rows]
        print("\n".join(lines), flush=True)
        if shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists():
            tops = with_pyspy(sides, lambda: b.loadgen(target, ca, 2, 25, duration=SECONDS), tmp)
            for side, (top, steps) in tops.items():
                for title, rows in (("functions by own samples", top),
                                    ("Runewarp functions by inclusive samples", steps)):
                    print(f"\n{side}, 50 in flight: top {TOP} {title} (py-spy)")
                    for function, share in rows:
                        print(f"  {100 * share:5.1f} %  {function}")
        else:
            print("\n(py-spy not installed: no profile; .venv/bin/pip install py-spy)")
    finally:
        b.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
