"""The long fuzz profile (`make fuzz`): each target in tests/fuzz/targets.py under atheris
(coverage-guided libFuzzer) for FUZZ_RUNS inputs (default 1,000,000), one process per
target, seeded with the target's own corpus.  Prints one line per target (inputs, seconds,
result) and exits non-zero if any target found an unexpected exception.

    python tests/fuzz/run.py [TARGET ...]      # all targets when none is named
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("FUZZ_RUNS", "1000000"))


def fuzz_one(name, runs, corpus):
    """In a child process: fuzz target `name` (libFuzzer's own output goes to stderr)."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["runewarp"]):
        from tests.fuzz.targets import TARGETS
    target, seeds = TARGETS[name]
    for i, seed in enumerate(seeds()):
        (Path(corpus) / f"seed-{i}").write_bytes(seed)
    crashes = Path(tempfile.gettempdir()) / f"runewarp-fuzz-{name}-"
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=4096", "-print_final_stats=1",
                   f"-artifact_prefix={crashes}", corpus], target)
    atheris.Fuzz()


def main(names):
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    failed = False
    for name in names or sorted(TARGETS):
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
            began = time.monotonic()
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(RUNS), corpus],
                                  capture_output=True, text=True)
            seconds = time.monotonic() - began
        done = re.search(r"number_of_executed_units: *(\d+)", proc.stderr)
        inputs = int(done.group(1)) if done else 0
        ok = proc.returncode == 0 and inputs >= RUNS
        failed |= not ok
        result = "ok" if ok else f"FAILED (exit {proc.returncode})"
        print(f"{name:12} {inputs:>10,} inputs {seconds:8.1f} s  {result}", flush=True)
        if not ok:
            print(proc.stderr[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        fuzz_one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main(sys.argv[1:]))
