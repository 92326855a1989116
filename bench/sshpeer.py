"""The `ssh -R` column of bench/bench.py: OpenSSH's reverse tunnel carrying the same workloads.

An SSH reverse tunnel is Runewarp's closest architectural peer: an encrypted, multiplexed
hop dialed from behind NAT.  `sshd` plays the Server (it accepts the Visitor on the
remote-forwarded port) and `ssh -N -R` plays the Client (it dialed sshd, and connects each
forwarded channel to nginx), so a Visitor crosses Visitor -> sshd -> SSH connection -> ssh
-> nginx, the same hops as through Runewarp.  Everything is made in the bench's temporary
folder: a host key and a user key (ssh-keygen), and an sshd_config that listens on
127.0.0.1 only, admits only that key for the current user, allows only that one remote
forward, and offers only aes128-gcm@openssh.com (the cheapest AEAD on x86 with AES-NI).

CPU is counted over sshd, every process below it (the per-connection session processes:
the privileged monitor and the session child) and ssh, as Server + Client are for Runewarp.
"""

import getpass
import os
import shutil
import subprocess

from runewarp import harness

import procfs

SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
NAME = "ssh"          # the key of this target in the results, beside "direct" and "runewarp"
LABEL = "ssh -R"


def unavailable():
    """Why the ssh -R column cannot be measured here; None when it can."""
    missing = [tool for tool, path in (("sshd", SSHD if os.access(SSHD, os.X_OK) else None),
                                       ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen"))) if not path]
    return f"{', '.join(missing)} not installed" if missing else None


def version():
    return subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "runewarp-bench",
                    "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def sshd_config(folder, port, forward_port, user):
    """Loopback only, this one key for this one user, this one remote forward, one cipher."""
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {folder / 'host_key'}
PidFile none
AuthorizedKeysFile {folder / 'authorized_keys'}
StrictModes no
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Ciphers {CIPHER}
AllowTcpForwarding remote
PermitListen 127.0.0.1:{forward_port}
GatewayPorts no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PermitUserRC no
UseDNS no
PrintMotd no
LogLevel INFO
"""


def start(folder, backend_port, sshd_port, forward_port, spawn, timeout=30):
    """sshd on 127.0.0.1:`sshd_port` and `ssh -N -R` forwarding 127.0.0.1:`forward_port` on
    the sshd side to 127.0.0.1:`backend_port`.  `spawn(cmd, name)` starts a process the
    caller stops by PID.  Returns the target: port, the pids to count (sshd, its session
    processes, ssh), and (pid, command prefix) of the session processes, which the caller
    kills if they outlive ssh and sshd."""
    folder.mkdir(mode=0o700)
    user = getpass.getuser()
    host_key = _keygen(folder / "host_key")
    (folder / "authorized_keys").write_text(_keygen(folder / "user_key") + "\n")
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{sshd_port} {host_key}\n")
    config = folder / "sshd_config"
    config.write_text(sshd_config(folder, sshd_port, forward_port, user))
    sshd = spawn([SSHD, "-D", "-e", "-f", config], "sshd")
    harness.wait_listening(sshd, [sshd_port], timeout=timeout)
    ssh = spawn(["ssh", "-N", "-F", "/dev/null", "-i", folder / "user_key", "-p", sshd_port,
                 "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                 "-o", f"UserKnownHostsFile={folder / 'known_hosts'}",
                 "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"Ciphers={CIPHER}", "-o", "Compression=no", "-o", "ExitOnForwardFailure=yes",
                 "-R", f"127.0.0.1:{forward_port}:127.0.0.1:{backend_port}", f"{user}@127.0.0.1"],
                "ssh")
    harness.wait_listening(ssh, [forward_port], timeout=timeout)
    sessions = procfs.descendants(sshd.pid)   # the forward is up: its session serves it
    if not sessions:
        raise RuntimeError(f"sshd has no session process:\n{sshd.log()}")
    return {"port": forward_port, "pids": [sshd.pid, *sessions, ssh.pid],
            "session_pids": [(pid, b"sshd") for pid in sessions], "version": version(),
            "cipher": CIPHER, "procs": (sshd, ssh)}

