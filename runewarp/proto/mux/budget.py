"""A pool of receive-window growth shared by streams and sessions, sans-I/O.

Every stream may always receive the protocol's 256 KiB; each byte of window
beyond that is memory a peer can fill while our reader stalls, so it is taken
from one budget and given back when the window shrinks or the stream goes.
One budget per process bounds what all Tunnel connections together can pin
beyond 256 KiB per stream.  Not thread-safe; gevent greenlets need no lock.
"""


class WindowBudget:
    """`total` bytes of window growth; `take()` grants what is left, `give()` returns it."""

    __slots__ = ("total", "available")

    def __init__(self, total: int):
        if total < 0:
            raise ValueError("window budget must not be negative")
        self.total = total
        self.available = total

    @property
    def in_use(self) -> int:
        return self.total - self.available

    def take(self, wanted: int) -> int:
        """Grant up to `wanted` bytes (less, or 0, when the budget runs low)."""
        granted = min(wanted, self.available)
        if granted <= 0:
            return 0
        self.available -= granted
        return granted

    def give(self, n: int) -> None:
        """Return `n` granted bytes.  More than was taken is an accounting bug."""
        available = self.available + n
        if n < 0 or available > self.total:
            raise ValueError(f"returned {n} bytes of window growth, more than was taken")
        self.available = available
