"""The etcd gateway's bodies for the API Tunnel table, without an etcd: the prefix range, the
watch stream's lines (changes, deletions, its end on etcd's side) and what is no record."""

import base64
import json

import pytest

from runewarp.errors import RemoteProtocolError
from runewarp.proto import etcdkv

PREFIX = "/runewarp/tunnels/"
WEB = {"public-hostnames": ["app.example.com"], "client-identities": ["ab" * 32]}


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def kv(name, value=None):
    entry = {"key": b64(PREFIX + name), "mod_revision": "7"}
    if value is not None:
        entry["value"] = b64(value)
    return entry


def line(result):
    return json.dumps({"result": {"header": {"revision": "9"}, **result}}).encode()


@pytest.mark.parametrize("prefix, end", [("/a/", b"/a0"), ("a\u00e9", "a\u00e9".encode()[:-1] + b"\xaa"), ("", b"\0")])
def test_the_range_of_a_prefix_ends_at_the_next_key_after_every_key_it_starts(prefix, end):
    assert base64.b64decode(etcdkv.range_end(prefix)) == end


def test_a_watch_line_applies_puts_and_deletes_to_a_copy_of_the_table():
    table, revisions = {"old": WEB}, {"old": 3}
    events = [{"kv": kv("web", etcdkv.canonical(WEB))}, {"type": "DELETE", "kv": kv("old")},
              {"kv": kv("junk", b"[1]")}]
    new, new_revisions, revision, invalid = etcdkv.read_watch(line({"events": events}), PREFIX,
                                                              table, revisions)
    assert (new, revision) == ({"web": WEB}, 9) and table == {"old": WEB}
    assert new_revisions == {"web": 7, "junk": 7} and revisions == {"old": 3}
    assert invalid == [("junk", "not a JSON object with exactly public-hostnames and "
                                "client-identities")]


def test_a_line_without_events_changes_nothing_and_an_ended_watch_says_why():
    assert etcdkv.read_watch(line({"created": True}), PREFIX, {}, {}) is None
    with pytest.raises(RemoteProtocolError, match="compacted at 5"):
        etcdkv.read_watch(line({"canceled": True, "compact_revision": "5"}), PREFIX, {}, {})
    with pytest.raises(RemoteProtocolError, match="not a watch answer"):
        etcdkv.read_watch(b'{"error": {"message": "lost leader"}}', PREFIX, {}, {})


def test_the_key_that_is_the_prefix_itself_is_no_record_and_a_key_outside_is_an_error():
    answer = {"header": {"revision": "9"}, "kvs": [kv("", b""), kv("web", etcdkv.canonical(WEB))]}
    assert etcdkv.read_range(answer, PREFIX) == (
        {"web": WEB}, {"": 7, "web": 7}, 9, [("", "the key is the prefix itself, which names no Tunnel")])
    outside = {"header": {"revision": "9"}, "kvs": [{"key": b64("/elsewhere"), "mod_revision": "1"}]}
    with pytest.raises(RemoteProtocolError, match="outside the prefix"):
        etcdkv.read_range(outside, PREFIX)


@pytest.mark.parametrize("value, reason", [
    (b"{", "not JSON"),
    (b'{"public-hostnames": ["a"]}', "exactly public-hostnames"),
    (b'{"public-hostnames": [], "client-identities": ["x"]}', "public-hostnames is not"),
    (b'{"public-hostnames": ["a"], "client-identities": [1]}', "client-identities is not"),
])
def test_a_value_that_is_no_record_is_refused_with_its_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        etcdkv.record_of(value)
