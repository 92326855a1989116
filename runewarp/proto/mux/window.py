"""Per-stream flow-control state and the receive-window policy, sans-I/O.

Flow control.  Each direction of each stream has a window, 256 KiB at first.
The sender never sends more than its credit; the receiver counts every byte
as *buffered* (received, not yet reported by `consumed()`) and then *unacked*
(consumed, credit not yet returned).  The peer's remaining credit is always
`window - buffered - unacked`, so a peer that overruns it is caught exactly,
and from a data frame's header alone, before its payload is buffered.

Window growth.  When consumption makes the un-granted amount reach half the
current window, a window update returns it.  If at that moment nothing is left
buffered (the application keeps up with the link), the window doubles, up to
`max_window`, and the extra rides in the same update: a fast reader quickly
gets a window that covers the link's bandwidth-delay product.  If bytes are
still buffered, and were all along since the previous update, the reader is
falling behind: the window shrinks toward `initial_window` by as much as is
buffered, by returning that much less credit than was consumed, so the
invariant stays exact.  (A reader that keeps up but consumes chunk by chunk
empties its buffer after each batch, so it is not mistaken for a slow one.)

Growth beyond the protocol's 256 KiB is taken from a WindowBudget, normally
one per process, and goes back when the window shrinks, when credit dies with
the peer's FIN or the bytes after it are consumed, and when the stream or the
session goes.  A reader that stalls for good pins at most its window, and all
streams together at most 256 KiB each plus the budget.  No deadlock: with
nothing buffered the peer holds more than half the window (an update is due
once half is unacked), and no window shrinks below 256 KiB.
"""

from .budget import WindowBudget
from .frames import INITIAL_WINDOW


class StreamState:
    """One stream's state; plain mutable slots because it changes on every frame."""

    __slots__ = ("send_credit", "recv_window", "recv_credit", "buffered", "unacked",
                 "caught_up", "local_closed", "remote_closed", "ours", "acked")

    def __init__(self, window: int, ours: bool):
        self.send_credit = INITIAL_WINDOW
        self.recv_window = window
        self.recv_credit = window
        self.buffered = 0
        self.unacked = 0
        self.caught_up = True  # the reader emptied its buffer since our last window update
        self.local_closed = False
        self.remote_closed = False
        self.ours = ours
        self.acked = False


class ReceiveWindows:
    """The receive-window policy of one session; growth comes from `budget`."""

    __slots__ = ("budget", "initial_window", "max_window")

    def __init__(self, budget: WindowBudget, initial_window: int, max_window: int):
        self.budget = budget
        self.initial_window = initial_window
        self.max_window = max_window

    def new_stream(self, ours: bool) -> StreamState:
        """A stream with as much of `initial_window` as the budget grants."""
        return StreamState(INITIAL_WINDOW + self.budget.take(self.initial_window - INITIAL_WINDOW), ours)

    def consumed(self, stream: StreamState, n: int) -> int:
        """Account `n` delivered bytes (0 < n <= buffered); returns the credit to grant now, or 0."""
        stream.buffered = buffered = stream.buffered - n
        if not buffered:
            stream.caught_up = True
        unacked = stream.unacked + n
        window = stream.recv_window
        if stream.remote_closed:
            # The peer sends nothing more: no update, and no growth to keep for it.
            stream.unacked = unacked - self._shrink(stream, unacked)
            return 0
        if unacked * 2 < window:
            stream.unacked = unacked
            return 0
        if not buffered:
            if window < self.max_window:
                extra = self.budget.take(min(window, self.max_window - window))
                stream.recv_window = window + extra
                unacked += extra
        elif not stream.caught_up:
            # Behind all period: grant back less than it took.  buffered <= window/2 <= unacked
            # here, so the update never goes negative and the peer keeps window - buffered.
            unacked -= self._shrink(stream, buffered)
        stream.caught_up = not buffered
        stream.unacked = 0
        stream.recv_credit += unacked
        return unacked

    def peer_finished(self, stream: StreamState) -> None:
        """The peer sent FIN: credit it did not use is dead, so is the growth it covered."""
        stream.recv_credit -= self._shrink(stream, stream.recv_credit)

    def release(self, streams) -> None:
        """The streams are gone: all their growth goes back to the budget."""
        growth = sum(stream.recv_window - INITIAL_WINDOW for stream in streams)
        if growth:
            self.budget.give(growth)

    def _shrink(self, stream: StreamState, wanted: int) -> int:
        """Give back up to `wanted` bytes of window above `initial_window`; returns how many."""
        n = min(wanted, stream.recv_window - self.initial_window)
        if n <= 0:
            return 0
        stream.recv_window -= n
        self.budget.give(n)
        return n
