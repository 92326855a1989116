"""Which Tunnel connection workers the Client runs, given what its Server addresses resolve to.

A worker is one (server-address entry, resolved address, connection index): every A and
AAAA address of every entry gets `connections-per-server` of them.  Sans-I/O: io/serverlinks.py
resolves the names and runs the workers; this module only says which to add and which
to drain after each resolution.
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


def plan(current, resolved, per_server):
    """(links to add, links to drain), each in a stable order.

    `current`: the links running now (draining ones left out).  `resolved`: entry → the
    addresses it resolved to, in resolver order; None or () when its resolution failed,
    which keeps that entry's current addresses (a DNS outage never stops a working Tunnel
    connection).  An entry missing from `resolved` is drained whole.  `per_server`: the
    connections per address.
    """
    current = set(current)
    wanted = []
    for entry, addresses in resolved.items():
        if not addresses:
            addresses = unique(link.address[0] for link in sorted(current) if link.entry == entry)
        for ip in unique(addresses):
            wanted += [Link(entry, (ip, entry[1]), i) for i in range(per_server)]
    keep = set(wanted)
    return [link for link in wanted if link not in current], sorted(current - keep)
