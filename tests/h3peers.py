"""Real QUIC peers for tests/e2e/test_quic.py and `make bench`: aioquic and plain UDP.

- `H3Backend` / `serve`: an aioquic HTTP/3 server, the Local backend, with a certificate
  made by `runewarp client public-cert init`; GET /size/N answers N bytes of `body(N)`
  and an `x-backend` header naming the server.
- `fetch`: an aioquic HTTP/3 client, the Visitor.  It sends to any UDP address with SNI
  = the Public hostname, verifies the backend's certificate against its CA and returns
  status, body hash and the peer certificate's fingerprint.  Knobs: QUIC v2 first, and
  a ClientHello spread over several Initial packets (aioquic's quantum-readiness
  transport parameter, 1,200 bytes).
- `Shim`: a thread between a client and a UDP address that sends a client's second
  datagram before its first and the first one twice.
- `UdpEcho`: a UDP echo backend (a thread, or `udp-echo` as its own process).
- `sealed_initial` / `initial_garbage`: the first datagram of a flow (a real client
  Initial carrying a ClientHello for a hostname) and Initial-looking garbage.

    python -m tests.h3peers serve CERT KEY [NAME]        # prints the UDP port
    python -m tests.h3peers get HOST:PORT HOSTNAME CA [PATH] [--v2] [--big-hello] [--shim]
    python -m tests.h3peers udp-echo                     # prints the UDP port

Stdlib, aioquic and runewarp.proto only: never pytest, never gevent.
"""

import asyncio
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect, serve as quic_serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

from tests.backend import pattern as body  # the N bytes GET /size/N answers, as the TCP backend's

ROOT = Path(__file__).resolve().parent.parent


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- the Local backend ------------------------------------------------------------------

class _H3Server(QuicConnectionProtocol):
    name = "h3peers"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = None

    def quic_event_received(self, event):
        if self._h3 is None:
            self._h3 = H3Connection(self._quic)
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._answer(h3_event.stream_id, dict(h3_event.headers))

    def _answer(self, stream_id, headers):
        path = headers.get(b":path", b"").decode()
        status, data = b"404", b"not found\n"
        if path.startswith("/size/") and path[6:].isdigit():
            status, data = b"200", body(int(path[6:]))
        self._h3.send_headers(stream_id, [
            (b":status", status), (b"x-backend", self.name.encode()),
            (b"content-length", str(len(data)).encode())])
        self._h3.send_data(stream_id, data, end_stream=True)
        self.transmit()


async def serve(cert, key, name="h3peers", host="127.0.0.1", port=0):
    """An HTTP/3 server on `host`:`port` (UDP) until cancelled; returns (server, port)."""
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(str(cert), str(key))
    protocol = type("H3Server", (_H3Server,), {"name": name})
    server = await quic_serve(host, port, configuration=config, create_protocol=protocol)
    return server, server._transport.get_extra_info("sockname")[1]


class H3Backend:
    """`serve` in its own process (`python -m tests.h3peers serve`)."""

    def __init__(self, cert, key, name="h3peers"):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.h3peers", "serve", str(cert),
                                      str(key), name], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.kill()
            raise RuntimeError(f"h3peers serve did not start: {line!r}")
        self.port = int(line)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# -- the Visitor ---------------------------------------------------------------------------

@dataclass
class Fetched:
    status: int
    backend: str
    length: int
    sha256: str
    cert_sha256: str
    version: int


class _H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self._pending = {}
        self._terminated = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and not self._terminated.done():
            self._terminated.set_result(event)
        for h3_event in self._h3.handle_event(event):
            state = self._pending.get(getattr(h3_event, "stream_id", None))
            if state is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                state["headers"].update(dict(h3_event.headers))
            elif isinstance(h3_event, DataReceived):
                state["body"].append(h3_event.data)
            if h3_event.stream_ended:
                state["done"].set_result(None)

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        state = {"headers": {}, "body": [],
                 "done": asyncio.get_running_loop().create_future()}
        self._pending[stream_id] = state
        self._h3.send_headers(stream_id, [
            (b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()),
            (b":path", path.encode())], end_stream=True)
        self.transmit()
        await asyncio.wait([state["done"], self._terminated], return_when=asyncio.FIRST_COMPLETED)
        if not state["done"].done():
            raise ConnectionError(f"connection closed: {self._terminated.result()}")
        return state["headers"], b"".join(state["body"])


def client_config(hostname, ca, version=None, big_hello=False):
    """The Visitor's QuicConfiguration: SNI `hostname`, the backend verified against `ca`;
    `version` first (RFC 9369 compatible negotiation), `big_hello` adds 1,200 bytes of
    transport parameters so the ClientHello spans two Initial packets."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=hostname)
    config.load_verify_locations(cafile=str(ca))
    if version is not None:
        config.original_version = version
        config.supported_versions = [version]
    config.quantum_readiness_test = big_hello
    return config


async def fetch_async(address, hostname, ca, path="/size/1024", *, version=None,
                      big_hello=False, timeout=30):
    host, port = address
    config = client_config(hostname, ca, version, big_hello)

    async def exchange():
        async with connect(host, port, configuration=config, create_protocol=_H3Client) as client:
            headers, data = await client.get(hostname, path)
            peer = client._quic.tls._peer_certificate
            from cryptography.hazmat.primitives.serialization import Encoding
            return Fetched(status=int(headers[b":status"]),
                           backend=headers.get(b"x-backend", b"").decode(), length=len(data),
                           sha256=sha256(data), cert_sha256=sha256(peer.public_bytes(Encoding.DER)),
                           version=client._quic._version)

    return await asyncio.wait_for(exchange(), timeout)


def fetch(address, hostname, ca, path="/size/1024", **options):
    """One HTTP/3 GET over a new QUIC connection to `address` (host, port): `Fetched`.
    Raises TimeoutError when nothing completes within `timeout` seconds."""
    return asyncio.run(fetch_async(address, hostname, ca, path, **options))


def cert_sha256(path):
    """SHA-256 of the first certificate in the PEM file `path` (the leaf)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    leaf = x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    return sha256(leaf.public_bytes(Encoding.DER))


# -- UDP helpers ---------------------------------------------------------------------------

class Shim:
    """A UDP hop for one client: the client's first datagram is held until its second
    arrives (or `hold` seconds pass), then the second is sent, then the first twice.
    Everything else passes as is, both ways.  `.sent`: the indexes of the first 8
    client datagrams in the order they went out; `.received`: the first 4 as received."""

    def __init__(self, target, hold=0.5):
        self.target = target
        self.hold = hold
        self.sent = []
        self.received = []
        self._down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._down.bind(("127.0.0.1", 0))
        self._up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._up.connect(target)
        self.address = self._down.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        client, held, count = None, None, 0
        while not self._stop.is_set():
            ready = select.select([self._down, self._up], [], [], self.hold if held else 0.2)[0]
            if not ready and held is not None:
                self._send(*held)
                held = None
            for sock in ready:
                try:
                    data, peer = sock.recvfrom(65536)
                except OSError:
                    continue
                if sock is self._up:
                    if client is not None:
                        self._down.sendto(data, client)
                    continue
                client, count = peer, count + 1
                if count <= 4:
                    self.received.append(data)
                if count == 1:
                    held = (0, data)
                elif count == 2 and held is not None:
                    self._send(1, data)
                    self._send(*held)
                    self._send(*held)
                    held = None
                else:
                    self._send(count - 1, data)

    def _send(self, index, data):
        if len(self.sent) < 8:
            self.sent.append(index)
        try:
            self._up.send(data)
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._down.close()
        self._up.close()


class UdpEcho:
    """A UDP Local backend on 127.0.0.1 in a thread: every datagram goes back to its sender
    (after `prefix`), and is kept with its sender in arrival order (`received`, up to `keep`)."""

    def __init__(self, prefix=b"", keep=10_000):
        self.prefix = prefix
        self.keep = keep
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.count = 0
        self.peers = set()
        self.received = []  # (sender, datagram), the first `keep`
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                if self.sock.fileno() < 0:
                    return
                continue
            with self.cond:  # kept before the answer: whoever sees the answer sees it
                self.count += 1
                self.peers.add(peer)
                if len(self.received) < self.keep:
                    self.received.append((peer, data))
                self.cond.notify_all()
            self.answer(data, peer)

    def answer(self, data, peer):
        try:
            self.sock.sendto(self.prefix + data, peer)
        except OSError:
            pass

    def wait(self, count, timeout=10):
        """The first `count` (sender, datagram) pairs; fails past `timeout`."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received[:count])

    def close(self):
        self.sock.close()


def echo_forever():
    """`udp-echo`: the echo backend as a process of its own (the bench's)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)


def sealed_initial(hostname, dcid=None, version=None):
    """A client Initial (1,200 bytes) whose CRYPTO frame is a whole ClientHello for
    `hostname`: what a Visitor's first datagram looks like to the Server."""
    from runewarp.proto import quic

    from tests import clienthellos
    hello = clienthellos.build(hostname, ["h3"], random=os.urandom(64))[5:]  # no record header
    return quic.seal_initial(quic.VERSION_1 if version is None else version,
                             dcid or os.urandom(8), os.urandom(8), 0, [quic.crypto_frame(0, hello)])


def initial_garbage(rng, size=1200):
    """A datagram that looks like a v1 Initial (long header, version 1, 8-byte DCID) but
    whose payload is random bytes: it can never decrypt."""
    dcid = rng.randbytes(8)
    head = bytes([0xC0 | rng.randrange(4)]) + (1).to_bytes(4) + bytes([8]) + dcid + b"\x00\x00"
    length = size - len(head) - 2
    return head + (0x4000 | length).to_bytes(2) + rng.randbytes(length)


def _parse_address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv):
    command, args = argv[0], argv[1:]
    if command == "serve":
        async def run():
            _server, port = await serve(*args[:2], *(args[2:3] or ["h3peers"]))
            print(port, flush=True)
            await asyncio.Event().wait()
        asyncio.run(run())
    elif command == "get":
        flags = {a for a in args if a.startswith("--")}
        address, hostname, ca, *rest = [a for a in args if not a.startswith("--")]
        target = _parse_address(address)
        shim = Shim(target) if "--shim" in flags else None
        try:
            result = fetch(shim.address if shim else target, hostname, ca, *(rest[:1]),
                           version=0x6B3343CF if "--v2" in flags else None,
                           big_hello="--big-hello" in flags)
        finally:
            if shim:
                shim.close()
        print(json.dumps({**asdict(result), "shim": shim.sent if shim else None}))
    elif command == "udp-echo":
        echo_forever()
    else:
        raise SystemExit(f"usage: python -m tests.h3peers serve|get|udp-echo ... ({command}?)")


if __name__ == "__main__":
    main(sys.argv[1:])
