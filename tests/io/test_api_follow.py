"""A Server applies a table its store reports as changed elsewhere (etcd's watch calls
`follow_api_tunnels`) like an API change: validated by the file's rules, swapped by the
reload, and the same table again (the echo of its own write) changes nothing."""

import gevent
import pytest

from runewarp import material
from runewarp.config import load_server_config
from runewarp.io.server import Server
from runewarp.logs import Logger

pytestmark = pytest.mark.timeout(30)
HOSTNAME = "tunnel.example.com"
A, B, C = "a" * 64, "b" * 64, "c" * 64


class Events(Logger):
    """Keeps (event, fields) instead of writing lines."""

    def __init__(self):
        super().__init__("trace")
        self.records = []

    def log(self, level, event, **fields):
        self.records.append((event, fields))

    def count(self, event):
        return sum(1 for name, _ in self.records if name == event)


@pytest.fixture
def server(tmp_path):
    material.init_server_cert(tmp_path / "cert", HOSTNAME)
    path = tmp_path / "server.toml"
    path.write_text(f'[server]\nhostname = "{HOSTNAME}"\npublic-bind-address = "127.0.0.1:0"\n'
                    f'cert-dir = "cert"\n[server.api]\nstate-file = "state.json"\n'
                    f'[[server.tunnels]]\nname = "static"\npublic-hostnames = ["static.example.com"]\n'
                    f'client-identity = "{A}"\n')
    started = Server(load_server_config(path), Events())
    started.start()
    yield started
    started.close_all()


def routed(server):
    return sorted(t.name for t in server.snapshot.tunnels)


def test_a_followed_table_is_applied_once_and_by_the_files_rules(server):
    events = server.log
    web = {"public-hostnames": ["app.example.com"], "client-identities": [B]}
    server.follow_api_tunnels({"web": web})
    assert routed(server) == ["static", "web"] and server.api_table == {"web": web}
    reloads = events.count("server-reloaded")
    server.follow_api_tunnels({"web": web})  # the echo of the same table
    assert events.count("server-reloaded") == reloads

    clash = {"public-hostnames": ["static.example.com"], "client-identities": [C]}
    server.follow_api_tunnels({"web": web, "clash": clash})
    assert routed(server) == ["static", "web"]
    assert [f["tunnel"] for name, f in events.records if name == "api-tunnel-refused"] == ["clash"]
    assert server.api_stored == {"web": web, "clash": clash}

    server.follow_api_tunnels({})
    assert routed(server) == ["static"] and server.api_table == {}


def test_a_table_older_than_a_local_change_made_while_it_waited_for_the_lock_is_dropped(
        server, monkeypatch):
    """The race of etcd's follower: a table read before this node's PUT reaches
    `follow_api_tunnels` only after that PUT took and released the lock.  `is_current` is the
    store's answer (EtcdStore: the table's revision is not older than its last write; here, no
    write since the table was read)."""
    web = {"public-hostnames": ["app.example.com"], "client-identities": [B]}
    written, put = [], server.store.put
    monkeypatch.setattr(server.store, "put", lambda *args, **kw: (put(*args, **kw), written.append(1)))
    server.config_lock.acquire()
    local = gevent.spawn(server.change_api_tunnel, "web", web, lambda current: True)
    gevent.sleep(0)  # the API PUT waits for the lock first ...
    stale = gevent.spawn(server.follow_api_tunnels, {}, lambda: not written)
    gevent.sleep(0)  # ... then the follower, with the table from before it
    server.config_lock.release()
    gevent.joinall([local, stale], raise_error=True)
    assert written and routed(server) == ["static", "web"] and server.api_stored == {"web": web}
