"""Admission slots for work that an unauthenticated peer can hold open.

Used twice on the Server: for Visitor intake (reading the ClientHello) and for
Tunnel TLS handshakes.  Both are cheap for an attacker to start and slow to
finish, so a plain global cap lets a few addresses trickling one byte a second
fill the table and lock everyone else out (slowloris).  Three rules keep a
table useful under that pressure, as HAProxy and nginx do:

- a per-source cap, where a source is an IPv4 address (or prefix) or an IPv6
  /64 (one host usually owns a whole /64, so counting single IPv6 addresses
  would be no cap at all);
- when the table is nearly full, admitting a newcomer *sheds* a holder: among
  the oldest holders, the one that has delivered the fewest bytes (a slow
  attacker, never a peer that is progressing);
- every slot is released exactly once.

Behind a load balancer (`[server] trusted-proxies`) the source is the address
its PROXY header names, so the caller admits once that header is complete:
before, the only known address is the balancer's, which would fill its own
per-source bucket.  The intake deadline bounds the unslotted header read.

Sans-I/O: the caller owns the connections.  `admit()` returns the slots it
shed, and the caller closes their connections.
"""

import ipaddress
from collections import OrderedDict

from ..errors import AdmissionRefused

SHED_CANDIDATES = 16
"""How many of the oldest holders are compared when one must be shed: O(1) per admission."""


class Slot:
    """One admitted connection: its source key, start time, progress, and owner."""

    __slots__ = ("source", "started", "received", "owner", "shed", "released")

    def __init__(self, source, started, owner):
        self.source = source
        self.started = started
        self.received = 0
        self.owner = owner
        self.shed = False
        self.released = False

    def progress(self, n):
        """Count bytes the peer delivered: a progressing peer is shed last."""
        self.received += n


def source_key(address, ipv4_prefix=32, ipv6_prefix=64):
    """The per-source bucket of an IP address: the address, or its network prefix."""
    if ":" not in address:
        if ipv4_prefix == 32:
            return address
        return str(ipaddress.IPv4Network(f"{address}/{ipv4_prefix}", strict=False))
    ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return source_key(str(mapped), ipv4_prefix, ipv6_prefix)
    return str(ipaddress.IPv6Network(f"{ip}/{ipv6_prefix}", strict=False))


class Admission:
    """A table of at most `total` slots, at most `per_source` per source bucket.

    Above `shed_above` slots in use, each admission sheds one holder to make room.
    """

    def __init__(self, total, per_source, *, ipv4_prefix=32, ipv6_prefix=64, shed_above=None):
        self.total = total
        self.per_source = per_source
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.shed_above = total * 7 // 8 if shed_above is None else shed_above
        # Insertion order is age order.  An OrderedDict, because a plain dict's iteration
        # walks over the holes that releases from the front leave behind.
        self._slots = OrderedDict()
        self.by_source = {}

    @property
    def in_use(self):
        return len(self._slots)

    def admit(self, address, now, owner=None):
        """Take a slot for a peer at IP `address`: (slot, shed slots), or raise AdmissionRefused.

        The caller must close the connections of the shed slots (they are already
        released) and call `release(slot)` when its own work ends.
        """
        source = source_key(address, self.ipv4_prefix, self.ipv6_prefix)
        if self.by_source.get(source, 0) >= self.per_source:
            raise AdmissionRefused("source-full")
        shed = []
        in_use = len(self._slots)
        if in_use >= self.shed_above or in_use >= self.total:
            victim = self._victim() if in_use >= self.shed_above else None
            if victim is None:
                if in_use >= self.total:
                    raise AdmissionRefused("table-full")
            else:
                victim.shed = True
                self.release(victim)
                shed.append(victim)
        slot = Slot(source, now, owner)
        self._slots[slot] = None
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return slot, shed

    def _victim(self):
        """Among the oldest holders, the one with the fewest bytes delivered."""
        best = None
        for count, slot in enumerate(self._slots):
            if count == SHED_CANDIDATES:
                break
            if best is None or slot.received < best.received:
                best = slot
        return best

    def release(self, slot):
        """Give the slot back; a second release (e.g. after shedding) is a no-op."""
        if slot.released:
            return
        slot.released = True
        del self._slots[slot]
        used = self.by_source[slot.source] - 1
        if used:
            self.by_source[slot.source] = used
        else:
            del self.by_source[slot.source]
