"""Retry before the first byte: which failed streams a Visitor may be placed again after,
and the bytes held for the replay.  Sans-I/O: time only enters through `now`.

A replay is safe only when the first attempt cannot have had an effect on a Local
backend: the Client says so (its reset carries RESET_BEFORE_BACKEND), or its Tunnel
connection closed while the Visitor had sent nothing but its ClientHello (a backend
that saw a ClientHello alone has done nothing a second one repeats).  Once a byte
came back from the Client side, nothing is replayed (docs/protocol.md).
"""

from .mux import RESET_BEFORE_BACKEND

CONNECTION_CLOSED = -1  # a stream's reset code when its Tunnel connection closed under it


def retry_reason(reset_code, hello_only):
    """Why a stream reset before its first byte back may be placed again, or None."""
    if reset_code == RESET_BEFORE_BACKEND:
        return "failed-before-backend-data"
    if reset_code == CONNECTION_CLOSED and hello_only:
        return "tunnel-connection-closed"
    return None


class Held:
    """The Visitor's bytes sent on the stream so far: the envelope (PROXY header and
    intake bytes) and what followed, kept as the very bytes objects sent, until
    `drop()`.  Past `limit` bytes nothing is held any more, and no retry follows."""

    __slots__ = ("chunks", "size", "hello_only", "_held", "_limit")

    def __init__(self, envelope, visitor_bytes, hello_only, limit):
        self.chunks = [envelope]
        self.size = visitor_bytes  # every Visitor byte sent, held or not (for the counters)
        self.hello_only = hello_only  # nothing but the ClientHello so far
        self._held = len(envelope)
        self._limit = limit
        if self._held > limit:  # a ClientHello bigger than retry-buffer: never retried
            self.chunks = None

    def add(self, data):
        """`data` was sent on after the envelope; False once the bytes are no longer held."""
        self.size += len(data)
        self.hello_only = False
        if self.chunks is None:
            return False
        self._held += len(data)
        if self._held > self._limit:
            self.chunks = None
            return False
        self.chunks.append(data)
        return True

    def drop(self):
        self.chunks = None


class Retries:
    """At most `budget` retries for one Visitor, none at or after `deadline`."""

    __slots__ = ("budget", "deadline", "tried")

    def __init__(self, budget, deadline):
        self.budget = budget
        self.deadline = deadline
        self.tried = []

    def possible(self, held, now):
        """A retry could still follow: budget left, bytes held, before the deadline."""
        return self.budget > len(self.tried) and held.chunks is not None and now < self.deadline

    def failed(self, member):
        """`member` failed the Visitor: the members placement must now skip."""
        self.tried.append(member)
        return self.tried
