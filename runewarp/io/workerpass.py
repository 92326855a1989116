"""Passing a Visitor's socket to another Server worker: SCM_RIGHTS over Unix datagrams.

Each worker of a supervisor (`workers = N`, runewarp/workers.py) reads one Unix
datagram socket: the path at its index in RUNEWARP_WORKER_SOCKETS (a comma-separated
list, when the supervisor gives one), else the abstract name
"\\0runewarp-<supervisor pid>-<index>" (the supervisor is the worker's parent).
Neither is reachable from the network.  A datagram carries one socket and a
proto/workerpass message; the receiver takes it only from a process of the same
user (SO_PASSCRED: the kernel's word, not the sender's), and with the abstract name
only from a child of the same supervisor.  Anything else closes the passed
descriptors and logs at debug: a bogus datagram has no effect.

A single process (Worker(0, 1)) binds nothing and passes nothing.
"""

import array
import os
import socket
import struct

import gevent
from gevent import socket as gsocket

from ..proto import workerpass
from ..proto.workerpass import PassError

SOCKETS_ENV = "RUNEWARP_WORKER_SOCKETS"
_FD = array.array("i").itemsize
_UCRED = struct.Struct("iII")  # pid, uid, gid
MAX_FDS = 4  # room to see (and close) a sender's extra descriptors
# A receiver's queue holds net.unix.max_dgram_qlen datagrams (10 by default): a burst beyond
# it is sent again this often, this many times (an unconnected sender cannot poll for room).
FULL_RETRY = 0.01
FULL_TRIES = 20
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * _FD) + socket.CMSG_SPACE(_UCRED.size)


def socket_address(index, environ=None, ppid=None):
    """Where worker `index` reads passes; None when the supervisor's list has no entry."""
    environ = os.environ if environ is None else environ
    listed = environ.get(SOCKETS_ENV)
    if listed:
        paths = listed.split(",")
        return paths[index] if index < len(paths) and paths[index] else None
    return f"\0runewarp-{os.getppid() if ppid is None else ppid}-{index}"


def parent_of(pid):
    """The parent pid of `pid` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


class WorkerPasses:
    """This worker's pass socket: `send` a Visitor on, and `on_pass(sock, Pass)` for each
    one passed here (called in the reading greenlet: it must only spawn)."""

    def __init__(self, worker, on_pass, log, counters, environ=None):
        self.worker = worker
        self.on_pass = on_pass
        self.log = log
        self.counters = counters  # event -> Counter child: sent, send-failed, received, dropped
        self.environ = os.environ if environ is None else environ
        self.sock = None
        self.sender = None
        self.reader = None
        self.started = False

    def start(self):
        """Bind and read (once); a failure is logged and leaves passing off in this worker."""
        if self.started or self.worker.count == 1:
            return
        self.started = True
        address = socket_address(self.worker.index, self.environ)
        if address is None:
            return
        sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if not address.startswith("\0") and os.path.exists(address):
                os.unlink(address)  # a dead worker's: the supervisor owns the folder
            sock.bind(address)
        except OSError as exc:
            sock.close()
            self.log.warn("worker-pass-unavailable",
                          reason=f"cannot bind {address.lstrip(chr(0))}: {exc}",
                          effect="Visitors are not passed to this worker")
            return
        self.sock = sock
        self.reader = gevent.spawn(self._read)

    def close(self):
        if self.reader is not None:
            self.reader.kill(block=False)
        for sock in (self.sock, self.sender):
            if sock is not None:
                sock.close()
        self.sock = self.sender = None

    def send(self, visitor, passed, target):
        """Send `visitor` (a socket) with `passed` to worker `target` without waiting:
        whether it went (a worker not started yet, or one whose queue is full, refuses)."""
        address = socket_address(target, self.environ)
        if address is None:
            return False
        if self.sender is None:
            self.sender = gsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        message = [workerpass.encode(passed)]
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [visitor.fileno()]))]
        for tries_left in range(FULL_TRIES - 1, -1, -1):
            try:
                self.sender.sendmsg(message, rights, socket.MSG_DONTWAIT, address)
            except BlockingIOError:
                if tries_left:
                    gevent.sleep(FULL_RETRY)
                    continue
                reason = "its queue stayed full"
            except OSError as exc:
                reason = str(exc)
            else:
                self.counters["sent"].inc()
                return True
            self.counters["send-failed"].inc()
            self.log.debug("worker-pass-failed", to_worker=target, reason=reason)
            return False

    def _read(self):
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(workerpass.MAX_MESSAGE + 1,
                                                              _ANCILLARY)
            except OSError as exc:
                if self.sock is None or self.sock.fileno() < 0:
                    return
                self.log.debug("worker-pass-dropped", reason=f"receive failed: {exc}")
                gevent.sleep(0.1)  # never a busy loop on a persistent error
                continue
            fds, credentials = _ancillary(ancillary)
            try:
                visitor, passed = self._take(data, fds, credentials, flags)
            except PassError as exc:
                self.counters["dropped"].inc()
                self.log.debug("worker-pass-dropped", reason=str(exc))
                continue
            finally:
                for fd in fds:
                    os.close(fd)
            self.counters["received"].inc()
            self.on_pass(visitor, passed)

    def _take(self, data, fds, credentials, flags):
        """(the passed socket, the Pass) from one datagram, or PassError.  The socket's
        descriptor is taken out of `fds`; the caller closes what is left."""
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise PassError("truncated datagram")
        if credentials is None:
            raise PassError("no sender credentials")
        pid, uid, _ = credentials
        if uid not in (os.getuid(), os.geteuid()):
            raise PassError(f"sender uid {uid} is not this worker's")
        if self.environ.get(SOCKETS_ENV) is None and parent_of(pid) != os.getppid():
            raise PassError(f"sender pid {pid} is not a worker of this supervisor")
        if len(fds) != 1:
            raise PassError(f"{len(fds)} descriptors, not one socket")
        passed = workerpass.decode(data)
        try:
            visitor = gsocket.socket(fileno=fds[0])
        except OSError as exc:
            raise PassError(f"not a socket: {exc}") from None
        fds.clear()  # the socket object owns it now
        if visitor.type != socket.SOCK_STREAM or visitor.family not in (socket.AF_INET,
                                                                       socket.AF_INET6):
            visitor.close()
            raise PassError("the descriptor is not a TCP socket")
        return visitor, passed


def _ancillary(ancillary):
    """(descriptors, (pid, uid, gid) or None) from recvmsg's ancillary data."""
    fds, credentials = [], None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[:len(data) - len(data) % _FD])
            fds.extend(received)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            credentials = _UCRED.unpack(data[:_UCRED.size])
    return fds, credentials
