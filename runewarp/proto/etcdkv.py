"""The API Tunnel table as etcd keys, without I/O: the JSON bodies of etcd's HTTP gateway
(v3 API: base64 keys and values, int64 numbers as strings) and the table read back from them.

A Tunnel `name` is the key `<prefix><name>`; its value is the record's canonical JSON
(proto/apitunnels.py).  A range over the prefix gives the whole table at one revision; a
watch response gives the changes since.  Each key's `mod_revision` is kept beside the table:
a compare-and-set compares it, not the value's bytes, so a record written by hand in another
JSON form, or a value that is no record, can still be replaced.  A value that is no record
(or the key that is the prefix itself, which names no Tunnel) is left out of the table and
reported, so one bad key never hides the rest of the table.
"""

import base64
import json

from ..errors import RemoteProtocolError
from .apitunnels import FIELDS, canonical


def _b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def _unb64(text):
    return base64.b64decode(text or "")


def key(prefix, name):
    return _b64(prefix + name)


def range_end(prefix):
    """The end of the key range of every key starting with `prefix` (etcd's prefix rule; the
    last byte of UTF-8 text is never 0xff, so it can always be incremented)."""
    data = bytearray(prefix.encode())
    if not data:
        return _b64(b"\0")  # every key
    data[-1] += 1
    return _b64(bytes(data))


def range_request(prefix):
    return {"key": _b64(prefix), "range_end": range_end(prefix)}


def watch_request(prefix, start_revision):
    return {"create_request": {"key": _b64(prefix), "range_end": range_end(prefix),
                               "start_revision": str(start_revision)}}


def must_be_absent(prefix, name):
    return {"key": key(prefix, name), "target": "CREATE", "result": "EQUAL",
            "create_revision": "0"}


def must_be_at(prefix, name, mod_revision):
    """The key was last changed at `mod_revision` (as this node read it): nobody wrote it since."""
    return {"key": key(prefix, name), "target": "MOD", "result": "EQUAL",
            "mod_revision": str(mod_revision)}


def put_txn(prefix, name, record, compares=()):
    """The transaction that stores `record` as `name` when every compare holds."""
    return {"compare": list(compares),
            "success": [{"request_put": {"key": key(prefix, name),
                                         "value": _b64(canonical(record))}}]}


def delete_txn(prefix, name, compares=()):
    return {"compare": list(compares),
            "success": [{"request_delete_range": {"key": key(prefix, name)}}]}


def revision(response):
    """The store revision an etcd answer was made at."""
    try:
        return int(response["header"]["revision"])
    except (KeyError, TypeError, ValueError):
        raise RemoteProtocolError("etcd answer without a header revision") from None


def record_of(value):
    """The record a stored value holds; ValueError saying why it is none."""
    try:
        record = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        raise ValueError(f"not a JSON object with exactly {' and '.join(FIELDS)}")
    for field in FIELDS:
        items = record[field]
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise ValueError(f"{field} is not a non-empty array of strings")
    return record


def _name(prefix, kv):
    """The Tunnel name of a key; "" for the prefix itself (a key a range over the prefix
    returns, so etcd is right to send it: the caller reports it as no record)."""
    name = _unb64(kv.get("key")).decode("utf-8", "replace")
    if not name.startswith(prefix):
        raise RemoteProtocolError(f"etcd returned key {name!r} outside the prefix {prefix!r}")
    return name[len(prefix):]


def _mod_revision(kv):
    try:
        return int(kv["mod_revision"])
    except (KeyError, TypeError, ValueError):
        raise RemoteProtocolError("etcd returned a key without its mod_revision") from None


def value(kv):
    """The stored bytes of one key of an etcd answer."""
    return _unb64(kv.get("value"))


def apply_kv(table, revisions, prefix, kv, deleted=False):
    """Set (or with `deleted` remove) one key of `table` and of `revisions` (name ->
    mod_revision, kept for the keys left out too) in place; the problem with its value as
    (name, reason), or None."""
    name = _name(prefix, kv)
    table.pop(name, None)
    revisions.pop(name, None)
    if deleted:
        return None
    revisions[name] = _mod_revision(kv)
    if not name:
        return name, "the key is the prefix itself, which names no Tunnel"
    try:
        table[name] = record_of(value(kv))
    except ValueError as exc:
        return name, str(exc)
    return None


def read_range(response, prefix):
    """A range answer as (table, revisions, revision, [(name, reason) of the keys left out])."""
    table, revisions, invalid = {}, {}, []
    for kv in response.get("kvs", ()):
        problem = apply_kv(table, revisions, prefix, kv)
        if problem:
            invalid.append(problem)
    return table, revisions, revision(response), invalid


def read_watch(line, prefix, table, revisions):
    """One line of the watch stream applied to copies of `table` and `revisions`: (table,
    revisions, revision, invalid), or None for a line without changes (the watch's creation,
    a progress note).
    RemoteProtocolError when the watch ended on etcd's side (canceled, compacted) or the line
    is not a watch answer: the caller reads the whole table again."""
    try:
        message = json.loads(line)
        result = message["result"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise RemoteProtocolError(f"not a watch answer: {line[:200]!r}") from None
    if result.get("canceled") or result.get("compact_revision", "0") != "0":
        reason = result.get("cancel_reason") or f"compacted at {result.get('compact_revision')}"
        raise RemoteProtocolError(f"etcd ended the watch: {reason}")
    events = result.get("events")
    if not events:
        return None
    table, revisions, invalid = dict(table), dict(revisions), []
    for event in events:
        problem = apply_kv(table, revisions, prefix, event.get("kv", {}),
                           event.get("type") == "DELETE")
        if problem:
            invalid.append(problem)
    return table, revisions, revision(result), invalid
