"""One fuzz target per decoder that reads peer bytes, shared by the short profile
(tests/fuzz/test_decoders.py, hypothesis, in `make test`) and the long one
(tests/fuzz/run.py, atheris, `make fuzz`).

A target feeds one input to its decoder in the splits a network could make and lets
through only the decoder's documented outcomes: a result, "need more data" (None or
no frames) or its typed error.  Any other exception, or a result that breaks the
decoder's own contract (e.g. consuming more bytes than it was given), is a finding.
"""

from pathlib import Path

from runewarp.errors import RemoteProtocolError
from runewarp.proto import clienthello, control, proxyv2, quic
from tests import clienthellos
from runewarp.proto.mux import frames
from runewarp.proto.mux.session import Role, Session
from runewarp.proto.quicwire import REASONS

FIXTURES = Path(__file__).resolve().parent.parent / "proto" / "fixtures"
QUIC_DCID = bytes(range(8))


def _split(data):
    """A split point taken from the input itself, so the fuzzer steers it too."""
    return data[0] % (len(data) + 1) if data else 0


def clienthello_target(data):
    cut = _split(data)
    for chunks in ((data,), (data[:cut], data[cut:])):
        parser = clienthello.ClientHelloParser()
        try:
            for chunk in chunks:
                hello = parser.feed(chunk)
                if hello is not None:
                    assert 0 < hello.consumed <= len(data)
                    assert hello.server_name is None or isinstance(hello.server_name, str)
                    assert all(isinstance(p, str) for p in hello.alpn_protocols)
                    break
        except clienthello.ClientHelloError:
            pass


def proxyv2_target(data):
    try:
        result = proxyv2.decode(data)
    except proxyv2.ProxyHeaderError:
        return
    if result is None:
        return
    header, consumed = result
    assert 0 < consumed <= min(len(data), proxyv2.MAX_HEADER)
    assert proxyv2.decode(data[:consumed]) == result, "a header must not need bytes after it"


def mux_frames_target(data):
    decoder = frames.FrameDecoder(max_payload=1 << 16)
    cut = _split(data)
    seen = 0
    try:
        for chunk in (data[:cut], data[cut:]):
            decoder.feed(chunk)
            for frame in decoder:
                seen += frames.HEADER_SIZE + len(frame.payload)
    except RemoteProtocolError:
        return
    assert seen + decoder.buffered == len(data)


def mux_session_target(data):
    """The whole receive path of a mux Session (frames, windows, streams, pings)."""
    session = Session(Role.SERVER if data[:1] == b"\x00" else Role.CLIENT)
    cut = _split(data)
    now = 0.0
    try:
        for chunk in (data[:cut], data[cut:]):
            now += 1.0
            session.receive_data(chunk, now)
            session.data_to_send()
    except RemoteProtocolError:
        assert session.closed


def control_target(data):
    decoder = control.LineDecoder(max_line=4096)
    cut = _split(data)
    try:
        for chunk in (data[:cut], data[cut:]):
            for message in decoder.feed(chunk):
                for parse in (control.parse_hello, control.parse_welcome,
                              control.parse_service_health):
                    try:
                        parse(message)
                    except control.ControlError:
                        pass
    except control.ControlError:
        pass


def quic_initial_target(data):
    """The input as datagrams of one flow (whole, then its two halves), and as the frames
    of two sealed Initials, so the fuzzer reaches frame parsing and CRYPTO reassembly."""
    try:
        quic.first_header(data)
    except quic.QuicDropped as exc:
        assert (exc.reason, exc.fatal) == ("malformed", False)
    cut = _split(data)
    _feed_quic((data, data[:cut], data[cut:]))
    _feed_quic([quic.seal_initial(quic.VERSION_1, QUIC_DCID, b"", n, frames)
                for n, frames in enumerate((data[:cut], data[cut:]))])


def _feed_quic(datagrams):
    reader = quic.InitialReader()
    for datagram in datagrams:
        before = (reader.version, reader.dcid, reader.packets)
        try:
            hello = reader.feed(datagram)
        except quic.QuicDropped as exc:
            assert exc.reason in REASONS
            assert exc.fatal or (reader.version, reader.dcid, reader.packets) == before
            continue
        if hello is not None:
            assert 0 < hello.consumed <= quic.MAX_CRYPTO
            assert reader.packets <= quic.MAX_INITIALS


def _hello_records():
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.bin"))]


def _proxy_headers():
    return [proxyv2.encode(("192.0.2.1", 1234), ("198.51.100.2", 443)),
            proxyv2.encode(("2001:db8::1", 1), ("::ffff:192.0.2.1", 443)),
            proxyv2.encode(("192.0.2.1", 1), ("192.0.2.2", 2), "udp")]


def _quic_initials():
    """Datagrams (v1 coalesced, v2), and plain frames for the sealed half of the target."""
    message = clienthellos.build("app.example.com", ["h3"])[5:]
    frames = [quic.crypto_frame(0, message[:60]), b"\x01", quic.crypto_frame(60, message[60:])]
    head = quic.seal_initial(quic.VERSION_1, QUIC_DCID, b"\x01" * 4, 0, frames[0], pad_to=0)
    tail = quic.seal_initial(quic.VERSION_1, QUIC_DCID, b"\x01" * 4, 1, frames[1:], pad_to=1200 - len(head))
    return [head + tail,
            quic.seal_initial(quic.VERSION_2, QUIC_DCID, b"", 7, quic.crypto_frame(0, message), pn_length=2),
            b"".join(frames)]


def _mux_frames():
    header = frames.HEADER.pack
    return [header(0, 1, 1, 1, 0) + header(0, 0, 0, 1, 5) + b"hello" + header(0, 2, 0, 0, 7)
            + header(0, 3, 0, 0, 0), header(0, 1, 2, 2, 262144)]


def _control_lines():
    return [control.encode(control.hello("1.0", "abc", ["a.example.com"], False)),
            control.encode(control.welcome("apps", "1.0")),
            b'{"type":"service-health","unhealthy":["a.example.com"],"healthy":[]}\n',
            b'{"type":"x","a":[[[{"b":"\\u00e9"}]]]}\n']


TARGETS = {
    "clienthello": (clienthello_target, _hello_records),
    "proxyv2": (proxyv2_target, _proxy_headers),
    "mux-frames": (mux_frames_target, _mux_frames),
    "mux-session": (mux_session_target, _mux_frames),
    "control": (control_target, _control_lines),
    "quic-initial": (quic_initial_target, _quic_initials),
}
