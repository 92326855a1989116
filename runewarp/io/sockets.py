"""Socket calls on the data path, without gevent's per-call overhead where it shows.

gevent keeps every OS socket non-blocking under its cooperative wrapper, so a
read or write can be tried directly first and only wait through gevent when the
kernel says EAGAIN.  That spares gevent's generic `sendall` (which asks the
kernel for SO_SNDBUF on every call) and, for reads, a fresh 256 KiB allocation
per call: glibc serves those with mmap/munmap, two system calls and fresh page
faults per read.  Reads land in one scratch buffer per process instead and are
copied out at their real size; that is safe because gevent runs one greenlet at
a time and every caller copies the bytes out before it can switch.
"""

CHUNK = 256 * 1024
SCRATCH = memoryview(bytearray(CHUNK))


def os_socket(sock):
    """The OS socket under a gevent socket (non-blocking); None for other transports
    (a mux stream carrying terminated TLS), which keep their own recv and sendall."""
    return getattr(sock, "_sock", None)


def recv_now(raw):
    """Bytes available on `raw` now (b"" at EOF), None if there are none yet."""
    try:
        n = raw.recv_into(SCRATCH)
    except BlockingIOError:
        return None
    return SCRATCH[:n].tobytes()


def recv_wait(sock):
    """Wait cooperatively for bytes on the gevent socket `sock`; their count in SCRATCH."""
    return sock.recv_into(SCRATCH)


def send_all(sock, raw, data):
    """Write all of `data`: straight to the kernel, through gevent only if it is full."""
    if raw is None:
        sock.sendall(data)
        return
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
