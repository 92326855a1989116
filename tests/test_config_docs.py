"""docs/configuration.md documents exactly the keys of the key table, each with its default
and what a reload does with it."""

import re
from dataclasses import replace
from pathlib import Path

from runewarp.config import Limits, ServerConfig, keep_running, restart_only
from runewarp.config.schema import KEYS, RELOAD_EFFECTS, REQUIRED

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_HEADING = re.compile(r"^#{2,3} (?:Top level|`\[{1,2}([a-z.-]+)\]{1,2}`)$")


def documented() -> dict[str, str]:
    """Key path -> its Default cell, from every `| Key | Default | … |` table."""
    rows, prefix, in_keys = {}, None, False
    for line in DOC.read_text().splitlines():
        heading = _HEADING.match(line)
        if line.startswith("#"):
            prefix = None if heading is None else (heading[1] or "")
            if heading and line.startswith("### `[["):
                prefix += "[]"
            in_keys = False
            continue
        if not line.startswith("|"):
            in_keys = False
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == ["Key", "Default"]:
            in_keys = prefix is not None
        elif in_keys and cells[0].startswith("`"):
            name = cells[0].strip("`")
            rows[f"{prefix}.{name}" if prefix else name] = cells[1].replace("`", "")
    return rows


def shown(key) -> str:
    """The default as the docs write it."""
    value = key.default
    if key.shown is not None:
        return key.shown
    if value is REQUIRED:
        return "required"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return f'"{value[0]}:{value[1]}"'
    return str(int(value)) if float(value).is_integer() else str(value)


def test_every_key_is_documented_with_its_default():
    rows = documented()
    for key in KEYS:
        assert key.path in rows, f"{key.path} is missing from docs/configuration.md"
        cell, want = rows[key.path], shown(key).replace("`", "")
        assert cell == want or cell.startswith(want + " "), f"{key.path}: docs say {cell!r}, the table {want!r}"


def test_the_docs_name_no_unknown_key():
    assert set(documented()) - {k.path for k in KEYS} == set()


def reload_rows() -> dict[str, str]:
    """Key path -> its On reload cell, from the table under "What a reload changes"."""
    rows, inside = {}, False
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            inside = line == "### What a reload changes"
        elif inside and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_reload_table_says_for_every_key_what_the_key_table_says():
    rows = reload_rows()
    assert set(rows) == {k.path for k in KEYS}, "the reload table and the key table differ"
    for key in KEYS:
        assert key.reload in RELOAD_EFFECTS, key.path
        assert rows[key.path] == key.reload, f"{key.path}: docs say {rows[key.path]!r}, the table {key.reload!r}"


def test_a_reload_keeps_exactly_the_restart_keys():
    """The runtimes' RESTART_ONLY come from the key table: a restart key of a table that is
    itself restart-only is kept with its table."""
    assert restart_only("server") == ("hostname", "public_quic", "workers", "pid_file", "log_file", "strict_permissions",
                                      "acme", "metrics", "api", "limits.stream_buffer_budget")
    assert restart_only("client") == ("workers", "pid_file", "log_file", "strict_permissions", "acme",
                                      "metrics", "server_addresses", "limits.stream_buffer_budget")
    running = ServerConfig(hostname="a.example.com", cert_dir=Path("/c"), tunnels=(),
                           limits=Limits(stream_buffer_budget=2 * 1024 * 1024))
    new = replace(running, hostname="b.example.com", limits=Limits(active_streams=5))
    kept, changed = keep_running(new, running, restart_only("server"))
    assert changed == ["hostname", "limits.stream_buffer_budget"]
    assert kept.hostname == "a.example.com"
    assert kept.limits == Limits(active_streams=5, stream_buffer_budget=2 * 1024 * 1024)
