"""The configuration API's OpenAPI 3.1 document (GET /v1/openapi.json): exactly the
resources io/api.py serves, with every answer it can give (docs/api.md says the same in
words; schemathesis checks the live API against this document)."""

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"}
_STRINGS = {"type": "array", "items": {"type": "string"}, "minItems": 1}


def _error(description):
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description, ref, headers=None):
    answer = {"description": description,
              "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
    if headers:
        answer["headers"] = headers
    return answer


_ETAG = {"ETag": {"description": "the Tunnel's version, for If-Match", "schema": {"type": "string"}}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "change only if the Tunnel is still at this ETag (412 otherwise)"}
_TUNNEL_NAME = {"name": "name", "in": "path", "required": True, "schema": _NAME}
_BAD = {"400": _error("the body is not JSON"),
        "422": _error("not a Tunnel, or refused by the config file's rules (the one-line error)")}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "Runewarp Server configuration API", "version": "1",
             "description": "API Tunnels next to the config file's; see docs/api.md."},
    "paths": {
        "/v1/tunnels": {"get": {
            "summary": "every Tunnel: the config file's (read-only) and the API's",
            "responses": {"200": _json("the Tunnels", "TunnelList")}}},
        "/v1/tunnels/{name}": {
            "parameters": [_TUNNEL_NAME],
            "get": {"summary": "one Tunnel",
                    "responses": {"200": _json("the Tunnel", "Tunnel", _ETAG),
                                  "404": _error("no such Tunnel")}},
            "put": {"summary": "create or replace an API Tunnel",
                    "parameters": [_IF_MATCH],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/TunnelInput"}}}},
                    "responses": {"200": _json("replaced", "Tunnel", _ETAG),
                                  "201": _json("created", "Tunnel", _ETAG), **_BAD,
                                  "409": _error("a Tunnel of the config file: change it there"),
                                  "412": _error("If-Match differs, or another writer came first"),
                                  "413": _error("the body is larger than 64 KiB"),
                                  "503": _error("the API Tunnel store is unavailable")}},
            "delete": {"summary": "remove an API Tunnel (its Tunnel connections close)",
                       "parameters": [_IF_MATCH],
                       "responses": {"204": {"description": "removed"},
                                     "404": _error("no such Tunnel"),
                                     "409": _error("a Tunnel of the config file: change it there"),
                                     "412": _error("If-Match differs, or another writer came first"),
                                     "503": _error("the API Tunnel store is unavailable")}}},
        "/v1/config": {"get": {"summary": "the effective configuration (read-only)",
                               "responses": {"200": _json("the configuration", "Config")}}},
        "/v1/openapi.json": {"get": {"summary": "this document",
                                     "responses": {"200": {"description": "OpenAPI 3.1",
                                                           "content": {"application/json": {}}}}}},
    },
    "components": {"schemas": {
        "TunnelInput": {
            "type": "object", "required": ["public-hostnames", "client-identities"],
            "additionalProperties": False,
            "properties": {
                "public-hostnames": {**_STRINGS, "description": "Public hostnames or *.wildcards"},
                "client-identities": {**_STRINGS, "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                      "description": "Client identities, 64 lowercase hex characters each"},
                "name": {**_NAME, "description": "read-only: must equal the path's"},
                "source": {"const": "api", "description": "read-only"}}},
        "Tunnel": {
            "type": "object", "required": ["name", "public-hostnames", "client-identities", "source"],
            "properties": {
                "name": _NAME, "public-hostnames": _STRINGS, "client-identities": _STRINGS,
                "public-ports": {"type": "array", "items": {"type": "integer"}},
                "source": {"enum": ["file", "api"]}}},
        "TunnelList": {
            "type": "object", "required": ["tunnels"],
            "properties": {"tunnels": {"type": "array", "items": {"$ref": "#/components/schemas/Tunnel"}}}},
        "Config": {"type": "object", "required": ["server"],
                   "description": "every key of [server] with its effective value (docs/configuration.md)"},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    }},
}
