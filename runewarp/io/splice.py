"""Splice two endpoints: one pump per direction, half-close on EOF, abort on error.

Endpoints are a TCP socket, a mux stream, or TLS terminated over a mux stream;
each offers try_recv / when_readable / sendall / delivered / finish / abort /
close.  A mux stream may hand over several received chunks at once, as a list,
which a socket writes with one gathered send.  A direction's pump is a greenlet only while bytes move: when its source
has nothing to read, the greenlet ends and the direction parks on a readiness
callback (an event-loop watcher for a socket, a notification from the Tunnel
reader for a mux stream).  An idle proxied connection therefore holds no
greenlet and no buffer, only the splice's small bookkeeping.  Bytes move in
chunks of up to 256 KiB.  A FIN in one direction becomes a FIN in the same
direction on the other side; an error or reset aborts both.

Every splice can be made to end: with SpliceTimeouts, the Sweeper (sweeper.py)
aborts splices that stopped moving bytes (a hung backend, a vanished Visitor);
the pumps only reset a counter, with no clock call and no timer per splice.
"""

import os
import socket
import time

import gevent
from gevent import get_hub, getcurrent
from gevent.event import Event
from greenlet import greenlet
from OpenSSL import SSL

from ..errors import StreamAborted
from .net import abort
from .sweeper import SpliceTimeouts as SpliceTimeouts  # re-exported: Splices takes one
from .sweeper import Sweeper

CHUNK = 256 * 1024
_READ = 1
TRANSPORT_ERRORS = (StreamAborted, OSError, SSL.Error)


def _iov_max():
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return limit if limit > 0 else 1024


IOV_MAX = _iov_max()  # buffers one sendmsg accepts; Linux refuses more with EMSGSIZE


def send_gathered(sock, parts, end=None):
    """Send every byte of the buffers `parts` on the gevent socket `sock`, in order, with
    one sendmsg each time the socket takes them all (no join, no copy).  With `end` (a
    SocketEnd), a slow reader taking a long list still counts as progress for its splice."""
    views = [memoryview(part) for part in parts]
    first, count = 0, len(views)
    while True:
        if first == 0 and count <= IOV_MAX:
            sent = sock.sendmsg(views)
        else:
            sent = sock.sendmsg(views[first:first + IOV_MAX])
        while first < count:
            size = len(views[first])
            if sent < size:
                if sent:
                    views[first] = views[first][sent:]
                break
            sent -= size
            first += 1
        if first == count:
            return
        if end is not None and end.splice is not None:
            end.splice.idle = 0


class SocketEnd:
    """A gevent TCP socket.  Reads never wait (parking uses a watcher); writes wait cooperatively."""

    __slots__ = ("sock", "_raw", "_watcher", "_callback", "splice")

    def __init__(self, sock):
        self.sock = sock
        self._raw = sock._sock  # gevent keeps the OS socket non-blocking under its wrapper
        self._watcher = None
        self._callback = None
        self.splice = None  # set while spliced: a long gathered send reports its progress

    def try_recv(self):
        try:
            return self._raw.recv(CHUNK)
        except BlockingIOError:
            return None
        except AttributeError:  # closed meanwhile: gevent swapped in a closed socket
            raise OSError("socket closed") from None

    def when_readable(self, callback):
        if self._watcher is None:
            self._watcher = self.sock.hub.loop.io(self.sock.fileno(), _READ)
        self._callback = callback
        self._watcher.start(self._fire)

    def _fire(self):
        self._watcher.stop()
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def cancel_readable(self):
        self._callback = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def sendall(self, data):
        if type(data) is not list:
            self.sock.sendall(data)
            return
        send_gathered(self.sock, data, self)

    def delivered(self, n):
        pass

    def finish(self):
        self.sock.shutdown(socket.SHUT_WR)

    def abort(self):
        self.cancel_readable()
        abort(self.sock)

    def close(self):
        self.cancel_readable()
        self.sock.close()


class StreamEnd:
    """A mux stream; credit goes back to the peer only once bytes were delivered onward."""

    __slots__ = ("stream",)

    def __init__(self, stream):
        self.stream = stream

    def try_recv(self):
        return self.stream.try_recv()

    def when_readable(self, callback):
        self.stream.when_readable(callback)

    def cancel_readable(self):
        self.stream.when_readable(None)

    def sendall(self, data):
        self.stream.sendall(data)

    def delivered(self, n):
        self.stream.consumed(n)

    def finish(self):
        self.stream.end()

    def abort(self):
        self.stream.on_reset = None  # our own abort needs no news of itself
        self.stream.reset()

    def close(self):
        self.stream.close()


class SpliceResult:
    __slots__ = ("a_to_b", "b_to_a", "error")

    def __init__(self):
        self.a_to_b = 0
        self.b_to_a = 0
        self.error = None


_PARKED, _RUNNING, _DONE = "parked", "running", "done"


class _Direction:
    __slots__ = ("splice", "src", "dst", "forward", "state")

    def __init__(self, splice, src, dst, forward):
        self.splice = splice
        self.src = src
        self.dst = dst
        self.forward = forward
        self.state = _PARKED

    def park(self):
        self.state = _PARKED
        self.src.when_readable(self._wake)

    def _wake(self):
        """Readiness callback: never blocks.

        From an event-loop watcher (a socket) the pump runs at once in a bare greenlet,
        the way gevent resumes a greenlet waiting on that socket; from the Tunnel
        reader (a mux stream) it starts on the loop's next turn, so the reader goes on
        dispatching frames meanwhile.
        """
        if self.state is _PARKED:
            self.state = _RUNNING
            hub = get_hub()
            if getcurrent() is hub:
                greenlet(self._run, parent=hub).switch()
            else:
                gevent.spawn_raw(self._run)

    def _run(self):
        splice = self.splice
        src, dst, result = self.src, self.dst, splice.result
        try:
            while not splice.failed:
                data = src.try_recv()
                if data is None:
                    self.park()
                    return
                splice.idle = 0  # progress, for the sweeper: one store, no clock
                if not data:
                    splice.half_closed = True
                    dst.finish()
                    break
                dst.sendall(data)
                splice.idle = 0
                size = len(data) if type(data) is not list else sum(map(len, data))
                src.delivered(size)
                if self.forward:
                    result.a_to_b += size
                else:
                    result.b_to_a += size
        except Exception as exc:  # noqa: BLE001 - transport errors, and never a leaked splice
            splice.fail(f"{exc.__class__.__name__}: {exc}")
        self.state = _DONE
        splice._check_done()


class Splice:
    """Both directions of one proxied connection; `on_done(result)` runs once both finished.

    For the Sweeper: `idle` counts its ticks since a byte last moved (the pumps reset
    it to 0), `half_closed` is set once a FIN passed, `born` is the tick the splice
    started at.
    """

    __slots__ = ("a", "b", "result", "on_done", "directions", "finished", "idle", "born",
                 "half_closed")

    def __init__(self, a, b, on_done):
        self.a = a
        self.b = b
        self.result = SpliceResult()
        self.on_done = on_done
        self.directions = (_Direction(self, a, b, True), _Direction(self, b, a, False))
        self.finished = False
        self.idle = 0
        self.born = 0
        self.half_closed = False
        for end in (a, b):
            if isinstance(end, SocketEnd):
                end.splice = self
            elif getattr(end, "stream", None) is not None:  # a mux stream (maybe under TLS)
                end.stream.on_reset = self._stream_reset

    @property
    def failed(self):
        return self.result.error is not None

    def b_has_spoken(self):
        """True once bytes came from b, or b's pump woke: it is delivering them, or b ended.
        (An end that never parks, such as TLSEnd, therefore always counts as spoken.)"""
        directions = self.directions  # (a → b, b → a); empty once finished
        return bool(self.result.b_to_a) or bool(directions) and directions[1].state is not _PARKED

    def start(self):
        for direction in self.directions:
            direction.park()

    def _stream_reset(self, reason):
        """The mux stream was reset (by the peer, or its Tunnel connection died): end the
        splice now, even when no pump is parked on the stream to notice."""
        if not self.finished:
            self.fail(f"StreamReset: {reason}")

    def fail(self, error):
        """Abort both ends; a parked direction ends at once, a running one on its next I/O."""
        if self.result.error is None:
            self.result.error = error
        for direction in self.directions:
            if direction.state is _PARKED:
                direction.state = _DONE
            direction.src.cancel_readable()
        try:
            self.a.abort()
        finally:
            try:
                self.b.abort()
            finally:
                self._check_done()

    def _check_done(self):
        if self.finished or any(d.state is not _DONE for d in self.directions):
            return
        self.finished = True
        for end in (self.a, self.b):
            end.close()
            if isinstance(end, SocketEnd):
                end.splice = None
            elif getattr(end, "stream", None) is not None:
                end.stream.on_reset = None
        self.directions = ()  # no reference cycle left for the garbage collector
        self.on_done(self.result)


class Splices:
    """The live splices of one role: counted for limits, joined on drain, aborted on close,
    and with `timeouts` (a SpliceTimeouts) ended once they stop moving bytes."""

    def __init__(self, timeouts=None, *, tick=1.0):
        self.live = set()
        self._idle = Event()
        self._idle.set()
        self.sweeper = Sweeper(self.live, timeouts, tick)

    def __len__(self):
        return len(self.live)

    def start(self, a, b, on_done, age=0.0):
        """Start splicing `a` and `b`; the splice owns both ends from now on.  `age`: seconds
        since the stream was opened, which the first-byte timeout counts from."""
        def done(result):
            self.live.discard(splice)
            if not self.live:
                self._idle.set()
            on_done(result)

        splice = Splice(a, b, done)
        self.live.add(splice)
        self._idle.clear()
        self.sweeper.watch(splice, age)
        splice.start()
        return splice

    def join(self, timeout=None):
        """True once no splice is left, False if `timeout` passed first."""
        return self._idle.wait(timeout)

    def abort_all(self, reason):
        for splice in list(self.live):
            splice.fail(reason)

    def close(self):
        """Stop the sweeper now; the splices live on (abort_all ends them)."""
        self.sweeper.stop()


def drain(handlers, splices, timeout):
    """A graceful stop's wait: for `handlers` (greenlets not yet spliced) and then for
    `splices`, within one `timeout` in seconds; True when both finished."""
    deadline = time.monotonic() + timeout
    handlers_done = handlers.join(timeout=timeout)
    return splices.join(max(0.0, deadline - time.monotonic())) and handlers_done
