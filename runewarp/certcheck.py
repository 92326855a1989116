"""When a certificate needs attention: pure decisions from (certificate, now).

Nothing here reads a file, a clock or the network: callers load the
certificate, pass the time, and act on the answer (renew, log, refuse).  The
same rules serve the Server certificate and the Public hostname certificates.

- A certificate Runewarp issued from a CA it holds (the Server CA in
  ``cert-dir/state``, the Public hostname CA in ``public-cert-dir/state``) is
  *renewable*: it is renewed once two thirds of its lifetime have passed, and
  at once when it is expired or not yet valid.
- Any other certificate is the operator's: a warning from 30 days before it
  expires, repeated at most once a day; it cannot serve when it is expired or
  not yet valid.
- A Server certificate must name the Server hostname in its subjectAltName
  DNS names, as the Clients check it.
"""

from __future__ import annotations

import datetime as _dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .errors import MaterialError
from .proto.hostname import covers

RENEW_AFTER_FRACTION = 2 / 3
WARN_BEFORE_EXPIRY = _dt.timedelta(days=30)
WARN_EVERY = _dt.timedelta(days=1)

# validity()
VALID = "valid"
EXPIRED = "expired"
NOT_YET_VALID = "not-yet-valid"

# decide()
OK = "ok"                          # nothing to do
RENEW = "renew"                    # renewable and due (or unusable): renew it now
WARN = "warn"                      # not renewable, expires within WARN_BEFORE_EXPIRY
REFUSE = "refuse"                  # not renewable, expired or not yet valid: cannot serve
WRONG_HOSTNAME = "wrong-hostname"  # does not name the hostname it must serve


class CertificateRefused(MaterialError):
    """A certificate that must not be served; `key` is the config key to blame."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


def _aware(now: _dt.datetime) -> _dt.datetime:
    """Aware UTC; naive datetimes are taken to be UTC."""
    return now.replace(tzinfo=_dt.UTC) if now.tzinfo is None else now.astimezone(_dt.UTC)


def rfc3339(moment: _dt.datetime) -> str:
    return _aware(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def validity(cert: x509.Certificate, now: _dt.datetime) -> str:
    """VALID, EXPIRED (at or after not-after) or NOT_YET_VALID (before not-before)."""
    now = _aware(now)
    if now < cert.not_valid_before_utc:
        return NOT_YET_VALID
    if now >= cert.not_valid_after_utc:
        return EXPIRED
    return VALID


def renewal_due_at(cert: x509.Certificate) -> _dt.datetime:
    """The moment two thirds of the certificate's lifetime have passed."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + lifetime * RENEW_AFTER_FRACTION


def renewal_due(cert: x509.Certificate, now: _dt.datetime) -> bool:
    """Past two thirds of its lifetime, or not usable now (expired, not yet valid)."""
    return validity(cert, now) != VALID or _aware(now) >= renewal_due_at(cert)


def expiring(cert: x509.Certificate, now: _dt.datetime,
             before: _dt.timedelta = WARN_BEFORE_EXPIRY) -> bool:
    """Expires within `before` from `now` (an expired certificate is expiring too)."""
    return _aware(now) >= cert.not_valid_after_utc - before


def days_left(cert: x509.Certificate, now: _dt.datetime) -> int:
    """Whole days until not-after, 0 once expired."""
    return max(0, (cert.not_valid_after_utc - _aware(now)).days)


def warning_due(last: _dt.datetime | None, now: _dt.datetime,
                every: _dt.timedelta = WARN_EVERY) -> bool:
    """True when no warning was given yet, or the last one is at least `every` old."""
    return last is None or _aware(now) - _aware(last) >= every


class ExpiryWarnings:
    """When each certificate was last warned about: at most one warning a day per key
    (a hostname) and certificate; a new certificate (serial) may be warned about at once."""

    def __init__(self):
        self._last = {}  # key -> (serial, time of the last warning)

    def due(self, key, cert: x509.Certificate, now: _dt.datetime) -> bool:
        """True when a warning is due now; it is then recorded as given."""
        last = self._last.get(key)
        if not warning_due(last[1] if last and last[0] == cert.serial_number else None, now):
            return False
        self._last[key] = (cert.serial_number, now)
        return True


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """subjectAltName DNS names, lowercase, without a final dot (the subject CN is ignored,
    as TLS clients ignore it when a subjectAltName is present, and most do always)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))


def names_hostname(cert: x509.Certificate, hostname: str) -> bool:
    """The certificate is valid for `hostname` (a normalized DNS name) by its SAN DNS names."""
    hostname = hostname.lower().rstrip(".")
    # RFC 6125 wildcards (the whole left-most label, exactly one label) by the one hostname rule.
    return any(covers(name, hostname) for name in dns_names(cert))


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """`ca` signed `leaf` (issuer name and signature)."""
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def decide(cert: x509.Certificate, now: _dt.datetime, *, renewable: bool,
           hostname: str | None = None) -> str:
    """What to do with `cert` at `now`: OK, RENEW, WARN, REFUSE or WRONG_HOSTNAME.

    `renewable`: the caller holds the CA that issued it.  `hostname`, when given,
    must be named by the certificate; a wrong name is never renewed away (the
    hostname is the operator's decision), so it wins over every other answer.
    """
    if hostname is not None and not names_hostname(cert, hostname):
        return WRONG_HOSTNAME
    if renewable:
        return RENEW if renewal_due(cert, now) else OK
    if validity(cert, now) != VALID:
        return REFUSE
    return WARN if expiring(cert, now) else OK


def describe(cert: x509.Certificate, now: _dt.datetime) -> str:
    """A few words on the certificate's dates, for messages."""
    state = validity(cert, now)
    if state == EXPIRED:
        return f"expired on {rfc3339(cert.not_valid_after_utc)}"
    if state == NOT_YET_VALID:
        return f"not valid before {rfc3339(cert.not_valid_before_utc)}"
    return (f"expires on {rfc3339(cert.not_valid_after_utc)} "
            f"({days_left(cert, now)} days left)")
