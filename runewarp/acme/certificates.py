"""ACME at run time: certbot as the engine, Runewarp answering TLS-ALPN-01 itself.

Two halves:

- `ChallengeResponder` answers ``acme-tls/1`` handshakes from the material the
  certbot plugin (`runewarp.acme.plugin`) left in the challenge folder.  On the
  Server it is fed the public socket; on the Client the mux stream of a
  terminate Service (the CA's connection arrives through the Tunnel like any
  Visitor).
- `AcmeCertificates` owns certbot's folders under the ACME ``state-dir``,
  decides when a certificate is due, runs ``certbot certonly`` (serialized, with
  a deadline), checks that a new certificate really appeared (by serial: a
  deploy hook's exit status is not reliable) and schedules itself: at start
  when a certificate is missing or due, then every 12 h with jitter, retrying
  failures with a doubling backoff.

Layout under ``state-dir``: ``config/`` (certbot ``--config-dir``: accounts,
``live/<hostname>/``, ``archive/``, ``renewal/``), ``work/``, ``logs/``,
``challenges/<hostname>.pem``.

Knobs for tests and operations (environment): ``RUNEWARP_ACME_CHECK_SECONDS``
(periodic check interval, default 43200), ``RUNEWARP_ACME_RETRY_SECONDS``
(first retry delay after a failure, default 60, doubling up to 3600).

Everything here is gevent-friendly: the process is monkey-patched, so the
standard `subprocess` module is gevent's and waiting for certbot never blocks
the hub.  Nothing here imports certbot.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import gevent
import gevent.lock
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from ..material import DIR_MODE, ensure_dir

ALPN_ACME = b"acme-tls/1"
CHALLENGE_DEADLINE = 10.0
CERTBOT_TIMEOUT = 300.0
CHECK_SECONDS = 12 * 3600.0
JITTER_SECONDS = 3600.0
RETRY_SECONDS = 60.0
MAX_RETRY_SECONDS = 3600.0
RENEW_REMAINING_FRACTION = 1 / 3

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")

# certbot's closing boilerplate: never the reason.
_NOISE = ("saving debug log", "ask for help", "see the logfile", "re-run certbot",
          "- - -", "requesting a certificate", "account registered", "hint:",
          "the certificate authority reported these problems", "certbot failed to authenticate",
          "some challenges have failed", "an unexpected error occurred")


def challenge_file(challenge_dir, domain: str) -> Path:
    """``<challenge_dir>/<domain>.pem`` (validation certificate, then key); plain DNS names only."""
    domain = domain.lower().rstrip(".")
    if not _DOMAIN_RE.match(domain):
        raise ValueError(f"not a DNS name: {domain!r}")
    return Path(challenge_dir) / f"{domain}.pem"


def _env_seconds(name, default):
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _utcnow():
    return _dt.datetime.now(_dt.UTC)


def _rfc3339(moment):
    return moment.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


# --------------------------------------------------------------------------
# TLS-ALPN-01 answering


def _challenge_context(pem):
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    cert = x509.load_pem_x509_certificate(pem)
    key = serialization.load_pem_private_key(pem, None)
    try:
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
    except TypeError:  # pyOpenSSL before 24.3 takes only its own wrappers
        ctx.use_certificate(crypto.X509.from_cryptography(cert))
        ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
    ctx.check_privatekey()

    def select_alpn(_conn, offered):
        # Refuse the handshake (alert no_application_protocol) unless acme-tls/1 is
        # offered: returning NO_OVERLAPPING_PROTOCOLS would go on without ALPN.
        if ALPN_ACME not in offered:
            raise SSL.Error("the client did not offer ALPN acme-tls/1")
        return ALPN_ACME

    ctx.set_alpn_select_callback(select_alpn)
    return ctx


class ChallengeResponder:
    """Answers ``acme-tls/1`` handshakes from the plugin's challenge folder."""

    def __init__(self, challenge_dir):
        self.challenge_dir = Path(challenge_dir)
        self._cache = {}

    def context_for(self, hostname):
        """Context presenting the pending validation certificate for `hostname`, else None."""
        try:
            path = challenge_file(self.challenge_dir, hostname)
            st = os.stat(path)
        except (ValueError, OSError):
            self._cache.pop(hostname, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(hostname)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, "rb") as f:
                ctx = _challenge_context(f.read())
        except (OSError, SSL.Error, crypto.Error, ValueError):
            self._cache.pop(hostname, None)
            return None
        self._cache[hostname] = (stamp, ctx)
        return ctx

    def answer(self, sock, hostname, buffered, log):
        """Complete the validation handshake on `sock` (recv/sendall/close), then close it.

        `buffered` is the ClientHello intake already read.  True when the
        handshake completed.
        """
        from ..io.tlsconn import ServerTLSConnection, TLSClosed

        ctx = self.context_for(hostname)
        if ctx is None:
            log.debug("acme-challenge-refused", hostname=hostname, reason="no-pending-challenge")
            sock.close()
            return False
        tls = ServerTLSConnection(sock, ctx, buffered)
        try:
            with gevent.Timeout(CHALLENGE_DEADLINE):
                tls.handshake()
                try:
                    tls.conn.shutdown()
                    tls.flush()
                except (SSL.Error, OSError):
                    pass
            log.debug("acme-challenge-answered", hostname=hostname)
            return True
        except gevent.Timeout:
            log.debug("acme-challenge-failed", hostname=hostname, reason="handshake-deadline")
        except (SSL.Error, TLSClosed, OSError) as exc:
            log.debug("acme-challenge-failed", hostname=hostname, reason=f"tls-error: {exc}")
        finally:
            try:
                tls.close()
            except OSError:
                pass
        return False


# --------------------------------------------------------------------------
# certbot driving


def _kill_group(proc):
    """Kill certbot and anything it started (hooks), without waiting on their pipes forever."""
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass
    proc.wait()


def certbot_reason(output: str) -> str:
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


class AcmeCertificates:
    """Certificates for `hostnames`, obtained and renewed with certbot under ``state-dir``.

    `role` is ``"server"`` (the Server hostname) or ``"client"`` (terminate
    hostnames); it only picks the log field name.  `on_ready(hostname)` is
    called after a new certificate was verified on disk.
    """

    def __init__(self, acme_config, hostnames, log, role="server", on_ready=None):
        self.acme_config = acme_config
        self.hostnames = tuple(hostnames)
        self.log = log
        self.role = role
        self.on_ready = on_ready
        self.state_dir = Path(acme_config.state_dir)
        self.config_dir = self.state_dir / "config"
        self.work_dir = self.state_dir / "work"
        self.logs_dir = self.state_dir / "logs"
        self.challenge_dir = self.state_dir / "challenges"
        self.responder = ChallengeResponder(self.challenge_dir)
        self.certbot_timeout = CERTBOT_TIMEOUT
        self.check_seconds = _env_seconds("RUNEWARP_ACME_CHECK_SECONDS", CHECK_SECONDS)
        self.jitter_seconds = min(JITTER_SECONDS, self.check_seconds / 12)
        self.retry_seconds = _env_seconds("RUNEWARP_ACME_RETRY_SECONDS", RETRY_SECONDS)
        self.max_retry_seconds = max(MAX_RETRY_SECONDS, self.retry_seconds)
        self._lock = gevent.lock.Semaphore()
        self._greenlet = None
        self._next_retry = None

    # -- state on disk --
    def _field(self, hostname):
        key = "server_hostname" if self.role == "server" else "public_hostname"
        return {key: hostname}

    def ensure_dirs(self):
        for folder in (self.state_dir, self.config_dir, self.work_dir, self.logs_dir,
                       self.challenge_dir):
            ensure_dir(folder, DIR_MODE)

    def paths(self, hostname):
        """(fullchain, privkey) of the current certificate, or None before the first issuance.

        The paths are certbot's immutable ``archive/`` files of one version
        (``fullchainN.pem`` with ``privkeyN.pem``), resolved through the
        ``live/`` links: certbot swaps those links one by one, so reading them
        directly could pair a new chain with an old key mid-update.  A new
        version means new paths, so stat-based reloading sees the change.
        """
        live = self.config_dir / "live" / hostname / "fullchain.pem"
        try:
            real = Path(os.path.realpath(live))
        except OSError:
            return None
        match = re.fullmatch(r"fullchain(\d+)\.pem", real.name)
        key = (real.with_name(f"privkey{match.group(1)}.pem") if match
               else live.with_name("privkey.pem"))
        if real.is_file() and key.is_file():
            return real, key
        return None

    def certificate(self, hostname):
        """The current leaf as a `cryptography` certificate, or None."""
        found = self.paths(hostname)
        if found is None:
            return None
        try:
            return _first_cert(found[0])
        except (OSError, ValueError):
            return None

    def due_at(self, hostname):
        """When the current certificate becomes due (aware UTC); None when there is none."""
        cert = self.certificate(hostname)
        if cert is None:
            return None
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - lifetime * RENEW_REMAINING_FRACTION

    def due(self, hostname, now=None):
        """Missing, unreadable, or less than 1/3 of its lifetime left."""
        at = self.due_at(hostname)
        return at is None or (now or _utcnow()) >= at

    def valid(self, hostname, now=None):
        cert = self.certificate(hostname)
        return cert is not None and (now or _utcnow()) < cert.not_valid_after_utc

    # -- certbot --
    def certbot_command(self, hostname, force):
        cfg = self.acme_config
        return [
            sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())",
            "certonly", "--non-interactive", "--agree-tos", "--no-eff-email",
            "-m", cfg.email, "--server", cfg.directory_url,
            "--config-dir", str(self.config_dir), "--work-dir", str(self.work_dir),
            "--logs-dir", str(self.logs_dir), "--max-log-backups", "20",
            "-a", "runewarp", "--runewarp-challenge-dir", str(self.challenge_dir),
            "--preferred-challenges", "tls-alpn-01",
            "--key-type", "ecdsa", "--elliptic-curve", "secp256r1",
            "--cert-name", hostname, "-d", hostname,
            # We decide when a certificate is due (1/3 of its lifetime left);
            # certbot's own rule (ARI, else 1/2 or 1/3 of the lifetime, or
            # renew_before_expiry) must not veto a renewal we asked for.
            "--force-renewal" if force else "--keep-until-expiring",
        ]

    def run_once(self):
        """Run certbot for every due hostname, one run at a time; True when none failed."""
        with self._lock:
            self.ensure_dirs()
            ok = True
            for hostname in self.hostnames:
                if self.due(hostname):
                    ok = self._issue(hostname) and ok
            return ok

    def _issue(self, hostname):
        before = self.certificate(hostname)
        if before is not None:
            self.log.info("acme-renewal-due", **self._field(hostname),
                          not_after=_rfc3339(before.not_valid_after_utc))
        self.log.info("acme-issuance-started", **self._field(hostname),
                      directory_url=self.acme_config.directory_url)
        lineage = (self.config_dir / "renewal" / f"{hostname}.conf").exists()
        command = self.certbot_command(hostname, force=lineage)
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            return self._failed(hostname, f"cannot run certbot: {exc}")
        try:
            output, _ = proc.communicate(timeout=self.certbot_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return self._failed(hostname, f"certbot timed out after {self.certbot_timeout:g}s")
        finally:
            if proc.poll() is None:  # killed from outside (stop()): leave no certbot behind
                _kill_group(proc)
        if proc.returncode != 0:
            return self._failed(hostname, certbot_reason(output))
        after = self.certificate(hostname)
        if after is None or (before is not None and after.serial_number == before.serial_number):
            return self._failed(hostname, "certbot exited 0 but no new certificate is on disk: "
                                + certbot_reason(output))
        self.log.info("acme-certificate-ready", **self._field(hostname),
                      not_after=_rfc3339(after.not_valid_after_utc),
                      serial=format(after.serial_number, "x"),
                      issuer=after.issuer.rfc4514_string())
        if self.on_ready is not None:
            try:
                self.on_ready(hostname)
            except Exception as exc:  # noqa: BLE001 - a reload bug must not stop renewals
                self.log.error("acme-reload-failed", **self._field(hostname), reason=str(exc))
        return True

    def _failed(self, hostname, reason):
        retry = None if self._next_retry is None else f"{int(-(-self._next_retry // 1))}s"
        self.log.warn("acme-issuance-failed", **self._field(hostname), reason=reason,
                      next_retry_delay=retry)
        return False

    # -- scheduling --
    def _next_check_delay(self, now=None):
        now = now or _utcnow()
        delay = self.check_seconds + random.uniform(-self.jitter_seconds, self.jitter_seconds)
        for hostname in self.hostnames:
            at = self.due_at(hostname)
            if at is not None:
                delay = min(delay, (at - now).total_seconds() + 1)
        return max(delay, 1.0)

    def _schedule(self):
        retry = self.retry_seconds
        delay = 0.0 if any(self.due(h) for h in self.hostnames) else self._next_check_delay()
        while True:
            gevent.sleep(delay)
            self._next_retry = retry
            try:
                ok = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the scheduler must survive anything
                self.log.error("acme-issuance-failed", reason=f"internal error: {exc!r}",
                               next_retry_delay=f"{int(-(-retry // 1))}s")
                ok = False
            finally:
                self._next_retry = None
            if ok:
                retry = self.retry_seconds
                delay = self._next_check_delay()
            else:
                delay = retry
                retry = min(retry * 2, self.max_retry_seconds)

    def start(self):
        """Spawn the scheduler greenlet (returns at once)."""
        if self._greenlet is None or self._greenlet.dead:
            self.ensure_dirs()
            self._greenlet = gevent.spawn(self._schedule)
        return self._greenlet

    def stop(self):
        """Stop scheduling; a certbot run in progress is killed."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)
            self._greenlet = None


def renew_once(acme_config, hostnames, log, role="server"):
    """One synchronous renewal pass for cron/systemd timers; exit status 0 or 1.

    0 when no certbot run failed and every certificate is present and
    unexpired afterwards, 1 otherwise.
    """
    certs = AcmeCertificates(acme_config, hostnames, log, role)
    ok = certs.run_once()
    missing = [h for h in certs.hostnames if not certs.valid(h)]
    for hostname in certs.hostnames:
        if hostname in missing:
            continue
        cert = certs.certificate(hostname)
        log.info("acme-certificate-present", **certs._field(hostname),
                 not_after=_rfc3339(cert.not_valid_after_utc),
                 serial=format(cert.serial_number, "x"))
    return 0 if ok and not missing else 1


def warn_port(log, public_bind_port):
    """ACME CAs validate TLS-ALPN-01 on port 443 only: say so when we listen elsewhere."""
    if public_bind_port != 443:
        log.warn("acme-port-not-443", public_bind_port=public_bind_port,
                 reason="the CA validates tls-alpn-01 on port 443; forward 443 to this port")
