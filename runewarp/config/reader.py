"""Reading TOML and the typed getters that name every value by its key path."""

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runewarp.errors import ConfigError

from . import schema
from .paths import home_dir

COMMAND_LINE = "command line"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def read_toml(source: Path) -> dict:
    try:
        with open(source, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", file=str(source)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", file=str(source)) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: file is not UTF-8", file=str(source)) from None


def join(prefix: str | None, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    part = key if _BARE_KEY.fullmatch(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{prefix}.{part}" if prefix else part


_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "a table",
}


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Context:
    """Where values come from: error labels, the folder relative paths resolve against, env."""

    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]):
        self.file = file
        self.base_dir = base_dir
        self.env = env

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    # Typed getters: `table` is a TOML table, `prefix` its key path.

    def check_keys(self, table: dict, prefix: str | None) -> None:
        """Refuse a key the key table lacks at `prefix`, suggesting the nearest known one."""
        allowed = schema.names(prefix)
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                message = f"unknown key; did you mean {hint[0]!r}?" if hint else "unknown key"
                raise self.error(join(prefix, key), message)

    def table(self, parent: dict, prefix: str | None, key: str) -> dict | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(join(prefix, key), f"expected a table, got {type_name(value)}")
        return value

    def array_of_tables(self, parent: dict, prefix: str, key: str) -> list[tuple[str, dict]]:
        """A required, non-empty `[[prefix.key]]` array: (key path, table) pairs, keys checked."""
        path = join(prefix, key)
        entries = parent.get(key)
        if entries is None:
            raise self.error(path, f"at least one [[{path}]] is required")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.error(path, f"expected an array of tables ([[{path}]]), got {type_name(entries)}")
        if not entries:
            raise self.error(path, f"at least one [[{path}]] is required")
        for i, entry in enumerate(entries):
            self.check_keys(entry, join(path, i))
        return [(join(path, i), entry) for i, entry in enumerate(entries)]

    def setting(self, parent: dict, prefix: str | None, key: str) -> Any:
        """A value read by its type in the key table, or the table's default when omitted."""
        spec = schema.key(join(prefix, key))
        if key not in parent:
            if spec.default is schema.REQUIRED:
                raise self.error(join(prefix, key), "required key is missing")
            return spec.default
        if spec.type == "seconds":
            return self.duration(parent, prefix, key)
        if spec.type == "boolean":
            return self.boolean(parent, prefix, key)
        if spec.type == "path":
            return self.path(parent, prefix, key)
        if spec.type == "integer":
            return self.bounded_int(parent, prefix, key, spec.bounds)
        return self.string(parent, prefix, key, choices=spec.choices)

    def bounded_int(self, parent: dict, prefix: str | None, key: str, bounds: tuple[int, int | None]) -> int:
        value = parent[key]
        path = join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {type_name(value)}")
        low, high = bounds
        if value < min(low, 1):  # 1, or 0 for a key whose bounds allow it (retries)
            raise self.error(path, f"must be at least {min(low, 1)}; got {value}")
        if high is not None and value > high:
            raise self.error(path, f"must be at most {high}; got {value}")
        if value < low:
            raise self.error(path, f"must be at least {low} bytes; got {value}")
        return value

    def string(self, parent: dict, prefix: str | None, key: str, *, choices: tuple[str, ...] = ()) -> str | None:
        if key not in parent:
            return None
        value = parent[key]
        path = join(prefix, key)
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        if choices and value not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def string_list(self, parent: dict, prefix: str | None, key: str) -> list[str] | None:
        if key not in parent:
            return None
        value = parent[key]
        path = join(prefix, key)
        if not isinstance(value, list):
            raise self.error(path, f"expected an array of strings, got {type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(join(path, i), f"expected a string, got {type_name(item)}")
        return value

    def duration(self, parent: dict, prefix: str | None, key: str) -> float | None:
        if key not in parent:
            return None
        value = parent[key]
        path = join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"expected a number of seconds, got {type_name(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.error(path, f"must be a finite number of seconds >= 0; got {value}")
        return float(value)

    def boolean(self, parent: dict, prefix: str | None, key: str) -> bool | None:
        if key not in parent:
            return None
        value = parent[key]
        if not isinstance(value, bool):
            raise self.error(join(prefix, key), f"expected true or false, got {type_name(value)}")
        return value

    def path(self, parent: dict, prefix: str | None, key: str) -> Path | None:
        value = self.string(parent, prefix, key)
        return None if value is None else self.resolve(value)

    def resolve(self, value: str) -> Path:
        """Expand `~` against $HOME and anchor relative paths at the config file's folder."""
        if value == "~" or value.startswith("~/"):
            path = home_dir(self.env) / value[2:]
        else:
            path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else self.base_dir / path



def peek(source: Path | None, key: str, env: Mapping[str, str] = os.environ) -> Any:
    """One value of a config that may be incomplete, for material commands.

    The Server needs its certificate before any Client identity exists, so
    `cert init` reads `server.cert-dir` without validating the rest. Folder keys
    resolve like the loaded config's; other values are returned as written.
    """
    if source is None:
        return None
    value: Any = read_toml(source)
    *tables, name = key.split(".")
    for table in tables:
        value = value.get(table) if isinstance(value, dict) else None
    if not isinstance(value, dict):
        return None
    spec = schema.BY_PATH.get(key)
    if spec is not None and spec.type == "path" and name in value:
        return Context(str(source), source.absolute().parent, env).path(value, ".".join(tables), name)
    return value.get(name)
