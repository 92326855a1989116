"""The session's outbound queue: frames in wire order, and the bound on replies.

Frames are queued as separate pieces (headers, payload views) and joined once
by `take()`: on the data path every extra copy of a 64 KiB frame shows up in
the profile.  Replies (ping and SYN ACKs, RSTs the peer's frames call for) are
counted apart, so a peer that keeps sending them but never reads cannot grow
the queue beyond `max_reply_backlog` bytes between two `take()`s; our own data
is bounded by the driver, which stops sending while `pending` is high.
`owed` holds the ACKs of the peer's streams until the session queues them
(before its first frame on that stream, or on a timer tick).
"""


class Outbound:
    __slots__ = ("max_reply_backlog", "_pieces", "pending", "_reply_backlog", "owed")

    def __init__(self, max_reply_backlog: int):
        self.max_reply_backlog = max_reply_backlog
        self._pieces: list = []
        self.pending = 0  # bytes queued
        self._reply_backlog = 0  # bytes of replies queued since the last take()
        self.owed: dict[int, bytes] = {}  # stream id -> its ACK frame, not queued yet

    def emit(self, piece) -> None:
        self._pieces.append(piece)
        self.pending += len(piece)

    def reply(self, piece) -> bool:
        """Queue a reply; False (nothing queued) when it would exceed the backlog bound."""
        backlog = self._reply_backlog + len(piece)
        if backlog > self.max_reply_backlog:
            return False
        self._reply_backlog = backlog
        self.emit(piece)
        return True

    def take(self) -> bytes:
        """Every queued byte, joined once (b"" if none); the queue is emptied."""
        if not self._pieces:
            return b""
        data = b"".join(self._pieces)
        self._pieces = []
        self.pending = 0
        self._reply_backlog = 0
        return data
