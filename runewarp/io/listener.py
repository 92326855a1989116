"""Bound TCP listeners served by gevent StreamServer with a bounded greenlet pool, and
the public UDP sockets of QUIC (`bind_datagram`).

TCP_NODELAY and keepalive are set once on the listening socket: on Linux every
accepted socket inherits them, which spares two to five system calls per
connection on the hot accept path.  A listener whose bind address equals the
address of a socket that systemd passed (socket activation) or the old process of a
hand-over passed (runewarp/handover.py) serves that socket instead of binding its own
(inherited.py).
"""

import errno
import itertools
import os
import socket
import sys

from gevent.pool import Pool
from gevent.server import StreamServer

from ..errors import TransportError
from ..proto.address import format_address
from ..systemd import ActivationError
from .inherited import address_key
from .net import set_keepalive, set_nodelay
from ..workers import this_worker

# The config key of each kind of listener.  Public listeners are named "public",
# "public-2", … (one per public bind address); the Tunnel listener "tunnel".
KEYS = {"public": "server.public-bind-address", "tunnel": "server.tunnel-bind-address"}
PUBLIC_LIST_KEY = "server.public-bind-addresses"


def kind(name):
    """"public" or "tunnel": what a listener named `name` serves."""
    return "tunnel" if name == "tunnel" else "public"


def _public_name(i):
    return "public" if i == 0 else f"public-{i + 1}"


def _order(name):
    return (1, 0) if name == "tunnel" else (0, int(name.rpartition("-")[2]) if "-" in name else 1)


def config_key(config, name):
    """The config key a failure of the listener `name` names."""
    if kind(name) == "public" and len(config.public_bind_addresses) > 1:
        return PUBLIC_LIST_KEY
    return KEYS[kind(name)]


def by_key(config, addresses):
    """`addresses` (bind_addresses at start) by config key, a list's with its index."""
    return {f"{config_key(config, name)}[{i}]" if config_key(config, name) == PUBLIC_LIST_KEY
            else config_key(config, name): address for i, (name, address) in enumerate(addresses.items())}


def bind_addresses(config, listeners=()):
    """Each listener's bind address in the Server `config` (None: not bound), by name.

    A public address that a running listener (of `listeners`) serves keeps that
    listener's name; a new address takes the name of a running public listener the
    config no longer has (a move, as for the single address), else a new name; a name
    left over is None (closed).  So a reload moves only what the config moved, and a
    reordered list moves nothing."""
    running = [li for li in listeners if kind(li.name) == "public"]
    named, pending = {}, []
    for address in config.public_bind_addresses:
        same = next((li for li in running if li.name not in named and (
            li.configured == address or (address[1] and address_key(address) == address_key(li.address)))),
            None)
        if same is None:
            pending.append(address)
        else:
            named[same.name] = address
    spare = [li.name for li in running if li.name not in named]
    fresh = (n for n in map(_public_name, itertools.count()) if n not in named and n not in spare)
    for address in pending:
        named[spare.pop(0) if spare else next(fresh)] = address
    named.update(dict.fromkeys(spare))
    named["tunnel"] = config.tunnel_bind_address
    return dict(sorted(named.items(), key=lambda item: _order(item[0])))


def pool_sizes(config):
    """Each listener's handler pool in the Server `config`: every connection its limits can
    admit at once (an established Tunnel connection keeps its handler)."""
    limits = config.limits
    return {"public": limits.intake_connections + limits.active_streams + limits.tunnel_handshakes,
            "tunnel": limits.pool_connections * len(config.tunnels) + limits.tunnel_handshakes}


def bind(address, backlog=1024, v6only=False):
    """`v6only`: an IPv6 socket takes IPv6 only, so 0.0.0.0:443 and [::]:443 can both bind."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return prepare(sock)


def bind_unix(path, backlog=64):
    """A listening Unix socket at `path` (a worker's metrics, runewarp/workers.py); a socket
    file left there by the worker's previous run is replaced."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_datagram(address, v6only=False):
    """A UDP socket bound to `address` (the public QUIC socket, io/quic.py); `v6only` as in
    `bind`.  Large kernel buffers absorb a burst while the reader greenlet waits its turn.
    No SO_REUSEADDR: on UDP it would let another socket bind the same port beside ours."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _grow_buffers(sock)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock  # blocking as gevent emulates it: recvfrom parks only its greenlet


def _grow_buffers(sock, size=4 * 1024 * 1024):
    """Ask for `size`-byte receive and send buffers (the kernel caps them at rmem_max)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass


def prepare(sock):
    """A listening socket ready to serve: TCP_NODELAY and keepalive, non-blocking."""
    set_nodelay(sock)  # inherited by accepted sockets
    set_keepalive(sock)
    sock.setblocking(False)
    return sock


class _HandlerOwnedServer(StreamServer):
    """A StreamServer that leaves the accepted socket to the handler: a handler may hand
    it to a splice that outlives the handler's greenlet, and closes it otherwise.

    Under a supervisor every worker waits on the same socket: accepting one connection
    per wake-up leaves the next to whichever worker is idle, so a burst (a Client's
    Tunnel connections, dialed at once) spreads over the workers."""

    max_accept = 1 if this_worker().count > 1 else StreamServer.max_accept

    def do_handle(self, sock, address):
        try:
            self._spawn(self._handle, sock, address)
        except BaseException:
            sock.close()
            raise


def side_listener(address, inherited, key, name=None):
    """(listening socket, unit_owned) of a side listener (metrics, the configuration API):
    a hand-over's or socket unit's from `inherited` (InheritedSockets or None), else bound
    now; BindError naming the config `key` and the address."""
    passed = inherited.claim(address, name=name) if inherited is not None else None
    try:
        sock = prepare(passed) if passed is not None else bind(address, backlog=64)
    except OSError as exc:
        raise BindError(key, address, exc) from None
    return sock, passed is not None and id(passed) in inherited.unit_owned


class BindError(TransportError, OSError):
    """A listener that could not bind, told by its config key and address (one error line)."""

    def __init__(self, key, address, error):
        super().__init__(error.errno, error.strerror)
        self.key = key
        self.address = address

    def __str__(self):
        text = f"{self.key}: {format_address(self.address)}: {(self.strerror or 'bind failed').lower()}"
        if self.errno == errno.EACCES and 0 < self.address[1] < 1024:
            text += ("; ports below 1024 need CAP_NET_BIND_SERVICE: start the runewarp-server unit "
                     "(AmbientCapabilities=CAP_NET_BIND_SERVICE) or run `setcap "
                     f"cap_net_bind_service=+ep {os.path.realpath(sys.executable)}`")
        return text


def listening(address, inherited, key, v6only=False, name=None):
    """(socket, inherited, unit_owned): the listening socket for `address`, claimed from
    `inherited` (InheritedSockets or None) or bound now; BindError naming `key`."""
    sock = inherited.claim(address, name=name) if inherited is not None else None
    try:
        prepared = prepare(sock) if sock is not None else bind(address, v6only=v6only)
    except OSError as exc:
        raise BindError(key, address, exc) from None
    return prepared, sock is not None, sock is not None and id(sock) in inherited.unit_owned


class Listener:
    """One listening socket; `stop()` closes it so no new connection is accepted.

    `name` is "public", "public-2", … or "tunnel"; a failed bind names `key` (default: the
    key of its kind).  `inherited` (InheritedSockets) may hold the socket for `address`
    already bound.  `pool_size` bounds the handlers running at once (the accept loop
    pauses when full).  `v6only`: see `bind`."""

    def __init__(self, name, address, handle, pool_size, inherited=None, key=None, v6only=False):
        self.name = name
        self.key = key or KEYS[kind(name)]
        self.configured = address
        self.handle = handle
        self.pool_size = pool_size
        self.sock, self.inherited, self.unit_owned = listening(address, inherited, self.key, v6only,
                                                                 name)
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


def bind_for_workers(config, inherited, log):
    """Every listening socket of the Server `config`, bound once by a supervisor for its
    workers (runewarp/supervisor.py): [(socket, name, unit_owned)], an inherited one
    (InheritedSockets) claimed as a start claims it; BindError as a start's."""
    sockets = []
    try:
        for name, address in bind_addresses(config).items():
            if address is not None:
                several = kind(name) == "public" and len(config.public_bind_addresses) > 1
                sock, _, unit_owned = listening(address, inherited, config_key(config, name),
                                                several, name)
                sockets.append((sock, name, unit_owned))
        for address in inherited.refuse_unclaimed(by_key(config, bind_addresses(config))):
            log.info("listener-closed", address=address,
                     reason="the config no longer names the address it handed over")
    except BaseException:
        for sock, _, _ in sockets:
            sock.close()
        raise
    return sockets


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
                    and address_key(address) == address_key(old.address)):
                continue
            if old is not None and old.unit_owned:
                raise ActivationError(
                    f"{old.key}: {format_address(old.address)} is a socket systemd passed; "
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
        none = "shared" if name == "tunnel" else "none"  # a Tunnel listener's absence shares
        log.info("listener-moved", listener=name,
                 address=format_address(listener.address) if listener else none,
                 previous=format_address(old.address) if old else none)
    return [by_name[name] for name in sorted(by_name, key=_order)]
