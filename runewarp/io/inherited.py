"""The listening sockets a process did not bind itself: systemd's (socket activation) and
those the old process of a hand-over or a supervisor passed.  Each is claimed by the
listener whose bind address equals its own, so nothing is bound twice; what no listener
claims is refused (a socket unit's) or closed (a hand-over's)."""

import ipaddress
import socket

from ..proto.address import format_address
from ..systemd import ActivationError


def address_key(address):
    """A socket address compared as an IP: `::ffff:192.0.2.1` is 192.0.2.1, `0::1` is ::1."""
    host, port = address[:2]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address[:2]
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def _bound_udp(sock):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_DGRAM


def _listening_tcp(sock):
    return bool(sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class InheritedSockets:
    """The listening sockets systemd or a hand-over passed ([(socket, name, unit_owned)]
    from systemd.listen_fds(); (socket, name): a socket unit's), each claimed by the
    listener whose bind address equals its own."""

    def __init__(self, inherited=()):
        self.unclaimed = list(inherited)
        self.unit_owned = {id(entry[0]) for entry in self.unclaimed
                           if len(entry) < 3 or entry[2]}

    def claim(self, address, datagram=False, name=None):
        """The inherited listening TCP socket bound to `address` (`datagram`: the UDP
        socket), or None.  A configured port 0 matches the socket passed under the same
        `name` on the same host: a supervisor's worker or a hand-over's new process reads
        `:0` from the file, and must take the port its predecessor got, not bind another."""
        usable = _bound_udp if datagram else _listening_tcp
        wanted = address_key(address)
        for entry in self.unclaimed:
            sock = entry[0]
            if not usable(sock):
                continue
            got = address_key(sock.getsockname())
            if got == wanted or (name is not None and wanted[1] == 0 and len(entry) > 1
                                 and entry[1] == name and got[0] == wanted[0]):
                self.unclaimed.remove(entry)
                return sock
        return None

    def refuse_unclaimed(self, addresses):
        """ActivationError naming the first socket no listener claimed; `addresses` maps
        each bind address key to its address (None: unset).  A socket a hand-over passed
        that no socket unit owns is closed instead (the config moved away from it): the
        addresses closed."""
        ours = [entry for entry in self.unclaimed if id(entry[0]) not in self.unit_owned]
        closed = [format_address(entry[0].getsockname()) for entry in ours]
        for entry in ours:
            entry[0].close()
            self.unclaimed.remove(entry)
        if not self.unclaimed:
            return closed
        sock, name = self.unclaimed[0][:2]
        label = f"fd {sock.fileno()}" + (f" ({name})" if name else "")
        if _listening_tcp(sock) or _bound_udp(sock):
            what = f"inherited socket {label} on {format_address(sock.getsockname())}"
        else:
            what = f"inherited socket {label} (not a listening TCP socket)"
        keys = ", ".join(f"{key} = {format_address(a) if a else 'unset'}"
                         for key, a in addresses.items())
        raise ActivationError(f"{what} matches no bind address ({keys}): make the socket "
                              "unit listen on the configured address")
