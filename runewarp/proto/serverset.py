"""Which Tunnel connection workers the Client runs, given what its Server addresses resolve to.

A worker is one (server-address entry, resolved address, connection index): every A and
AAAA address of every entry gets `connections-per-server` of them, times the Server's
`workers` at that address (its welcome says how many: one connection set per Server
worker process, docs/architecture.md "Every core").  Sans-I/O: io/serverlinks.py
resolves the names and runs the workers; this module only says which to add and which
to drain after each resolution, and whether a connection that landed on a Server worker
already covered is surplus (`coverage`).
"""

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Link:
    entry: tuple[str, int]  # the server-address as configured: (hostname or IP, port)
    address: tuple[str, int]  # one address it resolved to: (IP, the entry's port)
    index: int  # 0 .. connections-per-server - 1


def unique(addresses):
    """`addresses` in their first order, each once (a resolver lists an address per socket
    type and may repeat records)."""
    return tuple(dict.fromkeys(addresses))


def plan(current, resolved, per_server, workers=None):
    """(links to add, links to drain), each in a stable order.

    `current`: the links running now (draining ones left out).  `resolved`: entry → the
    addresses it resolved to, in resolver order; None or () when its resolution failed,
    which keeps that entry's current addresses (a DNS outage never stops a working Tunnel
    connection).  An entry missing from `resolved` is drained whole.  `per_server`: the
    connections per address and Server worker; `workers`: (entry, address) → the Server's
    worker count there, as its latest welcome said (1 when not known yet).
    """
    current = set(current)
    workers = workers or {}
    wanted = []
    for entry, addresses in resolved.items():
        if not addresses:
            addresses = unique(link.address[0] for link in sorted(current) if link.entry == entry)
        for ip in unique(addresses):
            address = (ip, entry[1])
            count = per_server * workers.get((entry, address), 1)
            wanted += [Link(entry, address, i) for i in range(count)]
    keep = set(wanted)
    return [link for link in wanted if link not in current], sorted(current - keep)


TRIES_PER_WORKER = 8  # redials of one connection per Server worker before it is kept (2 workers,
# evenly split accepts: 1 in 65,536 that a slot stays uncovered)


def coverage(worker, workers, others, per_server, tries):
    """What to do with a connection whose welcome says Server worker `worker` of `workers`:
    "keep", "redial" (surplus: that worker already has `per_server` of the other
    established connections to this address, `others`, as (worker, workers) pairs), or
    "incomplete" (surplus, but `tries` redials of this connection reached
    TRIES_PER_WORKER x workers: kept, coverage is best effort and the Server's workers pass
    Visitors on).  Connections that report another worker count belong to another
    generation of the Server (a hand-over in progress) and do not cover this one."""
    covering = sum(1 for w, n in others if (w, n) == (worker, workers))
    if covering < per_server:
        return "keep"
    if tries < TRIES_PER_WORKER * workers:
        return "redial"
    return "incomplete"
