"""Bound TCP listeners served by gevent StreamServer with a bounded greenlet pool.

TCP_NODELAY and keepalive are set once on the listening socket: on Linux every
accepted socket inherits them, which spares two to five system calls per
connection on the hot accept path.  A listener whose bind address equals the
address of a socket that systemd passed (socket activation) serves that socket
instead of binding its own.
"""

import errno
import ipaddress
import os
import socket
import sys

from gevent.pool import Pool
from gevent.server import StreamServer

from ..errors import TransportError
from ..systemd import ActivationError
from ..proto.address import format_address
from .net import set_keepalive, set_nodelay

# The config key of each listener, by name, in start order.
KEYS = {"public": "server.public-bind-address", "tunnel": "server.tunnel-bind-address"}


def bind_addresses(config):
    """Each listener's bind address in the Server `config` (None: not bound), by name."""
    return {name: getattr(config, key.partition(".")[2].replace("-", "_"))
            for name, key in KEYS.items()}


def pool_sizes(config):
    """Each listener's handler pool in the Server `config`: every connection its limits can
    admit at once (an established Tunnel connection keeps its handler)."""
    limits = config.limits
    return {"public": limits.intake_connections + limits.active_streams + limits.tunnel_handshakes,
            "tunnel": limits.pool_connections * len(config.tunnels) + limits.tunnel_handshakes}


def bind(address, backlog=1024):
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return _prepare(sock)


def _prepare(sock):
    set_nodelay(sock)  # inherited by accepted sockets
    set_keepalive(sock)
    sock.setblocking(False)
    return sock


def _address_key(address):
    """A socket address compared as an IP: `::ffff:192.0.2.1` is 192.0.2.1, `0::1` is ::1."""
    host, port = address[:2]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return address[:2]
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def _listening_tcp(sock):
    return bool(sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class InheritedSockets:
    """The listening sockets systemd passed ([(socket, name)] from systemd.listen_fds()),
    each claimed by the listener whose bind address equals its own."""

    def __init__(self, inherited=()):
        self.unclaimed = list(inherited)

    def claim(self, address):
        """The inherited listening TCP socket bound to `address`, or None."""
        for entry in self.unclaimed:
            sock = entry[0]
            if _listening_tcp(sock) and _address_key(sock.getsockname()) == _address_key(address):
                self.unclaimed.remove(entry)
                return sock
        return None

    def refuse_unclaimed(self, addresses):
        """ActivationError naming the first socket no listener claimed; `addresses` maps
        each listener name to its bind address (None: unset)."""
        if not self.unclaimed:
            return
        sock, name = self.unclaimed[0]
        label = f"fd {sock.fileno()}" + (f" ({name})" if name else "")
        if _listening_tcp(sock):
            what = f"inherited socket {label} on {format_address(sock.getsockname())}"
        else:
            what = f"inherited socket {label} (not a listening TCP socket)"
        keys = ", ".join(f"{KEYS[n]} = {format_address(a) if a else 'unset'}"
                         for n, a in addresses.items())
        raise ActivationError(f"{what} matches no bind address ({keys}): make the socket "
                              "unit listen on the configured address")


class _HandlerOwnedServer(StreamServer):
    """A StreamServer that leaves the accepted socket to the handler: a handler may hand
    it to a splice that outlives the handler's greenlet, and closes it otherwise."""

    def do_handle(self, sock, address):
        try:
            self._spawn(self._handle, sock, address)
        except BaseException:
            sock.close()
            raise


class BindError(TransportError, OSError):
    """A listener that could not bind, told by its config key and address (one error line)."""

    def __init__(self, name, address, error):
        super().__init__(error.errno, error.strerror)
        self.key = KEYS.get(name, name)
        self.address = address

    def __str__(self):
        text = f"{self.key}: {format_address(self.address)}: {(self.strerror or 'bind failed').lower()}"
        if self.errno == errno.EACCES and 0 < self.address[1] < 1024:
            text += ("; ports below 1024 need CAP_NET_BIND_SERVICE: start the runewarp-server unit "
                     "(AmbientCapabilities=CAP_NET_BIND_SERVICE) or run `setcap "
                     f"cap_net_bind_service=+ep {os.path.realpath(sys.executable)}`")
        return text


class Listener:
    """One listening socket; `stop()` closes it so no new connection is accepted.

    `name` is "public" or "tunnel": a failed bind names the matching config key.
    `inherited` (InheritedSockets) may hold the socket for `address` already bound.
    `pool_size` bounds the handlers running at once (the accept loop pauses when full)."""

    def __init__(self, name, address, handle, pool_size, inherited=None):
        self.name = name
        self.handle = handle
        self.pool_size = pool_size
        sock = inherited.claim(address) if inherited is not None else None
        self.inherited = sock is not None
        try:
            self.sock = _prepare(sock) if self.inherited else bind(address)
        except OSError as exc:
            raise BindError(name, address, exc) from None
        self.address = self.sock.getsockname()
        self.server = _HandlerOwnedServer(self.sock, handle, spawn=Pool(pool_size))

    def start(self):
        self.server.start()

    def resize(self, pool_size):
        """Bound the handlers of connections accepted from now on by `pool_size` (a reload).

        A gevent pool cannot shrink under its running handlers, so a new server with a
        new pool takes over a copy of the socket, and the old one closes its own copy:
        the listening socket never closes, and the old handlers finish in the old pool."""
        if pool_size == self.pool_size:
            return
        sock = self.sock.dup()
        server = _HandlerOwnedServer(sock, self.handle, spawn=Pool(pool_size))
        try:
            server.start()
        except BaseException:
            sock.close()
            raise
        old, self.sock, self.server, self.pool_size = self.server, sock, server, pool_size
        old.close()

    def stop(self):
        self.server.close()


def bind_moved(listeners, running, wanted, make):
    """New listeners, bound but not serving, for the names whose address in `wanted` (name
    -> address or None) is neither the `running` one nor the address its listener is bound
    to (`:0` in the config, the port it got in the new one); None for a name `wanted`
    unsets.  `make(name, address)` binds one.  A BindError, or an ActivationError for a
    listener on a socket systemd passed (its socket unit owns the address), closes what
    was bound and propagates: a failed reload leaves only the running listeners."""
    current = {listener.name: listener for listener in listeners}
    moved = {}
    try:
        for name, address in wanted.items():
            old = current.get(name)
            if address == running.get(name) or (
                    address is not None and old is not None
                    and _address_key(address) == _address_key(old.address)):
                continue
            if old is not None and old.inherited:
                raise ActivationError(
                    f"{KEYS[name]}: {format_address(old.address)} is a socket systemd passed; "
                    "change the socket unit's ListenStream= and restart")
            moved[name] = None if address is None else make(name, address)
    except (BindError, ActivationError):
        for listener in moved.values():
            if listener is not None:
                listener.stop()
        raise
    return moved


def swap(listeners, moved, log):
    """`listeners` with the `moved` ones (bind_moved) serving in place of the ones they
    replace: each new one starts before its predecessor closes."""
    by_name = {listener.name: listener for listener in listeners}
    for name, listener in moved.items():
        old = by_name.pop(name, None)
        if listener is not None:
            listener.start()
            by_name[name] = listener
        if old is not None:
            old.stop()
        log.info("listener-moved", listener=name,
                 address=format_address(listener.address) if listener else "shared",
                 previous=format_address(old.address) if old else "shared")
    return [by_name[name] for name in KEYS if name in by_name]
