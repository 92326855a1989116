import struct, pytest
from tests.interop import test_yamux_interop as t
from tests.interop.test_yamux_interop import peer_bin  # noqa
from runewarp.proto.mux.session import Role

LOG = []
orig_send = t.Session.data_to_send
orig_recv = t.Session.receive_data
class Tap:
    def __init__(self, tag): self.buf = b""; self.tag = tag
    def feed(self, data):
        self.buf += bytes(data)
        while len(self.buf) >= 12:
            v, ty, fl, sid, ln = struct.unpack(">BBHII", self.buf[:12])
            size = 12 + (ln if ty == 0 else 0)
            if len(self.buf) < size: break
            self.buf = self.buf[size:]
            LOG.append((self.tag, ty, fl, sid, ln))
taps = {}
def data_to_send(self):
    d = orig_send(self); taps.setdefault((id(self),'out'), Tap('out')).feed(d); return d
def receive_data(self, data, now):
    taps.setdefault((id(self),'in'), Tap('in')).feed(data); return orig_recv(self, data, now)
t.Session.data_to_send = data_to_send
t.Session.receive_data = receive_data

@pytest.mark.parametrize("i", range(20))
@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_x(peer_bin, tmp_path, role, i):
    LOG.clear(); taps.clear()
    try:
        t.test_bulk_both_ways.__wrapped__(peer_bin, tmp_path, role) if hasattr(t.test_bulk_both_ways,'__wrapped__') else t.test_bulk_both_ways(peer_bin, tmp_path, role)
    except AssertionError as e:
        import re
        m = re.search(r"StreamID:(\d+) Length:(\d+)", str(e))
        sid = int(m.group(1))
        evs = [x for x in LOG if x[3] == sid and not (x[1] == 0 and x[2] == 0)]
        print("role", role, "stream", sid, "mine" , "\n".join(map(str, evs[-12:])))
        return
