"""The message that passes a Visitor to another Server worker (`workers = N`).

A worker with no member for a Visitor's hostname sends the Visitor's socket
(SCM_RIGHTS, io/workerpass.py) to the next worker with this datagram: what the
receiver needs to place it as if it had accepted it.  The socket itself travels
beside the bytes, never in them.

    magic "RWP1" | hops u8 | accepted f64 (CLOCK_MONOTONIC, shared by the machine's
    processes) | family u8 (4 or 6) | source IP (4 or 16 bytes) | source port u16 |
    the bytes the accepting worker read (PROXY header excluded, ClientHello included)

The source is the Visitor's address after PROXY/trusted-proxies processing, so
the receiver never parses a PROXY header again.  A sender is another worker of
the same supervisor, but the datagram is still checked field by field: whatever
is wrong is a PassError, and the receiver closes the passed socket.
"""

import ipaddress
import math
import struct
from dataclasses import dataclass

MAGIC = b"RWP1"
_HEAD = struct.Struct(">4sBdB")
_PORT = struct.Struct(">H")
_IP_SIZES = {4: 4, 6: 16}
MAX_HOPS = 63  # workers <= 64 (proto/control.MAX_WORKERS): a Visitor visits each at most once
MAX_BUFFERED = 64 * 1024  # the intake holds at most 16 KiB of ClientHello, plus one read
MAX_MESSAGE = _HEAD.size + 16 + _PORT.size + MAX_BUFFERED


class PassError(ValueError):
    """A datagram that is not a pass message; `args[0]` says what is wrong."""


@dataclass(frozen=True)
class Pass:
    """One passed Visitor: its source (IP, port), the bytes read so far, when it was
    accepted (time.monotonic) and how many workers it has left behind."""

    source: tuple[str, int]
    buffered: bytes
    accepted: float
    hops: int


def encode(passed: Pass) -> bytes:
    ip = ipaddress.ip_address(passed.source[0])
    if not 0 < passed.hops <= MAX_HOPS:
        raise PassError(f"hops {passed.hops} outside 1..{MAX_HOPS}")
    if len(passed.buffered) > MAX_BUFFERED:
        raise PassError(f"{len(passed.buffered)} buffered bytes, more than {MAX_BUFFERED}")
    return b"".join((_HEAD.pack(MAGIC, passed.hops, passed.accepted, ip.version), ip.packed,
                     _PORT.pack(passed.source[1]), passed.buffered))


def decode(data: bytes) -> Pass:
    """The Pass in `data`, or PassError."""
    if len(data) < _HEAD.size:
        raise PassError(f"{len(data)} bytes, shorter than the {_HEAD.size}-byte head")
    magic, hops, accepted, family = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise PassError("not a pass message (magic)")
    if not 0 < hops <= MAX_HOPS:
        raise PassError(f"hops {hops} outside 1..{MAX_HOPS}")
    if not math.isfinite(accepted) or accepted < 0:
        raise PassError("accepted time is not a finite, non-negative number")
    size = _IP_SIZES.get(family)
    if size is None:
        raise PassError(f"address family {family}, not 4 or 6")
    at = _HEAD.size + size
    if len(data) < at + _PORT.size:
        raise PassError("truncated source address")
    ip = ipaddress.ip_address(bytes(data[_HEAD.size:at]))
    (port,) = _PORT.unpack_from(data, at)
    buffered = bytes(data[at + _PORT.size:])
    if len(buffered) > MAX_BUFFERED:
        raise PassError(f"{len(buffered)} buffered bytes, more than {MAX_BUFFERED}")
    return Pass((str(ip), port), buffered, accepted, hops)


def next_workers(index, count, hops):
    """The workers a Visitor at worker `index` that has made `hops` passes may go to next,
    nearest first: index+1, index+2, ... (mod count), as long as the pass that reaches
    them is at most count-1 hops from the accepting worker.  Each entry is (worker, hops
    on arrival); the sender tries them in order until one takes the socket (a worker not
    started yet is skipped)."""
    return [((index + step) % count, hops + step) for step in range(1, count - hops)]
