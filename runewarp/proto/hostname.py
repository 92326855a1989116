"""Canonical form of the DNS names used as routing keys.

Routes are looked up by the SNI a client sends and by names from the
configuration, so both must be reduced to one spelling before they are
compared: otherwise "App.Example.com." and "app.example.com" would be two
different routes. Anything that is not a plain LDH hostname (IP literals,
Unicode, underscores) is refused rather than guessed at, because a routing key
that means different things to different components is a security hole.

A configured name may also be a wildcard pattern, `*.` and a hostname of at
least two labels (RFC 6125 style): the `*` is the whole first label and stands
for exactly one label, so `*.example.com` covers `a.example.com` but neither
`example.com` nor `b.a.example.com`.  An SNI is never a pattern (`normalize`
refuses `*` unless `wildcard=True`), so a lookup probes the SNI itself, then
`wildcard_over(sni)`: one more dictionary probe, never a scan.
"""

import re

from ..errors import ConfigError

__all__ = ["HostnameError", "covers", "is_valid", "is_wildcard", "normalize", "wildcard_over"]

MAX_LENGTH = 253
MAX_LABEL = 63

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_WHITESPACE = re.compile(r"\s")


class HostnameError(ConfigError, ValueError):
    """A string that is not usable as a routing hostname; the message says why.

    A ConfigError, because a hostname comes from a config file or the command line
    (an invalid SNI is turned into a rejection where it is read); still a ValueError
    for callers that validate names with ``except ValueError`` (the ACME plugin)."""


WILDCARD = "*."
_BAD_WILDCARD = "{name!r}: a wildcard is '*.' and a hostname, like *.example.com (the '*' is the whole first label)"


def normalize(name: str, wildcard: bool = False) -> str:
    """Return the canonical (lowercase, no trailing dot) form of `name`.

    With `wildcard`, `*.` and a hostname of two labels or more is a pattern too
    (configured Public hostnames); an SNI or a Server hostname never is.
    Raises HostnameError naming the first problem found.
    """
    if wildcard and isinstance(name, str) and name.startswith(WILDCARD):
        return WILDCARD + _wildcard_base(name)
    if not isinstance(name, str):
        raise TypeError(f"hostname must be str, not {type(name).__name__}")
    if not name:
        raise HostnameError("empty hostname")
    if not name.isascii():
        raise HostnameError(f"{name!r}: non-ASCII characters (use the punycode xn-- form)")
    if _WHITESPACE.search(name):
        raise HostnameError(f"{name!r}: contains whitespace")
    if ":" in name or "[" in name or "]" in name:
        raise HostnameError(f"{name!r}: IP literals are not hostnames")
    if "*" in name:
        raise HostnameError(f"{name!r}: wildcards are not allowed here" if not wildcard else
                            _BAD_WILDCARD.format(name=name))
    if "_" in name:
        raise HostnameError(f"{name!r}: underscores are not allowed")

    canonical = name.lower()
    if canonical.endswith("."):
        canonical = canonical[:-1]
    if not canonical:
        raise HostnameError(f"{name!r}: no labels")
    if len(canonical) > MAX_LENGTH:
        raise HostnameError(f"{name!r}: longer than {MAX_LENGTH} characters")

    labels = canonical.split(".")
    for label in labels:
        if not label:
            raise HostnameError(f"{name!r}: empty label")
        if len(label) > MAX_LABEL:
            raise HostnameError(f"{name!r}: label {label[:16]!r}... longer than {MAX_LABEL} characters")
        if label.startswith("-") or label.endswith("-"):
            raise HostnameError(f"{name!r}: label {label!r} starts or ends with '-'")
        if not _LABEL.fullmatch(label):
            raise HostnameError(f"{name!r}: label {label!r} has characters other than a-z, 0-9 and '-'")
    if labels[-1].isdigit():
        raise HostnameError(f"{name!r}: all-numeric last label looks like an IP address")
    return canonical


def _wildcard_base(name: str) -> str:
    """The normalized hostname after `*.`, which must have two labels or more."""
    if "*" in name[len(WILDCARD):]:
        raise HostnameError(_BAD_WILDCARD.format(name=name))
    try:
        base = normalize(name[len(WILDCARD):])
    except HostnameError as e:
        raise HostnameError(f"{name!r}: after '*.': {e}") from None
    if "." not in base:
        raise HostnameError(f"{name!r}: a wildcard needs a hostname of at least two labels after "
                            "'*.', like *.example.com")
    if len(WILDCARD) + len(base) > MAX_LENGTH:
        raise HostnameError(f"{name!r}: longer than {MAX_LENGTH} characters")
    return base


def is_wildcard(name: str) -> bool:
    """True for a normalized wildcard pattern (`*.example.com`)."""
    return name.startswith(WILDCARD)


def wildcard_over(hostname: str) -> str | None:
    """The one wildcard pattern that covers the normalized `hostname`, or None when no
    pattern can (a name of fewer than three labels: `*.com` is not a pattern)."""
    _, dot, base = hostname.partition(".")
    if not dot or "." not in base:
        return None
    return WILDCARD + base


def sample_name(pattern: str) -> str:
    """A hostname `pattern` takes, to probe it with (DNS, SNI): itself, or one label under
    a wildcard."""
    return f"wildcard-probe.{pattern[len(WILDCARD):]}" if is_wildcard(pattern) else pattern


def covers(pattern: str, hostname: str) -> bool:
    """The normalized `pattern` (a hostname or a wildcard) takes the normalized `hostname`."""
    return pattern == hostname or (is_wildcard(pattern) and wildcard_over(hostname) == pattern)


def is_valid(name: object) -> bool:
    """True when `normalize(name)` would succeed."""
    if not isinstance(name, str):
        return False
    try:
        normalize(name)
    except HostnameError:
        return False
    return True
