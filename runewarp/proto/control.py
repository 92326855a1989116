"""Control stream codec: newline-delimited JSON objects on mux stream 1.

Unknown message types (and unknown fields) are passed through so the runtime
can ignore them; that is what keeps the control channel forward compatible.

Every line comes from the peer, so it is bounded before it is decoded: length
(MAX_LINE), nesting depth (MAX_DEPTH, checked by a linear scan because
json.loads recurses and a line of 30 000 brackets raises RecursionError), and
the JSON itself is strict (UTF-8, no NaN/Infinity).  Whatever goes wrong ends
as ControlError, never as another exception that would kill a worker.  The
fields we read are then checked by `parse_hello` / `parse_welcome`.
"""

import json
import re
from dataclasses import dataclass

from ..errors import ControlError as ControlError  # re-exported: raised here
from .hostname import is_wildcard, wildcard_over

MAX_LINE = 64 * 1024
# Our messages are flat objects holding at most one list of strings (depth 2);
# 4 leaves room for later message types without letting a peer near the stack.
MAX_DEPTH = 4
MAX_VERSION = 64
MAX_INSTANCE = 64
MAX_TUNNEL = 253
MAX_HOSTNAMES = 10_000
MAX_HOSTNAME = 253
MAX_WORKERS = 64  # a Server's `workers`, as its welcome may state it


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def hello(version, instance, hostnames, catch_all):
    return {"type": "hello", "version": version, "instance": instance,
            "hostnames": list(hostnames), "catch_all": catch_all}


def service_health(unhealthy=(), healthy=(), catch_all=None):
    """The Services whose health changed, by their hostnames; `catch_all`: "unhealthy" or
    "healthy" when the Catch-all Service changed (None leaves the field out)."""
    message = {"type": "service-health", "unhealthy": sorted(unhealthy),
               "healthy": sorted(healthy)}
    if catch_all is not None:
        message["catch_all"] = catch_all
    return message


def welcome(tunnel, version, public_hostnames=None, worker=(0, 1)):
    """`public_hostnames`: the Tunnel's, sent sorted; None leaves the field out, as a
    Server from before the field did.  `worker`: (index, count) of the Server worker
    process holding this connection; a single process (0, 1) leaves both fields out, so
    the line is what it always was."""
    message = {"type": "welcome", "tunnel": tunnel, "version": version}
    if public_hostnames is not None:
        message["public_hostnames"] = sorted(public_hostnames)
    if tuple(worker) != (0, 1):
        message["worker"], message["workers"] = worker
    return message


# Outside strings only brackets and quotes matter; inside, quotes and backslashes.
_SIGNIFICANT = re.compile(rb'[\[\]{}"\\]')
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


def _check_depth(line: bytes, max_depth: int) -> None:
    """Reject nesting deeper than `max_depth` in one pass, before json.loads recurses.

    Tracks string and escape state so brackets inside strings do not count.  Malformed
    JSON that passes this scan is json.loads' to reject; the scan only has to make
    sure the nesting json.loads will see is shallow.
    """
    depth = 0
    in_string = False
    skip_to = 0  # the character after a backslash is escaped, whatever it is
    for match in _SIGNIFICANT.finditer(line):
        at = match.start()
        if at < skip_to:
            continue
        c = line[at]
        if in_string:
            if c == _BACKSLASH:
                skip_to = at + 2
            elif c == _QUOTE:
                in_string = False
        elif c == _QUOTE:
            in_string = True
        elif c in _OPEN:
            depth += 1
            if depth > max_depth:
                raise ControlError(f"control line nested deeper than {max_depth} levels")
        elif c in _CLOSE:
            depth -= 1


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode_line(line: bytes, max_depth: int = MAX_DEPTH) -> dict:
    """One control line (without its newline) as a message dict, or ControlError."""
    _check_depth(line, max_depth)
    try:
        message = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers beyond Python's digit limit.
        raise ControlError(f"control line is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ControlError("control message is not an object with a type")
    return message


class LineDecoder:
    """Feed bytes, get complete messages; bounded so a peer cannot grow it without end."""

    def __init__(self, max_line=MAX_LINE, max_depth=MAX_DEPTH):
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline: tiny feeds stay linear
        self.max_line = max_line
        self.max_depth = max_depth

    def feed(self, data) -> list[dict]:
        self._buf += data
        messages = []
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self.max_line:
                    raise ControlError("control line too long")
                return messages
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            self._scanned = 0
            if len(line) > self.max_line:
                raise ControlError("control line too long")
            messages.append(decode_line(line, self.max_depth))


# --------------------------------------------------------------------------
# Typed messages: every field we read is checked here, so nothing downstream
# has to guess at what a peer sent.


@dataclass(frozen=True)
class Hello:
    """The Client's first control message."""

    version: str
    instance: str
    hostnames: tuple[str, ...]
    catch_all: bool


@dataclass(frozen=True)
class Welcome:
    """The Server's answer to an accepted hello.

    `public_hostnames` is None from a Server that predates the field: Hostname
    mirroring then cannot be checked from the Client side.
    """

    tunnel: str
    version: str
    public_hostnames: tuple[str, ...] | None = None
    worker: int = 0  # which of the Server's `workers` processes holds the connection
    workers: int = 1  # absent (a single process, or a Server from before workers): 0 of 1


@dataclass(frozen=True)
class ServiceHealthChange:
    """A Client's `service-health`: hostnames whose Service became unhealthy or healthy;
    `catch_all_unhealthy` is None (unchanged), True (became unhealthy) or False (healthy)."""

    unhealthy: tuple[str, ...]
    healthy: tuple[str, ...]
    catch_all_unhealthy: bool | None = None


HEALTH_STATES = ("unhealthy", "healthy")


def _expect_type(message, expected):
    if not isinstance(message, dict) or message.get("type") != expected:
        got = message.get("type") if isinstance(message, dict) else type(message).__name__
        raise ControlError(f"control message type: expected {expected!r}, got {got!r:.80}")


def _field(message, kind, name):
    if name not in message:
        raise ControlError(f"{kind}: missing field {name!r}")
    return message[name]


def _string(message, kind, name, max_len):
    value = _field(message, kind, name)
    if not isinstance(value, str):
        raise ControlError(f"{kind}: field {name!r} must be a string, "
                           f"got {type(value).__name__}")
    if len(value) > max_len:
        raise ControlError(f"{kind}: field {name!r} longer than {max_len} characters")
    return value


def _hostnames(message, kind, name):
    """A bounded list of bounded strings, as a tuple."""
    hostnames = _field(message, kind, name)
    if not isinstance(hostnames, list):
        raise ControlError(f"{kind}: field {name!r} must be a list, "
                           f"got {type(hostnames).__name__}")
    if len(hostnames) > MAX_HOSTNAMES:
        raise ControlError(f"{kind}: field {name!r} has more than {MAX_HOSTNAMES} entries")
    for h in hostnames:
        if not isinstance(h, str) or len(h) > MAX_HOSTNAME:
            raise ControlError(f"{kind}: field {name!r} must hold strings of at most "
                               f"{MAX_HOSTNAME} characters")
    return tuple(hostnames)


def parse_hello(message: dict) -> Hello:
    """Check a decoded hello; ControlError names the first field that is missing or wrong."""
    _expect_type(message, "hello")
    version = _string(message, "hello", "version", MAX_VERSION)
    instance = _string(message, "hello", "instance", MAX_INSTANCE)
    hostnames = _hostnames(message, "hello", "hostnames")
    catch_all = _field(message, "hello", "catch_all")
    if not isinstance(catch_all, bool):
        raise ControlError(f"hello: field 'catch_all' must be true or false, "
                           f"got {type(catch_all).__name__}")
    return Hello(version, instance, hostnames, catch_all)


def parse_service_health(message: dict) -> ServiceHealthChange:
    """Check a decoded service-health; ControlError names the first field that is wrong."""
    _expect_type(message, "service-health")
    catch_all = message.get("catch_all")
    if catch_all is not None and catch_all not in HEALTH_STATES:
        raise ControlError("service-health: field 'catch_all' must be \"unhealthy\" or "
                           "\"healthy\"")
    return ServiceHealthChange(_hostnames(message, "service-health", "unhealthy"),
                               _hostnames(message, "service-health", "healthy"),
                               None if catch_all is None else catch_all == "unhealthy")


def parse_welcome(message: dict) -> Welcome:
    """Check a decoded welcome; ControlError names the first field that is missing or wrong."""
    _expect_type(message, "welcome")
    hostnames = (_hostnames(message, "welcome", "public_hostnames")
                 if "public_hostnames" in message else None)
    worker, workers = _worker(message)
    return Welcome(_string(message, "welcome", "tunnel", MAX_TUNNEL),
                   _string(message, "welcome", "version", MAX_VERSION), hostnames,
                   worker, workers)


def _worker(message):
    """The welcome's (worker, workers): both present with 0 <= worker < workers <= 64, or
    both absent (0, 1)."""
    if "worker" not in message and "workers" not in message:
        return 0, 1
    worker = _field(message, "welcome", "worker")
    workers = _field(message, "welcome", "workers")
    for name, value in (("worker", worker), ("workers", workers)):
        if type(value) is not int:  # bool is an int to isinstance
            raise ControlError(f"welcome: field {name!r} must be an integer, "
                               f"got {type(value).__name__}")
    if not 0 <= worker < workers <= MAX_WORKERS:
        raise ControlError(f"welcome: fields 'worker' and 'workers' must hold "
                           f"0 <= worker < workers <= {MAX_WORKERS}, got {worker} and {workers}")
    return worker, workers


def hostname_drift(tunnel_hostnames, client_hostnames, catch_all):
    """Hostname-mirroring drift between a Tunnel and the Client serving it.

    Returns (hostnames the Client cannot serve, Client hostnames the Tunnel does
    not own).  A Catch-all Client serves everything the Tunnel admits.  Either
    side may list wildcards: an exact name is served (or owned) when the other
    side lists it or the wildcard over it; a wildcard only when the other side
    lists the same wildcard (the names under it are not countable).
    """
    tunnel = set(tunnel_hostnames)
    client = set(client_hostnames)
    unserved = set() if catch_all else {h for h in tunnel if not _taken(h, client)}
    unowned = {h for h in client if not _taken(h, tunnel)}
    return sorted(unserved), sorted(unowned)


def _taken(name, names):
    return name in names or (not is_wildcard(name) and wildcard_over(name) in names)
