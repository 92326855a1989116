"""Our sans-I/O yamux Session against HashiCorp's yamux in Go, over real TCP on 127.0.0.1.

The unit tests check the session against our own reading of the spec; only a
foreign implementation can show that the two readings agree.  The Go peer
(peer/main.go) is built from Debian's golang-github-hashicorp-yamux-dev source
into pytest's tmp dir; the test drives our Session with a plain blocking
select loop, so nothing but the mux itself is under test.
"""

import hashlib
import os
import re
import select
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from runewarp.proto.mux.events import (
    DataReceived,
    PingAcknowledged,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from runewarp.proto.mux.frames import RESET_BEFORE_BACKEND
from runewarp.proto.mux.session import Role, Session

PEER_SRC = Path(__file__).resolve().parent / "peer" / "main.go"
GOPATH = Path("/usr/share/gocode")
YAMUX_SRC = GOPATH / "src/github.com/hashicorp/yamux"
DEADLINE = 90.0  # seconds for one exchange; the timeout mark is the backstop
# The one log line of the peer's that is no surprise (see Link.finish).
STRAY_UPDATE = re.compile(r"\[WARN\] yamux: frame for missing stream: Vsn:0 Type:1 Flags:0 ")


@pytest.fixture(scope="module")
def peer_bin(tmp_path_factory):
    """The Go peer, built offline (GOPATH mode) from the Debian-packaged yamux source."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("`go` is not installed (apt-get install golang-go)")
    if not YAMUX_SRC.is_dir():
        pytest.skip(f"HashiCorp yamux source missing at {YAMUX_SRC} "
                    "(apt-get install golang-github-hashicorp-yamux-dev)")
    out = tmp_path_factory.mktemp("yamux-peer")
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(GOPATH), GOCACHE=str(out / "cache"),
               GOFLAGS="", CGO_ENABLED="0")
    build = subprocess.run([go, "build", "-o", str(out / "peer"), str(PEER_SRC)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"building the Go peer failed:\n{build.stderr}"
    return out / "peer"


def payload(stream_id, size):
    """The bytes either side sends on `stream_id`; mirrors payload() in peer/main.go."""
    out = bytearray()
    k = 0
    while len(out) < size:
        out += hashlib.sha256(f"{stream_id}:{k}".encode()).digest()
        k += 1
    return bytes(out[:size])


class Link:
    """Our Session on one end of a TCP connection, the Go peer on the other.

    `pump()` is one round of a select loop: flush our output, feed received
    bytes to the session, and collect the peer's stdout lines as they come, so
    a test can wait for the peer's verdicts while keeping the mux moving.
    """

    def __init__(self, sock, session, proc, stderr_path):
        self.sock = sock
        self.session = session
        self.proc = proc
        self.stderr_path = stderr_path
        self.out = bytearray()
        self.lines = []
        self._partial = b""
        self._stdout_open = True
        self.deadline = time.monotonic() + DEADLINE

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def pump(self, timeout=0.05):
        """One select round; returns the mux events it produced."""
        now = time.monotonic()
        assert now < self.deadline, f"exchange timed out; peer said {self.lines}\n{self.stderr()}"
        self.out += self.session.data_to_send()
        readers = [self.sock] + ([self.proc.stdout] if self._stdout_open else [])
        readable, writable, _ = select.select(readers, [self.sock] if self.out else [], [],
                                              timeout)
        if self.proc.stdout in readable:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                self._stdout_open = False
                self.peer_failed("closed its stdout")
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [line.decode() for line in lines]
        data = None
        try:
            if writable:
                del self.out[:self.sock.send(self.out)]
            if self.sock in readable:
                data = self.sock.recv(1 << 18)
        except BlockingIOError:
            pass
        except ConnectionError as exc:
            self.peer_failed(f"broke the connection ({exc})")
        if data == b"":
            self.peer_failed("hung up early")
        events = self.session.receive_data(data, time.monotonic()) if data else []
        return events + self.session.handle_timer(time.monotonic())

    def peer_failed(self, what):
        """Fail with the peer's own account of what went wrong."""
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        raise AssertionError(f"peer {what}, exit status {self.proc.returncode}; "
                             f"it said {self.lines}\n{self.stderr()}") from None

    @property
    def peer_done(self):
        return "done" in self.lines

    @property
    def flushed(self):
        return not self.out and not self.session.outbound_pending

    def finish(self):
        """Hang up cleanly and require the peer to exit 0 (it checks all streams closed)."""
        while not self.flushed:
            self.pump()
        self.sock.shutdown(socket.SHUT_WR)
        while True:  # the peer exits once it sees our EOF, closing its end
            assert time.monotonic() < self.deadline, "peer did not hang up"
            select.select([self.sock], [], [], 1)
            try:
                if not self.sock.recv(1 << 18):
                    break
            except BlockingIOError:
                pass
        rest, _ = self.proc.communicate(timeout=10)
        self.lines += (self._partial + rest).decode().splitlines()
        stderr = self.stderr()
        assert self.proc.returncode == 0, f"peer failed:\n{stderr}"
        # HashiCorp logs protocol surprises (stray ACKs, data for closed streams...) as
        # [ERR]/[WARN].  A window update crossing the peer's FIN is expected: we grant
        # credit as we consume, without knowing the peer has just finished sending.
        surprises = [line for line in stderr.splitlines()
                     if ("[ERR]" in line or "[WARN]" in line) and not STRAY_UPDATE.search(line)]
        assert not surprises, stderr


@contextmanager
def link(peer_bin, tmp_path, role, *peer_args):
    """Start the peer with the yamux role opposite to `role`, connected to a fresh Session."""
    go_mode = "server" if role is Role.CLIENT else "client"
    stderr_path = tmp_path / f"peer-{go_mode}.err"
    with socket.create_server(("127.0.0.1", 0)) as listener, open(stderr_path, "wb") as err:
        listener.settimeout(20)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [peer_bin, "-mode", go_mode, "-addr", f"127.0.0.1:{port}", "-timeout", "80s",
             *map(str, peer_args)], stdout=subprocess.PIPE, stderr=err)
        sock = None
        try:
            sock, _ = listener.accept()
            sock.setblocking(False)
            yield Link(sock, Session(role, now=time.monotonic()), proc, stderr_path)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if sock is not None:
                sock.close()


class Exchange:
    """Our half of the bulk test: echo the peer's streams, send our own and collect their echoes.

    Echoed bytes are reported with `consumed()` only once `send_data()` has taken
    them, so a slow peer reader throttles its own writer through our window,
    just as the tunnel's splice does.
    """

    def __init__(self, session, streams, size):
        self.session = session
        self.size = size
        self.mine = {}  # stream id -> [bytes still to send, echo digest, echo length, ended]
        for _ in range(streams):
            sid = session.open_stream()
            self.mine[sid] = [memoryview(payload(sid, size)), hashlib.sha256(), 0, False]
        self.theirs = {}  # stream id -> [bytes to echo, digest, length, FIN seen, FIN sent]

    def handle(self, event):
        sid = getattr(event, "stream_id", None)
        if isinstance(event, StreamOpened):
            assert sid not in self.mine
            self.theirs[sid] = [bytearray(), hashlib.sha256(), 0, False, False]
        elif isinstance(event, DataReceived):
            if sid in self.mine:
                state = self.mine[sid]
                state[1].update(event.data)
                state[2] += len(event.data)
                self.session.consumed(sid, len(event.data))
            else:
                state = self.theirs[sid]
                state[0] += event.data
                state[1].update(event.data)
                state[2] += len(event.data)
        elif isinstance(event, StreamEnded):
            (self.mine if sid in self.mine else self.theirs)[sid][3] = True
        elif isinstance(event, StreamReset):
            raise AssertionError(f"peer reset stream {sid}")

    def send(self):
        """Push whatever the send windows allow; FIN each direction once it is drained."""
        session = self.session
        for sid, state in self.mine.items():
            if state[0]:
                state[0] = state[0][session.send_data(sid, state[0]):]
                if not state[0]:
                    session.end_stream(sid)
        for sid, state in self.theirs.items():
            if state[0]:
                taken = session.send_data(sid, state[0])
                del state[0][:taken]
                session.consumed(sid, taken)
            if state[3] and not state[0] and not state[4]:
                session.end_stream(sid)
                state[4] = True

    def complete(self, peer_streams):
        return (len(self.theirs) == peer_streams
                and all(s[3] for s in self.mine.values())
                and all(s[4] for s in self.theirs.values())
                and self.session.active_streams == 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT], ids=["go-client", "go-server"])
def test_bulk_both_ways(peer_bin, tmp_path, role):
    """8 × 3 MB from us and 4 × 3 MB from Go, all echoed at once.

    3 MB is twelve 256 KiB windows, so every stream depends on window updates
    from both implementations in both directions, interleaved over one connection.
    """
    ours, theirs, size = 8, 4, 3 * 1024 * 1024
    with link(peer_bin, tmp_path, role, "-open", theirs, "-size", size,
              "-accept", ours) as ln:
        exchange = Exchange(ln.session, ours, size)
        assert all(sid % 2 == (role is Role.CLIENT) for sid in exchange.mine)
        while not (exchange.complete(theirs) and ln.peer_done):
            for event in ln.pump():
                exchange.handle(event)
            exchange.send()
        ln.finish()

    expected = {sid: hashlib.sha256(payload(sid, size)).hexdigest()
                for sid in [*exchange.mine, *exchange.theirs]}
    for sid, (_, digest, length, _) in exchange.mine.items():
        assert (length, digest.hexdigest()) == (size, expected[sid]), f"our stream {sid}"
        assert f"echo {sid} {size} {expected[sid]}" in ln.lines
    for sid, (_, digest, length, _, _) in exchange.theirs.items():
        assert sid % 2 == (role is Role.SERVER)
        assert (length, digest.hexdigest()) == (size, expected[sid]), f"peer stream {sid}"
        assert f"ok-open {sid} {expected[sid]}" in ln.lines


@pytest.mark.timeout(120)
@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT], ids=["go-client", "go-server"])
def test_ping_both_ways(peer_bin, tmp_path, role):
    """Go ACKs our ping with its value intact, and we answer Go's Session.Ping()."""
    with link(peer_bin, tmp_path, role, "-ping") as ln:
        ln.session.ping(0xC0FFEE)
        acked = []
        while not (acked and ln.peer_done):
            acked += [e.value for e in ln.pump() if isinstance(e, PingAcknowledged)]
        ln.finish()
    assert acked == [0xC0FFEE]
    assert any(line.startswith("ok-ping ") for line in ln.lines)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT], ids=["go-client", "go-server"])
def test_go_away(peer_bin, tmp_path, role):
    """After our go away Go's Open fails, yet the stream already open finishes normally,
    and a stream we open after our own go away is served: only its receiver stops opening.

    Our streams' data follows the go away on the wire, so by the time Go has
    echoed it to our FIN the go away has certainly been processed.
    """
    size = 300 * 1024
    with link(peer_bin, tmp_path, role, "-accept", 2, "-expect-goaway") as ln:
        exchange = Exchange(ln.session, 1, size)
        ln.session.go_away()
        late = ln.session.open_stream()
        exchange.mine[late] = [memoryview(payload(late, size)), hashlib.sha256(), 0, False]
        while not (exchange.complete(0) and ln.peer_done):
            for event in ln.pump():
                exchange.handle(event)
            exchange.send()
        ln.finish()
    assert len(exchange.mine) == 2
    for sid, (_, digest, length, _) in exchange.mine.items():
        assert (length, digest.hexdigest()) == (size, hashlib.sha256(payload(sid, size)).hexdigest())
    assert "ok-goaway remote end is not accepting connections" in ln.lines


@pytest.mark.timeout(120)
def test_a_reset_code_is_harmless_to_hashicorp_yamux(peer_bin, tmp_path):
    """As a Runewarp Client does, we reset streams Go opened with RESET_BEFORE_BACKEND in the
    RST's length: Go sees a plain reset, and the streams it opens next work as ever."""
    size, resets = 300 * 1024, 3
    with link(peer_bin, tmp_path, Role.CLIENT, "-expect-reset", resets, "-open", 2,
              "-size", size) as ln:
        exchange = Exchange(ln.session, 0, size)
        reset = []
        while not (len(reset) == resets and exchange.complete(2) and ln.peer_done):
            for event in ln.pump():
                if isinstance(event, StreamOpened) and len(reset) < resets:
                    ln.session.reset_stream(event.stream_id, RESET_BEFORE_BACKEND)
                    reset.append(event.stream_id)
                else:
                    exchange.handle(event)
            exchange.send()
        ln.finish()
    assert [f"ok-reset {sid}" for sid in reset] == [line for line in ln.lines
                                                    if line.startswith("ok-reset")]
    assert sum(line.startswith("ok-open") for line in ln.lines) == 2
