"""A loaded config as TOML text: every key of the key table with its effective value.

`runewarp config show` prints it. It walks `schema.KEYS`, not a list of its own,
so a new key is shown without a change here, as long as the loaded config holds
it under the key's name (dashes as underscores; exceptions in `_ATTRIBUTES`).
The text loads back to an equal config. TOML has no null, so a key without a
value, or with a default no file can spell, is shown as a comment. Nothing here
reads a file.
"""

from pathlib import Path
from typing import Any

from runewarp.proto.address import format_address

from . import schema

# Keys whose value the loaded config holds under another name.
_ATTRIBUTES = {"client.server-address": "server_addresses"}
# Keys another key shows: a Tunnel's identities are always written as the list.
SHOWN_BY = {"server.tunnels[].client-identity": "server.tunnels[].client-identities",
            "server.public-bind-address": "server.public-bind-addresses"}
# Keys whose value is not in effect, and may not be written, while a table is set.
_NOT_WITH = {"server.cert-dir": "acme"}
_NESTED = ("table", "array of tables")


class NotShown(LookupError):
    """A key of the key table the loaded config does not hold (or holds as no TOML value)."""


def render(role: str, config: Any) -> str:
    """The effective `[role]` config (a ServerConfig or ClientConfig) as TOML."""
    where = f"from {config.source}" if config.source else "from defaults and the command line (no file)"
    lines = [f"# effective {role} config {where}"]
    top = [k for k in _children(None) if k.path not in ("server", "client")]
    lines += [_line(k, _value(config, k)) for k in top]
    lines += ["", f"[{role}]"]
    _table(lines, config, role)
    return "\n".join(lines) + "\n"


def _children(prefix: str | None) -> list[schema.Key]:
    start = f"{prefix}." if prefix else ""
    return [k for k in schema.KEYS if k.path.startswith(start) and "." not in k.path[len(start):]
            and k.path not in SHOWN_BY]


def _table(lines: list[str], obj: Any, prefix: str) -> None:
    """The keys of the table at `prefix` (an array's entry: `x.y[]`) from `obj`: values
    first, then the tables and arrays of tables, as TOML needs."""
    children = _children(prefix)
    lines += [_line(k, _value(obj, k), getattr(obj, _NOT_WITH.get(k.path, ""), None))
              for k in children if k.type not in _NESTED]
    for key in (k for k in children if k.type in _NESTED):
        value = _value(obj, key)
        header = key.path.replace("[]", "")
        if value is None:
            lines += ["", f"# [{header}] unset"]
        elif key.type == "table":
            lines += ["", f"[{header}]"]
            _table(lines, value, key.path)
        else:
            for entry in value:
                lines += ["", f"[[{header}]]"]
                _table(lines, entry, f"{key.path}[]")


def _name(key: schema.Key) -> str:
    return key.path.rsplit(".", 1)[-1]


def _value(obj: Any, key: schema.Key) -> Any:
    attribute = _ATTRIBUTES.get(key.path, _name(key).replace("-", "_"))
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise NotShown(f"{key.path}: the loaded {type(obj).__name__} has no {attribute!r}; "
                       "name it after the key or list it in config/render.py") from None


def _line(key: schema.Key, value: Any, excluded_by: Any = None) -> str:
    name = _name(key)
    if value is None or value == ():
        return f"# {name} = unset"  # no value (a Catch-all Service has no public-hostnames)
    if excluded_by is not None:
        return f"# {name} = unused with [{key.path.rsplit('.', 1)[0]}.{_NOT_WITH[key.path]}]"
    low = key.bounds[0] if key.bounds else None
    if isinstance(value, int) and not isinstance(value, bool) and low is not None and value < low:
        return f"# {name} = {key.shown or value}"  # a sentinel default (0: computed)
    return f"{name} = {toml_value(key, value)}"


def toml_value(key: schema.Key, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return toml_string(str(value))
    if key.type in ("address", "addresses") and len(value) == 2 and isinstance(value[1], int):
        return toml_string(format_address(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(key, item) for item in value) + "]"
    raise NotShown(f"{key.path}: no TOML spelling for a {type(value).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def document(role: str, config: Any) -> dict:
    """The effective config as JSON values, keyed as in the file (the API's GET /v1/config):
    the same walk of the key table as `render`, so a new key shows up here too."""
    top = [k for k in _children(None) if k.path not in ("server", "client")]
    return {**{k.path: _json(k, _value(config, k)) for k in top}, role: _json_table(config, role)}


def _json_table(obj: Any, prefix: str) -> dict:
    table = {}
    for key in _children(prefix):
        value = _value(obj, key)
        if getattr(obj, _NOT_WITH.get(key.path, ""), None) is not None:
            value = None  # not in effect beside its table
        if key.type == "table":
            table[_name(key)] = None if value is None else _json_table(value, key.path)
        elif key.type == "array of tables":
            table[_name(key)] = [_json_table(entry, f"{key.path}[]") for entry in value or ()]
        else:
            table[_name(key)] = _json(key, value)
    return table


def _json(key: schema.Key, value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if key.type in ("address", "addresses") and len(value) == 2 and isinstance(value[1], int):
        return format_address(value)
    return [_json(key, item) for item in value]
