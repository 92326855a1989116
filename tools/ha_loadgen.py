"""Visitor load for the HA scenario (tools/ha_demo.py): paced HTTPS requests until SIGTERM.

    python tools/ha_loadgen.py --address IP --host NAME --ca CA [--port 443] [--rate 100]
                               [--threads 32] [--max-duration 120]

Each request is a fresh TCP connection and a full TLS handshake with SNI NAME (checked
against CA), one `GET /`, the whole reply read; the body must be `ADDRESS BACKEND`, the
Visitor address the Local backend got through the PROXY header chain and which backend
answered.  Requests start at `--rate` per second in total (a slot missed by a busy worker
is run late, not skipped).  SIGTERM (or `--max-duration`) stops new requests; requests
in flight finish; then one JSON object goes to stdout: served, failed, failures (start and
end wall-clock times, reason), the addresses and backends the bodies named, and the start
times of the served requests.
"""

import argparse
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from loadgen import classify, read_reply, request_for, wait_for_close  # noqa: E402

BODY = re.compile(rb"^(\S+) (\S+)\n$")


def one_request(ctx, args, request):
    """One Visitor connection: (address, backend) from the body; raises on any failure."""
    with socket.create_connection((args.address, args.port), timeout=args.timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=args.host) as tls:
            tls.sendall(request)
            status, body = read_reply(tls)
            match = BODY.match(body)
            if not status.startswith(b"HTTP/1.1 200") or not match:
                raise ValueError(f"bad-response: {status[:40]!r} {body[:80]!r}")
            wait_for_close(tls, args.timeout)
    return match.group(1).decode(), match.group(2).decode()


def run(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    request = request_for(args.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    started = time.time()
    ticket = [0]
    served, failures, addresses, backends = [], [], {}, {}

    def next_slot():
        with lock:
            slot = started + ticket[0] / args.rate
            ticket[0] += 1
        return slot

    def worker():
        while True:
            slot = next_slot()
            while not stop.is_set() and time.time() < slot:
                stop.wait(min(0.05, max(0.0, slot - time.time())))
            if stop.is_set() or slot > started + args.max_duration:
                return
            begin = time.time()
            try:
                address, backend = one_request(ctx, args, request)
            except Exception as exc:  # every failure is a result, none stops the run
                reason = str(exc) if isinstance(exc, ValueError) else classify(exc)
                with lock:
                    failures.append({"start": round(begin, 3), "end": round(time.time(), 3),
                                     "reason": reason})
                continue
            with lock:
                served.append(round(begin, 3))
                addresses[address] = addresses.get(address, 0) + 1
                backends[backend] = backends.get(backend, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.max_duration + args.timeout * 3)
    ended = time.time()
    json.dump({"served": len(served), "failed": len(failures), "failures": failures,
               "addresses": addresses, "backends": backends, "started": started,
               "ended": ended, "rate": round(len(served) / max(ended - started, 1e-9), 1),
               "served_starts": served}, sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--host", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--max-duration", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
