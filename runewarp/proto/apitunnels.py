"""The configuration API's values, without I/O: API Tunnel records, their ETags, the stored
table's bytes, and which resource a request names (docs/api.md).

A record is what the API and the store keep of a Tunnel: `{"public-hostnames": [...],
"client-identities": [...]}`.  Its hostnames and identities are judged by the config file's
rules (config.server.with_api_tunnels); here only the JSON shape is.
"""

import hashlib
import json

from ..errors import RunewarpError

FIELDS = ("public-hostnames", "client-identities")
READ_ONLY = ("name", "source")  # in every GET answer: a PUT may send them back unchanged
TABLE_VERSION = 1


class RequestRefused(RunewarpError):
    """A request the API answers with `status` and `{"error": message}` (`allow`: a 405's)."""

    def __init__(self, status, message, allow=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def canonical(record):
    """The one byte form of a record: equal records give equal bytes (and ETags)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def etag(record):
    """A strong ETag of `record`: the quoted sha256 of its canonical form."""
    return '"' + hashlib.sha256(canonical(record)).hexdigest() + '"'


def if_match(header, record):
    """True when the If-Match `header` (None: absent) allows changing `record` (None: absent)."""
    if header is None:
        return True
    tags = [tag.strip() for tag in header.split(",")]
    if "*" in tags:
        return record is not None
    return record is not None and etag(record) in tags


def parse_record(body, name):
    """The record a PUT body gives the Tunnel `name`; RequestRefused 400 (not JSON) or 422
    (not a Tunnel's shape)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRefused(400, f"the body is not JSON: {exc}") from None
    except RecursionError:  # `[[[[…` deeper than the parser goes: not a Tunnel either
        raise RequestRefused(400, "the body is not JSON a Tunnel can be: nested too deep") from None
    if not isinstance(value, dict):
        raise RequestRefused(422, "the body must be a JSON object with public-hostnames and "
                                  "client-identities")
    unknown = sorted(set(value) - set(FIELDS) - set(READ_ONLY))
    if unknown:
        raise RequestRefused(422, f"unknown field {unknown[0]!r}; a Tunnel has "
                                  f"{' and '.join(FIELDS)}")
    if value.get("name", name) != name:
        raise RequestRefused(422, f"name {value['name']!r} differs from the Tunnel in the path "
                                  f"({name!r})")
    if value.get("source", "api") != "api":
        raise RequestRefused(422, "source is read-only: an API Tunnel's is \"api\"")
    record = {}
    for field in FIELDS:
        items = value.get(field)
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise RequestRefused(422, f"{field} must be a non-empty array of strings")
        record[field] = list(items)
    return record


def tunnel_document(name, record, source, public_ports=None):
    """A Tunnel as the API shows it; `source` is "file" or "api" (only a file's Tunnel may
    have `public_ports`)."""
    document = {"name": name, "public-hostnames": list(record["public-hostnames"]),
                "client-identities": list(record["client-identities"]), "source": source}
    if public_ports is not None:
        document["public-ports"] = list(public_ports)
    return document


def encode_table(table):
    """The state file's bytes for `table` (name -> record)."""
    return json.dumps({"version": TABLE_VERSION, "tunnels": table}, sort_keys=True,
                      indent=2).encode() + b"\n"


def decode_table(data):
    """The table a state file holds; ValueError naming what is wrong."""
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("version") != TABLE_VERSION or \
            not isinstance(document.get("tunnels"), dict):
        raise ValueError(f"expected {{\"version\": {TABLE_VERSION}, \"tunnels\": {{...}}}}")
    table = {}
    for name, record in document["tunnels"].items():
        if not isinstance(record, dict) or set(record) != set(FIELDS):
            raise ValueError(f"tunnel {name!r}: expected {' and '.join(FIELDS)}")
        table[name] = record
    return table


# -- resources: (method, path) -> what to do --
TUNNELS = "/v1/tunnels"
_COLLECTIONS = {TUNNELS: "tunnels", "/v1/config": "config", "/v1/openapi.json": "openapi"}
_ONE_TUNNEL = ("GET", "PUT", "DELETE")


def route(method, path):
    """(resource, Tunnel name or None) for a request; RequestRefused 404 or 405."""
    if path in _COLLECTIONS:
        if method != "GET":
            raise RequestRefused(405, f"{method} is not allowed on {path}", allow="GET")
        return _COLLECTIONS[path], None
    prefix = TUNNELS + "/"
    if path.startswith(prefix) and "/" not in path[len(prefix):] and path != prefix:
        if method not in _ONE_TUNNEL:
            raise RequestRefused(405, f"{method} is not allowed on {path}", allow=", ".join(_ONE_TUNNEL))
        return "tunnel", path[len(prefix):]
    raise RequestRefused(404, f"no resource at {path}")
