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

from .paths import _home

COMMAND_LINE = "command line"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _read_toml(source: Path) -> dict:
    try:
        with open(source, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror or e}", file=str(source)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", file=str(source)) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: file is not UTF-8", file=str(source)) from None


# --- validation machinery --------------------------------------------------


def _join(prefix: str | None, key: str | int) -> str:
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


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Context:
    """Where values come from: error labels, the folder relative paths resolve against, env."""

    def __init__(self, file: str, base_dir: Path, env: Mapping[str, str]):
        self.file = file
        self.base_dir = base_dir
        self.env = env

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    # Typed getters: `table` is a TOML table, `prefix` its key path.

    def check_keys(self, table: dict, prefix: str | None, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                message = f"unknown key; did you mean {hint[0]!r}?" if hint else "unknown key"
                raise self.error(_join(prefix, key), message)

    def table(self, parent: dict, prefix: str | None, key: str) -> dict | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(_join(prefix, key), f"expected a table, got {_type_name(value)}")
        return value

    def string(self, parent: dict, prefix: str | None, key: str, *, choices: tuple[str, ...] = ()) -> str | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        if choices and value not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def required_string(self, parent: dict, prefix: str | None, key: str) -> str:
        value = self.string(parent, prefix, key)
        if value is None:
            raise self.error(_join(prefix, key), "required key is missing")
        return value

    def string_list(self, parent: dict, prefix: str | None, key: str) -> list[str] | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if not isinstance(value, list):
            raise self.error(path, f"expected an array of strings, got {_type_name(value)}")
        if not value:
            raise self.error(path, "must not be empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(_join(path, i), f"expected a string, got {_type_name(item)}")
        return value

    def positive_int(self, parent: dict, prefix: str | None, key: str) -> int | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {_type_name(value)}")
        if value < 1:
            raise self.error(path, f"must be at least 1; got {value}")
        return value

    def duration(self, parent: dict, prefix: str | None, key: str) -> float | None:
        if key not in parent:
            return None
        value = parent[key]
        path = _join(prefix, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"expected a number of seconds, got {_type_name(value)}")
        if not math.isfinite(value) or value < 0:
            raise self.error(path, f"must be a finite number of seconds >= 0; got {value}")
        return float(value)

    def boolean(self, parent: dict, prefix: str | None, key: str) -> bool | None:
        if key not in parent:
            return None
        value = parent[key]
        if not isinstance(value, bool):
            raise self.error(_join(prefix, key), f"expected true or false, got {_type_name(value)}")
        return value

    def path(self, parent: dict, prefix: str | None, key: str) -> Path | None:
        value = self.string(parent, prefix, key)
        return None if value is None else self.resolve(value)

    def resolve(self, value: str) -> Path:
        """Expand `~` against $HOME and anchor relative paths at the config file's folder."""
        if value == "~" or value.startswith("~/"):
            path = _home(self.env) / value[2:]
        else:
            path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else self.base_dir / path

