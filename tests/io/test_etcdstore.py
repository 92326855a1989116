"""EtcdStore against a real etcd (tests/etcd.py): the table as keys, compare-and-set, an
outage (StoreUnavailable at once, the cached table for a load), and the follower: another
writer's change handed on, the watch not blocking the event loop, one warning per outage and
the watch resumed once etcd is back."""

import base64
import io
import json
import re
import signal
import socket
from types import SimpleNamespace

import pytest

from runewarp.io.etcdstore import EtcdStore
from runewarp.io.tunnelstore import StoreConflict, StoreUnavailable
from runewarp.logs import Logger
from runewarp.proto.etcdkv import canonical

from ..conftest import free_port
from .. import etcd as etcd_helper
from ..etcd import (api_config, follower, follower_tables, gateway, needs_etcd, put_in_process,
                    raw_put, wait_table)

pytestmark = [needs_etcd, pytest.mark.timeout(60)]
etcd = etcd_helper.etcd  # fixture
PREFIX = "/runewarp/tunnels/"
WEB = {"public-hostnames": ["app.example.com"], "client-identities": ["ab" * 32]}
API = {"public-hostnames": ["api.example.com"], "client-identities": ["cd" * 32]}


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def store_for(tmp_path, *urls, name="node", tls=None):
    stream = io.StringIO()
    store = EtcdStore(api_config(tmp_path / f"{name}-state.json", urls, PREFIX, tls),
                      Logger(fmt="json", stream=stream))
    return store, stream


def events(stream, event):
    return [line for line in map(json.loads, stream.getvalue().splitlines())
            if line["event"] == event]


def test_records_are_canonical_json_under_the_prefix_and_every_node_reads_them(tmp_path, etcd):
    a, _ = store_for(tmp_path, etcd.url, name="a")
    b, _ = store_for(tmp_path, etcd.url, name="b")
    assert a.load() == {}
    a.put("web", WEB)
    a.put("api", API)
    kvs = gateway(etcd, "kv/range", {"key": _b64(PREFIX + "web")})["kvs"]
    assert base64.b64decode(kvs[0]["value"]) == canonical(WEB)
    assert b.load() == {"web": WEB, "api": API}
    assert [client.api_path for client in b._clients] == ["/v3/"]  # etcd3gw's pick for 3.4
    b.delete("web")
    assert a.load() == {"api": API}


def test_keys_outside_the_prefix_and_values_that_are_no_record_are_left_out(tmp_path, etcd):
    raw_put(etcd, "/runewarp/tunnels", "{}")  # the prefix without its slash: another key
    raw_put(etcd, "/runewarp/tunnels0", "{}")  # the first key past the prefix's range
    raw_put(etcd, PREFIX + "hand-written", "not json")
    raw_put(etcd, PREFIX + "web", canonical(WEB).decode())
    store, stream = store_for(tmp_path, etcd.url)
    assert store.load() == {"web": WEB}
    [warning] = events(stream, "api-store-invalid-record")
    assert warning["tunnel"] == "hand-written" and "not JSON" in warning["reason"]


def test_the_key_that_is_the_prefix_itself_is_an_invalid_record_never_an_outage(tmp_path, etcd):
    raw_put(etcd, PREFIX, "")  # `etcdctl put /runewarp/tunnels/ ""`
    raw_put(etcd, PREFIX + "web", canonical(WEB).decode())
    store, stream = store_for(tmp_path, etcd.url)
    assert store.load() == {"web": WEB}
    [warning] = events(stream, "api-store-invalid-record")
    assert warning["tunnel"] == "" and "prefix itself" in warning["reason"]
    assert not events(stream, "api-store-cache-used")
    store.put("api", API, expected=None)
    assert store.load() == {"web": WEB, "api": API}


def test_a_value_that_is_no_record_can_be_replaced_and_removed(tmp_path, etcd):
    raw_put(etcd, PREFIX + "web", "not json")  # another writer, by hand
    store, stream = store_for(tmp_path, etcd.url)
    assert store.load() == {}
    store.put("web", WEB, expected=None)  # what an API PUT of a Tunnel it does not list sends
    assert store.load() == {"web": WEB}
    raw_put(etcd, PREFIX + "web", '{"public-hostnames": []}')
    assert store.load() == {}
    store.delete("web", expected=None)
    assert gateway(etcd, "kv/range", {"key": _b64(PREFIX + "web")}).get("kvs") is None
    assert [e["by"] for e in events(stream, "api-store-invalid-record-replaced")] == ["put", "delete"]


def test_a_record_in_another_json_form_is_replaced_by_compare_and_set(tmp_path, etcd):
    raw_put(etcd, PREFIX + "web", json.dumps(WEB, indent=2))  # valid, not canonical
    store, _ = store_for(tmp_path, etcd.url)
    assert store.load() == {"web": WEB}
    store.put("web", API, expected=WEB)
    assert store.load() == {"web": API}
    store.delete("web", expected=API)
    assert store.load() == {}


def test_a_change_by_another_writer_since_the_last_read_still_conflicts(tmp_path, etcd):
    raw_put(etcd, PREFIX + "web", "not json")
    a, _ = store_for(tmp_path, etcd.url, name="a")
    b, _ = store_for(tmp_path, etcd.url, name="b")
    assert a.load() == b.load() == {}
    a.put("web", WEB, expected=None)
    with pytest.raises(StoreConflict, match="'web' exists"):
        b.put("web", API, expected=None)  # b still reads the invalid value it could replace
    assert b.load() == {"web": WEB}
    raw_put(etcd, PREFIX + "web", canonical(WEB).decode())  # the same record, written again
    with pytest.raises(StoreConflict, match="'web' was written again meanwhile"):
        b.put("web", API, expected=WEB)
    assert a.load() == {"web": WEB}
    a.put("web", API, expected=WEB)
    with pytest.raises(StoreConflict, match="'web' changed meanwhile"):
        b.delete("web", expected=WEB)
    assert b.load() == {"web": API}


def test_a_table_read_before_this_nodes_write_is_not_current_once_it_wrote(tmp_path, etcd):
    store, _ = store_for(tmp_path, etcd.url)
    store.load()
    given = []
    store._on_change = lambda table, is_current: given.append(is_current)
    raw_put(etcd, PREFIX + "api", canonical(API).decode())
    store._take(*store._call(store._read))
    store._hand_on()  # the follower hands this table on; the callback waits for its lock ...
    [is_current] = given
    assert is_current()
    store.put("web", WEB)  # ... while this node's own write lands
    assert not is_current()


def test_compare_and_set_refuses_a_write_based_on_a_stale_record(tmp_path, etcd):
    store, _ = store_for(tmp_path, etcd.url)
    store.put("web", WEB, expected=None)
    with pytest.raises(StoreConflict, match="'web' exists"):
        store.put("web", API, expected=None)
    with pytest.raises(StoreConflict, match="'web' changed meanwhile"):
        store.put("web", API, expected=API)
    with pytest.raises(StoreConflict, match="'web' changed meanwhile"):
        store.delete("web", expected=API)
    assert store.load() == {"web": WEB}
    store.put("web", API, expected=WEB)
    store.delete("web", expected=API)
    with pytest.raises(StoreConflict, match="'web' does not exist"):
        store.put("web", WEB, expected=WEB)
    assert store.load() == {}


def test_an_unreachable_endpoint_is_skipped_for_the_next(tmp_path, etcd):
    store, _ = store_for(tmp_path, f"http://127.0.0.1:{free_port()}", etcd.url)
    store.put("web", WEB)
    assert store.load() == {"web": WEB}


def test_etcd_down_writes_fail_at_once_a_load_uses_the_cache_and_etcd_back_works(tmp_path, etcd):
    store, _ = store_for(tmp_path, etcd.url)
    store.put("web", WEB)
    assert store.load() == {"web": WEB}  # and the cache in state-file
    etcd.stop()
    with pytest.raises(StoreUnavailable, match="etcd unreachable: http://127.0.0.1:\\d+: "
                                               "Connection refused"):
        store.put("api", API)
    with pytest.raises(StoreUnavailable):
        store.delete("web")
    restarted, stream = store_for(tmp_path, etcd.url)
    assert restarted.load() == {"web": WEB}
    [used] = events(stream, "api-store-cache-used")
    assert used["tunnels"] == 1 and "Connection refused" in used["reason"]
    never_loaded, _ = store_for(tmp_path, etcd.url, name="new")
    with pytest.raises(StoreUnavailable):
        never_loaded.load()  # no cache: a node that never saw the table does not guess it
    etcd.start()
    store.put("api", API)
    assert never_loaded.load() == {"web": WEB, "api": API}


def test_a_hung_etcd_is_a_store_unavailable_at_the_deadline_never_a_hang(tmp_path, etcd):
    """Two hung endpoints: each alone would answer requests' read timeout (2 s), both together
    only the store's own deadline (3 s) ends the call.  Monkey-patched in its own process, as in
    the Server, since only there can gevent's Timeout interrupt a socket."""
    store, _ = store_for(tmp_path, etcd.url)
    store.put("web", WEB)
    silent = socket.socket()  # listens, so the kernel accepts; nobody ever reads
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    etcd.proc.signal(signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
    try:
        reason = put_in_process(tmp_path / "hung-state.json", "api", API, etcd.url,
                                f"http://127.0.0.1:{silent.getsockname()[1]}")
    finally:
        etcd.proc.signal(signal.SIGCONT)
        silent.close()
    assert reason.startswith(f"etcd unreachable: {etcd.url}: ") and "Read timed out" in reason
    assert reason.endswith("no answer within 3s")
    store.put("api", API)
    assert store.load() == {"web": WEB, "api": API}


def test_etcd_over_tls_is_verified_with_etcd_ca_file_and_never_a_ca_of_the_environment(
        tmp_path, monkeypatch):
    tls = etcd_helper.tls_material(tmp_path / "tls")
    server = etcd_helper.Etcd(tmp_path / "etcd", tls=tls)
    try:
        # requests would let this bundle replace etcd-ca-file (requests issue 3829)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.client_ca))
        store, _ = store_for(tmp_path, server.url, tls=tls)
        store.put("web", WEB)
        assert store.load() == {"web": WEB}
        untrusting, _ = store_for(tmp_path, server.url, name="untrusting",
                                  tls=SimpleNamespace(ca=tls.client_ca, client_cert=tls.client_cert,
                                                      client_key=tls.client_key))
        with pytest.raises(StoreUnavailable, match="certificate verify failed"):
            untrusting.load()
    finally:
        server.stop()


def test_etcd_requiring_client_certificates_admits_the_node_with_etcd_cert_file(tmp_path):
    """etcd with --client-cert-auth and a PKI made by the openssl CLI: a node with
    etcd-cert-file and etcd-key-file reads and writes; one without is refused, and says so."""
    tls = etcd_helper.client_auth_material(tmp_path / "pki")
    server = etcd_helper.Etcd(tmp_path / "etcd", tls=tls)
    try:
        store, _ = store_for(tmp_path, server.url, tls=tls)
        store.put("web", WEB)
        assert store.load() == {"web": WEB}
        anonymous, _ = store_for(tmp_path, server.url, name="anonymous",
                                 tls=SimpleNamespace(ca=tls.ca, client_cert=None, client_key=None))
        with pytest.raises(StoreUnavailable, match=f"etcd unreachable: {server.url}: ") as refused:
            anonymous.put("api", API)
        # etcd refuses once the handshake is over (TLS 1.3): its alert, or a reset if it came first
        assert re.search(r"certificate|reset|EOF", str(refused.value)), refused.value
        assert store.load() == {"web": WEB}
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_the_follower_gets_other_writers_changes_and_resumes_after_an_outage(tmp_path, etcd):
    writer, _ = store_for(tmp_path, etcd.url, name="writer")
    writer.put("web", WEB)
    raw_put(etcd, PREFIX, "")  # no record, and no outage either
    node = follower(etcd.url, PREFIX, tmp_path / "follower-state.json")
    try:
        writer.put("api", API)
        wait_table(node, {"web": WEB, "api": API})
        writer.delete("web")
        wait_table(node, {"api": API})
        # The watch waits on a socket: the event loop keeps turning meanwhile.
        ticks = node.count('"hub-alive"')
        node.wait_count('"hub-alive"', ticks + 4, timeout=10)

        etcd.stop()
        node.wait_for('"api-store-unavailable".*Connection refused', timeout=10)
        ticks = node.count('"hub-alive"')
        node.wait_count('"hub-alive"', ticks + 8, timeout=10)  # several retries meanwhile
        assert node.count('"api-store-unavailable"') == 1
        assert follower_tables(node)[-1] == {"api": API}  # nothing applied during the outage

        etcd.start()
        node.wait_for('"api-store-recovered"', timeout=15)
        writer.put("web", WEB)
        wait_table(node, {"api": API, "web": WEB})
        assert node.count('"api-store-unavailable"') == 1
    finally:
        node.stop(timeout=10)
