"""Datagrams over a mux stream: the 2-byte length framing and the bounded per-flow queue.

A QUIC flow crosses the Tunnel connection as one stream (docs/quic.md): the PROXY v2
header (transport DGRAM), then each datagram as a 2-byte big-endian length and the
datagram.  Both the Server and the Client use this one codec, so the two sides
cannot disagree on the framing.

UDP may lose datagrams and QUIC recovers from it; what a relay must never do is
buffer without bound or let one slow flow stall the others.  `DatagramQueue` keeps
a flow's datagrams waiting for the stream's send window and drops the oldest on
overflow, which is what a full network queue does.
"""

from collections import deque

from runewarp.errors import RemoteProtocolError

__all__ = [
    "MAX_DATAGRAM",
    "DatagramDecoder",
    "DatagramFramingError",
    "DatagramQueue",
    "frame",
    "frame_all",
]

MAX_DATAGRAM = 0xFFFF
"""Largest datagram the 2-byte length can carry (any IPv4 UDP payload fits)."""


class DatagramFramingError(RemoteProtocolError):
    """A datagram that cannot be framed, or a zero-length frame from the peer."""


def frame(datagram: bytes | bytearray | memoryview) -> bytes:
    """The datagram with its 2-byte length in front."""
    size = len(datagram)
    if not 0 < size <= MAX_DATAGRAM:
        raise DatagramFramingError(f"datagram of {size} bytes cannot be framed")
    return size.to_bytes(2) + bytes(datagram)


def frame_all(datagrams) -> bytes:
    """The datagrams framed back to back: one write for a whole batch."""
    return b"".join([frame(d) for d in datagrams])


class DatagramDecoder:
    """Splits a byte stream back into datagrams, however the stream was chunked.

    At most one partial frame (≤ 2 + MAX_DATAGRAM bytes) is buffered.  A zero length
    is refused: neither side ever frames an empty datagram, and accepting it would let
    a peer make the other side loop over empty frames.
    """

    def __init__(self):
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        datagrams = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            size = int.from_bytes(buffer[start:start + 2])
            if size == 0:
                raise DatagramFramingError("zero-length datagram frame")
            if end - start - 2 < size:
                break
            datagrams.append(bytes(buffer[start + 2:start + 2 + size]))
            start += 2 + size
        if start:
            del buffer[:start]
        return datagrams


class DatagramQueue:
    """A flow's datagrams waiting to be sent, bounded in count and bytes; oldest dropped."""

    def __init__(self, max_datagrams: int = 64, max_bytes: int = 128 * 1024):
        if max_datagrams < 1 or max_bytes < MAX_DATAGRAM:
            raise ValueError("a queue must hold at least one datagram of any size")
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self.size = 0  # bytes queued
        self.dropped = 0  # datagrams dropped on overflow, ever

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, datagram: bytes) -> int:
        """Queue `datagram`; how many older datagrams were dropped to make room."""
        queue = self._queue
        queue.append(datagram)
        self.size += len(datagram)
        dropped = 0
        while len(queue) > self.max_datagrams or self.size > self.max_bytes:
            self.size -= len(queue.popleft())
            dropped += 1
        self.dropped += dropped
        return dropped

    def take(self) -> list[bytes]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        taken = list(self._queue)
        self._queue.clear()
        self.size = 0
        return taken
