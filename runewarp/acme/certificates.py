"""ACME certificates at run time: certbot's folders, due dates and the schedule.

`AcmeCertificates` owns certbot's folders under the ACME ``state-dir``, decides
when a certificate is due, runs ``certbot certonly`` (serialized, with a
deadline: `certbot`), checks that a new certificate really appeared (by serial:
a deploy hook's exit status is not reliable) and schedules itself: at start when
a certificate is missing or due, then every 12 h with jitter, retrying failures
with a doubling delay (`proto.backoff`).  The acme-tls/1 answer is I/O: the
Server and the Client build `io.challenge.ChallengeResponder` from
`challenge_dir`.

Layout under ``state-dir``: ``config/`` (certbot ``--config-dir``: accounts,
``live/<hostname>/``, ``archive/``, ``renewal/``), ``work/``, ``logs/``,
``challenges/<hostname>.pem``.

Knobs for tests and operations (environment): ``RUNEWARP_ACME_CHECK_SECONDS``
(periodic check interval, default 43200), ``RUNEWARP_ACME_RETRY_SECONDS``
(first retry delay after a failure, default 60, doubling up to 3600).
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import re
import time
from pathlib import Path

import gevent
import gevent.lock
from cryptography import x509

from ..certcheck import rfc3339
from ..material import DIR_MODE, ensure_dir
from ..proto.backoff import Backoff
from ..proto.hostname import HostnameError, normalize
from . import certbot

CERTBOT_TIMEOUT = 300.0
CHECK_SECONDS = 12 * 3600.0
JITTER_SECONDS = 3600.0
RETRY_SECONDS = 60.0
MAX_RETRY_SECONDS = 3600.0
RENEW_REMAINING_FRACTION = 1 / 3


def challenge_file(challenge_dir, domain: str) -> Path:
    """``<challenge_dir>/<domain>.pem`` (validation certificate, then key).

    ValueError unless `domain` is a hostname by `proto.hostname`, so a name
    can never reach outside the folder.
    """
    try:
        domain = normalize(domain)
    except HostnameError as exc:
        raise ValueError(f"not a DNS name: {domain!r} ({exc})") from None
    return Path(challenge_dir) / f"{domain}.pem"


def retry_windows(first, largest):
    """The retry delays after consecutive failures: `first`, doubling, capped at `largest`."""
    windows = [first]
    while windows[-1] < largest:
        windows.append(min(windows[-1] * 2, largest))
    return tuple(windows)


def _whole_window(_low, high):
    """A retry waits its whole window: one certbot per process, no herd to spread."""
    return high


def _env_seconds(name, default):
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _utcnow():
    return _dt.datetime.now(_dt.UTC)


def _first_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


class AcmeCertificates:
    """Certificates for `hostnames`, obtained and renewed with certbot under ``state-dir``.

    `role` is ``"server"`` (the Server hostname) or ``"client"`` (terminate
    hostnames); it only picks the log field name.  `on_ready(hostname)` is
    called after a new certificate was verified on disk.  `clock()` (aware UTC)
    judges due dates and `sleep(seconds)` waits between runs: tests pass fakes.
    """

    def __init__(self, acme_config, hostnames, log, role="server", on_ready=None,
                 clock=_utcnow, sleep=gevent.sleep):
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
        self.clock = clock
        self.sleep = sleep
        self.certbot_timeout = CERTBOT_TIMEOUT
        self.check_seconds = _env_seconds("RUNEWARP_ACME_CHECK_SECONDS", CHECK_SECONDS)
        self.jitter_seconds = min(JITTER_SECONDS, self.check_seconds / 12)
        self.retry_seconds = _env_seconds("RUNEWARP_ACME_RETRY_SECONDS", RETRY_SECONDS)
        self.max_retry_seconds = max(MAX_RETRY_SECONDS, self.retry_seconds)
        self._lock = gevent.lock.Semaphore()
        self._greenlet = None
        self._proc = None
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
        return at is None or (now or self.clock()) >= at

    def valid(self, hostname, now=None):
        cert = self.certificate(hostname)
        return cert is not None and (now or self.clock()) < cert.not_valid_after_utc

    # -- certbot --
    def certbot_command(self, hostname, force):
        return certbot.command(self.acme_config, self.config_dir, self.work_dir, self.logs_dir,
                               self.challenge_dir, hostname, force)

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
                          not_after=rfc3339(before.not_valid_after_utc))
        self.log.info("acme-issuance-started", **self._field(hostname),
                      directory_url=self.acme_config.directory_url)
        lineage = (self.config_dir / "renewal" / f"{hostname}.conf").exists()
        command = self.certbot_command(hostname, force=lineage)
        try:
            self._proc = proc = certbot.start(command)
        except OSError as exc:
            return self._failed(hostname, f"cannot run certbot: {exc}")
        try:
            output = certbot.finish(proc, self.certbot_timeout)
        except certbot.Timeout as exc:
            return self._failed(hostname, str(exc))
        finally:
            self._proc = None
        if proc.returncode != 0:
            return self._failed(hostname, certbot.reason(output))
        after = self.certificate(hostname)
        if after is None or (before is not None and after.serial_number == before.serial_number):
            return self._failed(hostname, "certbot exited 0 but no new certificate is on disk: "
                                + certbot.reason(output))
        self.log.info("acme-certificate-ready", **self._field(hostname),
                      not_after=rfc3339(after.not_valid_after_utc),
                      serial=format(after.serial_number, "x"),
                      issuer=after.issuer.rfc4514_string())
        if self.on_ready is not None:
            try:
                self.on_ready(hostname)
            except Exception as exc:  # noqa: BLE001 - a reload bug must not stop renewals
                self.log.error("acme-reload-failed", **self._field(hostname), reason=str(exc))
        return True

    def _failed(self, hostname, reason):
        retry = None if self._next_retry is None else float(-(-self._next_retry // 1))
        self.log.warn("acme-issuance-failed", **self._field(hostname), reason=reason,
                      next_retry_delay=retry)
        return False

    # -- scheduling --
    def _next_check_delay(self, now=None):
        now = now or self.clock()
        delay = self.check_seconds + random.uniform(-self.jitter_seconds, self.jitter_seconds)
        for hostname in self.hostnames:
            at = self.due_at(hostname)
            if at is not None:
                delay = min(delay, (at - now).total_seconds() + 1)
        return max(delay, 1.0)

    def _schedule(self):
        windows = retry_windows(self.retry_seconds, self.max_retry_seconds)
        backoff = Backoff(windows)
        delay = 0.0 if any(self.due(h) for h in self.hostnames) else self._next_check_delay()
        while True:
            self.sleep(delay)
            retry = backoff.next_delay(_whole_window, time.monotonic())
            self._next_retry = retry
            try:
                ok = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the scheduler must survive anything
                self.log.error("acme-issuance-failed", reason=f"internal error: {exc!r}",
                               next_retry_delay=float(-(-retry // 1)))
                ok = False
            finally:
                self._next_retry = None
            if ok:
                backoff = Backoff(windows)  # the next failure starts at the first window
                delay = self._next_check_delay()
            else:
                delay = retry

    def start(self):
        """Spawn the scheduler greenlet (returns at once)."""
        if self._greenlet is None or self._greenlet.dead:
            self.ensure_dirs()
            self._greenlet = gevent.spawn(self._schedule)
        return self._greenlet

    def stop(self):
        """Stop scheduling.  A certbot run in progress is killed with its whole process
        group at once; the scheduler greenlet then only reaps it."""
        greenlet, self._greenlet = self._greenlet, None
        if self._proc is not None:
            certbot.signal_group(self._proc)
        if greenlet is not None:
            greenlet.kill(block=True, timeout=5)


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
                 not_after=rfc3339(cert.not_valid_after_utc),
                 serial=format(cert.serial_number, "x"))
    return 0 if ok and not missing else 1


def warn_port(log, public_bind_port):
    """ACME CAs validate TLS-ALPN-01 on port 443 only: say so when we listen elsewhere."""
    if public_bind_port != 443:
        log.warn("acme-port-not-443", public_bind_port=public_bind_port,
                 reason="the CA validates tls-alpn-01 on port 443; forward 443 to this port")
