"""Reconnect backoff: full jitter over a fixed window sequence (protocol.md).

The random draw is passed in, so the schedule is testable without a clock or RNG.
"""

WINDOWS = (1, 2, 3, 5, 8, 12, 18, 27, 41, 60)


class Backoff:
    def __init__(self, windows=WINDOWS):
        self.windows = windows
        self.attempt = 0

    def reset(self):
        """An authenticated connection starts the sequence again."""
        self.attempt = 0

    def next_window(self) -> int:
        window = self.windows[min(self.attempt, len(self.windows) - 1)]
        self.attempt += 1
        return window

    def next_delay(self, uniform) -> float:
        """`uniform(a, b)` is random.uniform or a test double."""
        return uniform(0, self.next_window())
