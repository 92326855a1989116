"""Userspace delay line between two interfaces, for kernels without `tc netem`.

    python bench/delayline.py IFACE_A IFACE_B DELAY_MS [--limit 100000]

Run inside a namespace that holds IFACE_A and IFACE_B (the inner ends of two veth
pairs, no addresses).  Every Ethernet frame that arrives on one is sent out of the
other DELAY_MS later, in order: a wire with a fixed one-way delay, like
`netem delay DELAY_MS limit LIMIT` on both ends, and no loss unless LIMIT frames are
already waiting in one direction.

Frames are read and written with AF_PACKET and PACKET_VNET_HDR, so TSO/GSO
super-frames (up to 64 KiB) and partial checksums cross as they are: a bulk TCP
stream costs a few thousand frames per second, not one per 1,448 bytes, which is
what lets this run in Python.  (Only the timing differs from netem: epoll wakes
with millisecond granularity, so frames leave up to ~1 ms late, later when the CPUs
are saturated; bench.py runs it with `chrt -f 10` so that the load it carries cannot
keep it from sending on time, and reports how many frames left more than 2 ms late.)

Prints "delayline-ready" on stderr once both sockets are bound, and its counters as
one JSON line on stderr when stopped with SIGTERM or SIGINT.
"""

import argparse
import collections
import json
import selectors
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
BUF = 256 * 1024
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33   # not exported by the socket module


def packet_socket(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 * 1024 * 1024)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class Stop(Exception):
    pass


def _stop(_signum, _frame):
    raise Stop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("iface_a")
    parser.add_argument("iface_b")
    parser.add_argument("delay_ms", type=float)
    parser.add_argument("--limit", type=int, default=100000)
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    a, b = packet_socket(args.iface_a), packet_socket(args.iface_b)
    other = {a: b, b: a}
    queue = {a: collections.deque(), b: collections.deque()}   # frames to send out of key
    stats = {"frames": 0, "bytes": 0, "dropped_limit": 0, "send_errors": 0, "max_queued": 0,
             "late_ms_max": 0.0, "late_over_2ms": 0}
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ)
    sel.register(b, selectors.EVENT_READ)
    print("delayline-ready", file=sys.stderr, flush=True)
    try:
        while True:
            heads = [q[0][0] for q in queue.values() if q]
            timeout = max(0.0, min(heads) - time.monotonic()) if heads else 1.0
            for key, _mask in sel.select(timeout):
                src = key.fileobj
                out = queue[other[src]]
                for _ in range(64):   # then send what is due: reads must not delay sends
                    try:
                        frame = src.recv(BUF)
                    except BlockingIOError:
                        break
                    if len(out) >= args.limit:
                        stats["dropped_limit"] += 1
                        continue
                    out.append((time.monotonic() + delay, frame))
                    stats["max_queued"] = max(stats["max_queued"], len(out))
            now = time.monotonic()
            for sock, q in queue.items():
                while q and q[0][0] <= now:
                    due, frame = q[0]
                    try:
                        sock.send(frame)
                    except BlockingIOError:
                        break   # the device is busy: retry on the next turn, order kept
                    except OSError:
                        stats["send_errors"] += 1
                    q.popleft()
                    stats["frames"] += 1
                    stats["bytes"] += len(frame) - 10
                    late = (now - due) * 1000
                    stats["late_ms_max"] = max(stats["late_ms_max"], late)
                    stats["late_over_2ms"] += late > 2
    except Stop:
        pass
    finally:
        print(json.dumps(stats), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
