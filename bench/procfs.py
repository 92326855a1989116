"""What the bench reads from /proc about the processes it measures: children, CPU, RSS, fds.

One home for these readers: bench.py (Runewarp, nginx), sshpeer.py (sshd's session
processes) and workersbench.py (a supervisor's workers) all count the same way.
"""

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid):
    """Direct children of `pid` (all its threads), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def descendants(pid):
    """Every process below `pid` (children, their children, ...), breadth first."""
    found, queue = [], [pid]
    while queue:
        kids = children(queue.pop(0))
        found += kids
        queue += kids
    return found


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pids, kernel_only=False):
    """utime + stime of the processes (all threads), from /proc/PID/stat; stime alone
    with kernel_only (the system calls and the loopback TCP work done on their behalf)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (0 if kernel_only else int(fields[11])) + int(fields[12])
    return total / CLK_TCK


def fd_count(pids):
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def command_line(pid):
    """`pid`'s command line with spaces for NULs ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
