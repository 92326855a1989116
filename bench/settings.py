"""The bench's settings: the environment knobs (docstring of bench.py), the fixed shapes of
each workload and issue 20's targets, for bench.py and its table (table.py)."""

import os
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
STREAMS_CONNS = int(os.environ.get("BENCH_STREAMS_CONNS", "10000"))
STREAMS_PROCS, STREAMS_INFLIGHT, STREAMS_SOURCES = 2, 100, 64
RTT_MB = int(os.environ.get("BENCH_RTT_MB", "256"))
RTT_SECONDS = float(os.environ.get("BENCH_RTT_SECONDS", "15"))
RTT_REPEATS = int(os.environ.get("BENCH_RTT_REPEATS", "2"))
ONLY = [p for p in os.environ.get("BENCH_ONLY", "").split(",") if p]
# BENCH_ACCESS_LOG=false writes `access-log = false` for both roles (the default, unset,
# leaves the key out: the access log is on at info, as in production).
ACCESS_LOG = {"false": False}.get(os.environ.get("BENCH_ACCESS_LOG", ""))
RTT_ONE_WAY_MS = 25
RTT_A, RTT_B = "10.203.0.1", "10.203.0.2"
RTT_BACKEND_PORT = 8443
# In the namespaces only (per-netns sysctls): room for a window of ~2 x BDP and more.
# net.core.rmem_max/wmem_max are left alone: they are global (not per namespace) and only
# cap explicit SO_RCVBUF/SO_SNDBUF, which neither Runewarp, nginx nor curl set.
RTT_SYSCTLS = {"net.ipv4.tcp_rmem": "4096 131072 33554432",
               "net.ipv4.tcp_wmem": "4096 16384 33554432"}
NOFILE = 65536

# The targets of issue 20 (the second performance round) and, for streams and rtt, the
# guard rails kept from issue 6: each limit, and its text beside the figures.
LIMITS = {"cpu_conn": 0.7, "rate": 0.75, "seq_p99": 1.5, "cpu_gb": 2.0, "bulk1": 0.55, "idle": 8.0,
          "rtt": 40.0}
TARGETS = {
    "cpu_conn": f"rw <= {LIMITS['cpu_conn']} ms", "rate": f"rw >= {LIMITS['rate']}x direct",
    "seq_p99": f"added p99 <= {LIMITS['seq_p99']} ms", "cpu_gb": f"rw <= {LIMITS['cpu_gb']} s/GB",
    "bulk1": f"rw >= {LIMITS['bulk1']}x direct", "idle": f"rw <= {LIMITS['idle']:g} KiB",
    "streams": f"{STREAMS_CONNS} open, 0 errors", "rtt": f"rw >= {LIMITS['rtt']:g} MB/s",
}
# The phases that also run through `ssh -R` (BENCH_ONLY=ssh alone: all four of them).
SSH_PHASES = ("seq", "idle", "bulk", "rate")
PHASES = (*SSH_PHASES, "streams", "rtt", "proxy", "quic", "workers", "fleet", "ssh")
