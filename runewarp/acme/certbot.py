"""certbot as a subprocess: its command line, one run with a deadline, and why it failed.

certbot runs in its own session (process group), so a deadline or a stop kills
it together with anything it started (hooks).  `gevent.subprocess`, named
rather than relied on through monkey-patching, keeps every wait for certbot off
the hub's thread.  Nothing here imports certbot.
"""

import os
import signal
import sys

from gevent import subprocess

KILL_REAP_SECONDS = 10.0

# certbot's closing boilerplate: never the reason.
_NOISE = ("saving debug log", "ask for help", "see the logfile", "re-run certbot",
          "- - -", "requesting a certificate", "account registered", "hint:",
          "the certificate authority reported these problems", "certbot failed to authenticate",
          "some challenges have failed", "an unexpected error occurred")


class Timeout(Exception):
    """certbot ran past its deadline and was killed."""


def command(acme_config, config_dir, work_dir, logs_dir, challenge_dir, hostname, force):
    """`certbot certonly` for one hostname, authenticated by our `runewarp` plugin."""
    return [
        sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())",
        "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
        "-m", acme_config.email, "--server", acme_config.directory_url,
        "--config-dir", str(config_dir), "--work-dir", str(work_dir),
        "--logs-dir", str(logs_dir), "--max-log-backups", "20",
        "-a", "runewarp", "--runewarp-challenge-dir", str(challenge_dir),
        "--preferred-challenges", "tls-alpn-01",
        "--key-type", "ecdsa", "--elliptic-curve", "secp256r1",
        "--cert-name", hostname, "-d", hostname,
        # We decide when a certificate is due (1/3 of its lifetime left);
        # certbot's own rule (ARI, else 1/2 or 1/3 of the lifetime, or
        # renew_before_expiry) must not veto a renewal we asked for.
        "--force-renewal" if force else "--keep-until-expiring",
    ]


def start(argv):
    """Start certbot in a new session, output (stdout and stderr) on one pipe; OSError."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)


def finish(proc, timeout):
    """certbot's output once it exits; Timeout after `timeout` seconds (it is killed).

    However this returns (a deadline, or the calling greenlet killed by a stop),
    no process of certbot's group is left behind.
    """
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise Timeout(f"certbot timed out after {timeout:g}s") from None
    finally:
        if proc.poll() is None:  # killed from outside (a stop): leave no certbot behind
            kill_group(proc)
    return output


def signal_group(proc):
    """SIGKILL certbot and anything it started (hooks), without waiting."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def kill_group(proc):
    """Kill certbot's group, then reap it, without waiting on its pipes forever."""
    signal_group(proc)
    try:
        proc.communicate(timeout=KILL_REAP_SECONDS)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass
    proc.wait()


def reason(output: str) -> str:
    """The line of certbot's output that says why it failed, boilerplate skipped."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    details = [line.split(":", 1)[1].strip() for line in lines
               if line.lower().startswith("detail:")]
    if details:
        return "; ".join(dict.fromkeys(details))
    meaningful = [line for line in lines if not line.lower().startswith(_NOISE)]
    if meaningful:
        return meaningful[-1][:500]
    return "certbot failed without a message"
