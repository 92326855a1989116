"""Network namespaces for multi-host scenarios on one machine (tests/e2e/test_ha.py, `make ha-demo`).

A `Network` is a private Ethernet segment: a bridge inside a "switch" namespace and one
namespace per host, each joined to the bridge by a veth pair created in those two
namespaces directly, so nothing touches the root namespace's interfaces or routes.
Names carry our pid; `close()` deletes exactly the namespaces and /etc/netns/<name>/
folders this object created (after killing any process still inside them).  Processes
run in a host with `ip netns exec NAME ...`, which also bind-mounts
/etc/netns/NAME/hosts over /etc/hosts: a real name with several A records, no DNS server.
Needs root and iproute2 (`unavailable()` says why not).
"""

import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path
from signal import SIGKILL

ETC_NETNS = Path("/etc/netns")
SUBNET = ipaddress.ip_network("10.99.0.0/24")  # private; lives only inside our namespaces


def unavailable():
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (.ci/run installs it)"
    return None


def ip(*args, check=True):
    return subprocess.run(["ip", *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=20)


class Network:
    """One segment: `add_host(name, last_octet)` gives a namespace with that address."""

    def __init__(self, tag="rw"):
        self.prefix = f"{tag}{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.namespaces = []
        self.hosts = {}  # short name -> (namespace, address)
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name):
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name, last_octet):
        """A namespace `PREFIX-name` with eth0 at SUBNET.last_octet, on the bridge."""
        namespace = f"{self.prefix}-{name}"
        address = str(SUBNET.network_address + last_octet)
        self._add_namespace(namespace)
        port = f"p{len(self.hosts)}"
        ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", namespace)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        self.hosts[name] = (namespace, address)
        return namespace, address

    def namespace(self, name):
        return self.hosts[name][0]

    def address(self, name):
        return self.hosts[name][1]

    def exec_prefix(self, name):
        """The command prefix that runs a program inside host `name`."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def set_hosts(self, name, entries):
        """/etc/hosts as seen inside host `name`: (address, hostname) pairs; a hostname
        listed twice resolves to both addresses."""
        folder = ETC_NETNS / self.namespace(name)
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{address} {hostname}" for address, hostname in entries]
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def pids(self, namespace):
        out = ip("netns", "pids", namespace, check=False).stdout
        return [int(pid) for pid in out.split()]

    def close(self):
        """Kill what still runs inside our namespaces, then delete them and their
        /etc/netns folders; by the names this object created, never by pattern."""
        for namespace in self.namespaces:
            for pid in self.pids(namespace):
                try:
                    os.kill(pid, SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while any(self.pids(ns) for ns in self.namespaces) and time.monotonic() < deadline:
            time.sleep(0.05)
        for namespace in reversed(self.namespaces):
            ip("netns", "delete", namespace, check=False)
            shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)
        self.namespaces = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
