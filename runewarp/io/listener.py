"""Bound TCP listeners served by gevent StreamServer with a bounded greenlet pool.

TCP_NODELAY and keepalive are set once on the listening socket: on Linux every
accepted socket inherits them, which spares two to five system calls per
connection on the hot accept path.
"""

import errno
import os
import socket
import sys

from gevent.pool import Pool
from gevent.server import StreamServer

from ..errors import TransportError
from .net import format_address, set_keepalive, set_nodelay


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
    set_nodelay(sock)  # inherited by accepted sockets
    set_keepalive(sock)
    sock.setblocking(False)
    return sock


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

    KEYS = {"public": "server.public-bind-address", "tunnel": "server.tunnel-bind-address"}

    def __init__(self, name, address, error):
        super().__init__(error.errno, error.strerror)
        self.key = self.KEYS.get(name, name)
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

    `name` is "public" or "tunnel": a failed bind names the matching config key."""

    def __init__(self, name, address, handle, pool_size):
        self.name = name
        try:
            self.sock = bind(address)
        except OSError as exc:
            raise BindError(name, address, exc) from None
        self.address = self.sock.getsockname()
        self.server = _HandlerOwnedServer(self.sock, handle, spawn=Pool(pool_size))

    def start(self):
        self.server.start()

    def stop(self):
        self.server.close()
