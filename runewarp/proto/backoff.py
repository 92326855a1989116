"""Reconnect backoff: full jitter over a fixed window sequence (protocol.md).

Sans-I/O: the random draw (`uniform`) and the times (`now`, seconds on any
monotonic clock) are passed in, so the schedule is tested with a fake clock and
a fake draw.

- Each failed attempt takes the next window in WINDOWS and waits
  `uniform(0, window)`; past the end, the last window repeats.
- An established connection starts the sequence again: when it ends, the first
  window comes next.
- A connection that stayed established for at least the largest window is
  retried at once when it ends, before the first window: after a Server restart
  the Client is back as soon as the Server is.
- A connection the Server ended with a go away (normal: it is stopping or handing
  over) is replaced at once, whatever its age: the Server said it is draining, not
  failing.  Only if that replacement fails does the sequence apply.
"""

WINDOWS = (1, 2, 3, 5, 8, 12, 18, 27, 41, 60)


class Backoff:
    def __init__(self, windows=WINDOWS):
        if not windows or min(windows) <= 0:
            raise ValueError("backoff windows must be positive numbers")
        self.windows = tuple(windows)
        self.largest = max(self.windows)
        self.attempt = 0  # windows used since the last established connection
        self.established_at = None

    def established(self, now):
        """A connection was authenticated (the Server's welcome) at `now`."""
        self.established_at = now
        self.attempt = 0

    def next_delay(self, uniform, now, went_away=False) -> float:
        """Seconds to wait before the next attempt, after a failure or a connection end at `now`.

        `uniform(a, b)` is random.uniform or a test double.  `went_away`: the connection
        that ended had received the Server's go away (normal).
        """
        since, self.established_at = self.established_at, None
        if since is not None and (went_away or now - since >= self.largest):
            return 0.0
        window = self.windows[min(self.attempt, len(self.windows) - 1)]
        self.attempt += 1
        return uniform(0, window)


def parse_windows(text):
    """RUNEWARP_RECONNECT_WINDOWS: "0.2,0.5,1" → (0.2, 0.5, 1.0); None when unusable."""
    try:
        windows = tuple(float(part) for part in text.split(","))
    except (AttributeError, ValueError):
        return None
    if not windows or not all(0 < w < float("inf") for w in windows):
        return None
    return windows
