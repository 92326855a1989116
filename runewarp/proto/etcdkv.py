"""The API Tunnel table as etcd keys, without I/O: the JSON bodies of etcd's HTTP gateway
(v3 API: base64 keys and values, int64 numbers as strings) and the table read back from them.

A Tunnel `name` is the key `<prefix><name>`; its value is the record's canonical JSON
(proto/apitunnels.py: equal records give equal bytes, so etcd can compare them).  A
range over the prefix gives the whole table at one revision; a watch response gives the
changes since.  A value that is no record (written by hand, say) is left out and reported, so
one bad key never hides the rest of the table.
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


def must_equal(prefix, name, record):
    return {"key": key(prefix, name), "target": "VALUE", "result": "EQUAL",
            "value": _b64(canonical(record))}


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
    name = _unb64(kv.get("key")).decode("utf-8", "replace")
    if not name.startswith(prefix) or name == prefix:
        raise RemoteProtocolError(f"etcd returned key {name!r} outside the prefix {prefix!r}")
    return name[len(prefix):]


def value(kv):
    """The stored bytes of one key of an etcd answer."""
    return _unb64(kv.get("value"))


def apply_kv(table, prefix, kv, deleted=False):
    """Set (or with `deleted` remove) one key of `table` in place; the problem with its value
    as (name, reason), or None."""
    name = _name(prefix, kv)
    table.pop(name, None)
    if deleted:
        return None
    try:
        table[name] = record_of(value(kv))
    except ValueError as exc:
        return name, str(exc)
    return None


def read_range(response, prefix):
    """A range answer as (table, revision, [(name, reason) of the keys left out])."""
    table, invalid = {}, []
    for kv in response.get("kvs", ()):
        problem = apply_kv(table, prefix, kv)
        if problem:
            invalid.append(problem)
    return table, revision(response), invalid


def read_watch(line, prefix, table):
    """One line of the watch stream applied to a copy of `table`: (table, revision, invalid),
    or None for a line without changes (the watch's creation, a progress note).
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
    table, invalid = dict(table), []
    for event in events:
        problem = apply_kv(table, prefix, event.get("kv", {}), event.get("type") == "DELETE")
        if problem:
            invalid.append(problem)
    return table, revision(result), invalid
