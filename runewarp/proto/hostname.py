"""Canonical form of the DNS names used as routing keys.

Routes are looked up by the SNI a client sends and by names from the
configuration, so both must be reduced to one spelling before they are
compared: otherwise "App.Example.com." and "app.example.com" would be two
different routes. Anything that is not a plain LDH hostname (IP literals,
wildcards, Unicode, underscores) is refused rather than guessed at, because a
routing key that means different things to different components is a
security hole.
"""

import re

from ..errors import ConfigError

__all__ = ["HostnameError", "is_valid", "normalize"]

MAX_LENGTH = 253
MAX_LABEL = 63

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_WHITESPACE = re.compile(r"\s")


class HostnameError(ConfigError, ValueError):
    """A string that is not usable as a routing hostname; the message says why.

    A ConfigError, because a hostname comes from a config file or the command line
    (an invalid SNI is turned into a rejection where it is read); still a ValueError
    for callers that validate names with ``except ValueError`` (the ACME plugin)."""


def normalize(name: str) -> str:
    """Return the canonical (lowercase, no trailing dot) form of `name`.

    Raises HostnameError naming the first problem found.
    """
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
        raise HostnameError(f"{name!r}: wildcards are not allowed")
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


def is_valid(name: object) -> bool:
    """True when `normalize(name)` would succeed."""
    if not isinstance(name, str):
        return False
    try:
        normalize(name)
    except HostnameError:
        return False
    return True
