"""The configuration API's sans-I/O values: record shape, ETag and If-Match, the state file's
bytes, and the routes (404/405)."""

import json

import pytest

from runewarp.proto.apitunnels import (RequestRefused, decode_table, encode_table, etag, if_match,
                                       parse_record, route, tunnel_document)

ID = "a" * 64
RECORD = {"public-hostnames": ["app.example.com"], "client-identities": [ID]}


def test_a_get_answer_can_be_put_back_unchanged():
    shown = tunnel_document("web", RECORD, "api")
    assert parse_record(json.dumps(shown).encode(), "web") == RECORD


@pytest.mark.parametrize("body, status, words", [
    (b"{nope", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[]", 422, "JSON object"),
    (json.dumps({**RECORD, "public-ports": [443]}).encode(), 422, "unknown field 'public-ports'"),
    (json.dumps({**RECORD, "name": "other"}).encode(), 422, "differs from the Tunnel in the path"),
    (json.dumps({**RECORD, "source": "file"}).encode(), 422, "source is read-only"),
    (json.dumps({"public-hostnames": ["a.example.com"]}).encode(), 422, "client-identities must be"),
    (json.dumps({**RECORD, "public-hostnames": []}).encode(), 422, "public-hostnames must be"),
    (json.dumps({**RECORD, "client-identities": [1]}).encode(), 422, "client-identities must be"),
])
def test_a_body_that_is_no_tunnel_is_refused(body, status, words):
    with pytest.raises(RequestRefused) as refused:
        parse_record(body, "web")
    assert refused.value.status == status and words in refused.value.message


def test_the_etag_is_of_the_content_not_its_spelling():
    reordered = json.loads(json.dumps({"client-identities": [ID], "public-hostnames": ["app.example.com"]}))
    assert etag(reordered) == etag(RECORD)
    assert etag({**RECORD, "client-identities": ["b" * 64]}) != etag(RECORD)
    assert etag(RECORD).startswith('"') and etag(RECORD).endswith('"') and len(etag(RECORD)) == 66


def test_if_match():
    assert if_match(None, None) and if_match(None, RECORD)
    assert if_match(etag(RECORD), RECORD)
    assert if_match(f'"x", {etag(RECORD)}', RECORD)
    assert not if_match('"x"', RECORD)
    assert not if_match(etag(RECORD), None)  # it was deleted meanwhile
    assert if_match("*", RECORD) and not if_match("*", None)


def test_the_state_file_round_trips_and_refuses_what_it_did_not_write():
    table = {"web": RECORD, "db": {"public-hostnames": ["db.example.com"], "client-identities": ["b" * 64]}}
    assert decode_table(encode_table(table)) == table
    for data in (b"[]", b'{"version": 2, "tunnels": {}}', b'{"version": 1, "tunnels": {"x": {"a": 1}}}'):
        with pytest.raises(ValueError):
            decode_table(data)


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/v1/tunnels", ("tunnels", None)),
    ("GET", "/v1/tunnels/web", ("tunnel", "web")),
    ("PUT", "/v1/tunnels/web", ("tunnel", "web")),
    ("DELETE", "/v1/tunnels/web", ("tunnel", "web")),
    ("GET", "/v1/config", ("config", None)),
    ("GET", "/v1/openapi.json", ("openapi", None)),
])
def test_routes(method, path, expected):
    assert route(method, path) == expected


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/v1/tunnels/", 404, None),
    ("GET", "/v1/tunnels/a/b", 404, None),
    ("GET", "/v2/tunnels", 404, None),
    ("GET", "/", 404, None),
    ("POST", "/v1/tunnels", 405, "GET"),
    ("DELETE", "/v1/config", 405, "GET"),
    ("PATCH", "/v1/tunnels/web", 405, "GET, PUT, DELETE"),
])
def test_unknown_paths_and_methods(method, path, status, allow):
    with pytest.raises(RequestRefused) as refused:
        route(method, path)
    assert (refused.value.status, refused.value.allow) == (status, allow)


def test_docs_api_table_lists_the_answers_of_the_openapi_document():
    """docs/api.md's resource table and /v1/openapi.json name the same answers per method."""
    import re
    from pathlib import Path

    from runewarp.proto.openapi import DOCUMENT

    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `(GET|PUT|DELETE) (/v1/[^`]+)` \|.*\| ([^|]+) \|$", text, re.M)
    documented = {(method.lower(), path): sorted(re.findall(r"\d{3}", answers))
                  for method, path, answers in rows}
    served = {(method, path): sorted(operation["responses"])
              for path, item in DOCUMENT["paths"].items() for method, operation in item.items()
              if method in ("get", "put", "delete", "post", "patch")}
    assert documented == served
