"""The Server's QUIC flow table: which datagram belongs to which flow (docs/quic.md).

A flow is keyed by the Visitor's address (the public UDP socket is the other half of
the 4-tuple).  A datagram from a known address follows its flow.  From an unknown
address, only a client Initial may start a flow: it becomes *pending*, with an
InitialReader of its own, until the ClientHello is complete (then `Routable`: the
I/O layer routes it with every datagram held so far), fails (`Dropped`), or
outlives its deadline.  Pending flows are few, small and short-lived, so a flood of
Initial-looking garbage costs bounded memory; nothing here answers a Visitor.

A short-header datagram from an unknown address may belong to a flow whose Visitor
moved (connection migration): its Destination Connection ID is compared with the
server connection IDs learned from the long-header packets the Client side sent
back (`learn`); on a match the flow follows the new address.

Sans-I/O: the clock is the `now` passed in; the I/O layer keeps sockets and streams,
and hangs its own state on `Flow.handle`.
"""

from collections import OrderedDict
from dataclasses import dataclass

from .clienthello import ClientHello
from .quic import VERSION_1, VERSION_2, InitialReader, QuicDropped, first_header

__all__ = [
    "MAX_CIDS",
    "MAX_HELD",
    "MAX_HELD_BYTES",
    "MAX_PENDING",
    "PENDING_DEADLINE",
    "Dropped",
    "Expired",
    "Flow",
    "FlowTable",
    "Forward",
    "Held",
    "Routable",
]

MAX_PENDING = 256
"""Pending flows at once; an Initial from a new address beyond it is dropped."""
PENDING_DEADLINE = 3.0
"""Seconds a pending flow may take to complete its ClientHello."""
MAX_HELD = 16
"""Datagrams a pending flow holds (the Initials of a ClientHello, 0-RTT packets)."""
MAX_HELD_BYTES = 32 * 1024
"""Bytes a pending flow holds: 16 full-size (1500-byte path) datagrams and then some."""
MAX_CIDS = 4
MIN_CID = 8
"""Shortest server connection ID followed for migration (a shorter one is too easy to hit)."""
"""Server connection IDs remembered per flow (a QUIC server sends one in its long headers)."""

VERSIONS = (VERSION_1, VERSION_2)
PENDING = "pending"
OPEN = "open"


class Flow:
    """One Visitor's flow: `peer` is its current address, `state` PENDING or OPEN."""

    __slots__ = ("peer", "state", "reader", "held", "held_bytes", "deadline", "idle_timeout",
                 "last", "cids", "handle", "version", "dcid")

    def __init__(self, peer, reader, now, deadline, idle_timeout):
        self.peer = peer
        self.state = PENDING
        self.reader = reader
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.deadline = deadline
        self.idle_timeout = idle_timeout  # the value when the flow started (a reload: new flows)
        self.last = now  # the last datagram either way
        self.cids: list[bytes] = []
        self.handle = None  # the I/O layer's
        self.version = None  # the QUIC version and the client's first DCID, once OPEN
        self.dcid = None


@dataclass(frozen=True, slots=True)
class Forward:
    """A datagram of an open flow; `migrated`: the flow's `peer` just changed to its sender."""

    flow: Flow
    datagram: bytes
    migrated: bool = False


@dataclass(frozen=True, slots=True)
class Held:
    """A datagram held by a pending flow whose ClientHello is not complete yet."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class Routable:
    """A pending flow's ClientHello is complete: route it, then send `datagrams` (every one
    held, in arrival order).  The flow is OPEN from now on; `forget` it if routing fails."""

    flow: Flow
    hello: ClientHello
    datagrams: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A datagram dropped for `reason`; `flow` is the pending flow it ended, if any."""

    reason: str
    flow: Flow | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    """A flow `expire` removed: "pending-expired" (no ClientHello in time) or "idle"."""

    reason: str
    flow: Flow


class FlowTable:
    """Every flow of one public UDP socket.  `idle_timeout` applies to flows started after
    it is set (a reload); `new_reader()` makes a pending flow's InitialReader."""

    def __init__(self, idle_timeout, *, max_pending=MAX_PENDING, pending_deadline=PENDING_DEADLINE,
                 max_held=MAX_HELD, max_held_bytes=MAX_HELD_BYTES, new_reader=InitialReader):
        self.idle_timeout = idle_timeout
        self.max_pending = max_pending
        self.pending_deadline = pending_deadline
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.new_reader = new_reader
        self.flows: dict[object, Flow] = {}  # by peer address, pending and open
        self.pending: OrderedDict[object, Flow] = OrderedDict()  # oldest first: deadlines in order
        self.by_cid: dict[bytes, Flow] = {}
        self.cid_lengths: dict[int, int] = {}  # length -> how many learned CIDs have it

    @property
    def open_flows(self) -> int:
        return len(self.flows) - len(self.pending)

    def receive(self, peer, datagram: bytes, now: float):
        """A datagram from the Visitor at `peer`: Forward, Held, Routable or Dropped."""
        if not datagram:
            return Dropped("malformed")  # never framed: an empty frame is a protocol error
        flow = self.flows.get(peer)
        if flow is not None:
            if flow.state is OPEN:
                if datagram[0] & 0x80 and self._other_connection(flow, datagram):
                    return Dropped("other-connection")
                flow.last = now
                return Forward(flow, datagram)
            return self._pending_datagram(flow, datagram)
        try:
            header = first_header(datagram)
        except QuicDropped as exc:
            return Dropped(exc.reason)
        if header is None:
            return self._migrated(peer, datagram, now)
        if header.version not in VERSIONS:
            return Dropped("unsupported-version")
        if not header.initial:
            return Dropped("not-initial")
        if len(self.pending) >= self.max_pending:
            return Dropped("pending-full")
        flow = Flow(peer, self.new_reader(), now, now + self.pending_deadline, self.idle_timeout)
        self.flows[peer] = self.pending[peer] = flow
        outcome = self._pending_datagram(flow, datagram, header)
        if flow.state is PENDING and not flow.held:
            # Its reader took nothing (it did not decrypt): no slot for it, or a flood of such
            # datagrams from ever new ports would keep the pending table full for its deadline.
            self.forget(flow)
        return outcome

    def _pending_datagram(self, flow, datagram, header=None):
        """Feed an Initial to the flow's reader; hold it, and any other long-header packet."""
        if header is None:
            try:
                header = first_header(datagram)
            except QuicDropped as exc:
                return Dropped(exc.reason)  # not this flow's: the flow is unharmed
            if header is None:
                return Dropped("short-header")  # no 1-RTT before the handshake
            if header.version not in VERSIONS:
                return Dropped("unsupported-version")
        if len(flow.held) >= self.max_held or flow.held_bytes + len(datagram) > self.max_held_bytes:
            return self._end_pending(flow, "too-large")
        hello = None
        if header.initial:
            try:
                hello = flow.reader.feed(datagram)
            except QuicDropped as exc:
                if exc.fatal:
                    return self._end_pending(flow, exc.reason)
                return Dropped(exc.reason)
        flow.held.append(datagram)
        flow.held_bytes += len(datagram)
        if hello is None:
            return Held(flow)
        del self.pending[flow.peer]
        flow.version, flow.dcid = flow.reader.version, flow.reader.dcid
        held, flow.held, flow.held_bytes, flow.reader = tuple(flow.held), [], 0, None
        flow.state = OPEN
        return Routable(flow, hello, held)

    def _end_pending(self, flow, reason):
        self.forget(flow)
        return Dropped(reason, flow)

    def _migrated(self, peer, datagram, now):
        """A short header from an unknown address: its flow if the DCID is a known server CID."""
        for length in self.cid_lengths:
            flow = self.by_cid.get(bytes(datagram[1:1 + length]))
            if flow is not None and len(datagram) > length and self.flows.get(flow.peer) is flow:
                del self.flows[flow.peer]
                flow.peer = peer
                self.flows[peer] = flow
                flow.last = now
                return Forward(flow, datagram, migrated=True)
        return Dropped("short-header")

    def learn(self, flow: Flow, datagram: bytes, now: float) -> None:
        """A datagram the Client side sent to the Visitor of `flow`: it counts as activity,
        and a long header's Source Connection ID is a server CID a migrated Visitor uses."""
        if self.flows.get(flow.peer) is not flow:
            return  # it ended: nothing of it may be learned after `forget`
        flow.last = now
        if not datagram or not datagram[0] & 0x80 or flow.state is not OPEN:
            return
        try:
            header = first_header(datagram)
        except QuicDropped:
            return
        scid = header.scid
        # Only CIDs of the flow's own version and of the length a server may choose for a
        # client to echo (8..20 bytes): a short or odd-version "CID" from a Client would match
        # the first bytes of other Visitors' short headers and pull their migrations in.
        if (header.version != flow.version or not MIN_CID <= len(scid) <= 20
                or scid in flow.cids or len(flow.cids) >= MAX_CIDS or scid in self.by_cid):
            return
        flow.cids.append(scid)
        self.by_cid[scid] = flow
        self.cid_lengths[len(scid)] = self.cid_lengths.get(len(scid), 0) + 1

    def _other_connection(self, flow, datagram) -> bool:
        """A client Initial for another QUIC connection from the same address (a client that
        reuses its port): never the open flow's, which may belong to another Tunnel."""
        try:
            header = first_header(datagram)
        except QuicDropped:
            return False
        return (header is not None and header.initial and header.dcid != flow.dcid
                and header.dcid not in flow.cids)

    def forget(self, flow: Flow) -> None:
        """Remove `flow` and its CIDs (it ended, or routing refused it)."""
        if self.flows.get(flow.peer) is flow:
            del self.flows[flow.peer]
        if self.pending.get(flow.peer) is flow:
            del self.pending[flow.peer]
        for cid in flow.cids:
            del self.by_cid[cid]
            left = self.cid_lengths[len(cid)] - 1
            if left:
                self.cid_lengths[len(cid)] = left
            else:
                del self.cid_lengths[len(cid)]
        flow.cids = []
        flow.held, flow.held_bytes, flow.reader = [], 0, None

    def expire(self, now: float) -> list[Expired]:
        """Remove pending flows past their deadline and open flows idle for their
        idle timeout: what was removed."""
        expired = []
        while self.pending:
            flow = next(iter(self.pending.values()))
            if flow.deadline > now:
                break
            self.forget(flow)
            expired.append(Expired("pending-expired", flow))
        for flow in [f for f in self.flows.values() if f.state is OPEN and now - f.last >= f.idle_timeout]:
            self.forget(flow)
            expired.append(Expired("idle", flow))
        return expired
