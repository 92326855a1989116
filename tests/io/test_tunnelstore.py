"""The state file store: atomic replacement (0600, no temporary file left), compare-and-set,
and a file it cannot read or write reported as StoreUnavailable, never overwritten."""

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from runewarp.io.tunnelstore import ANY, StateFile, StoreConflict, StoreUnavailable, open_store

WEB = {"public-hostnames": ["app.example.com"], "client-identities": ["a" * 64]}
DB = {"public-hostnames": ["db.example.com"], "client-identities": ["b" * 64]}


def store(path):
    return open_store(SimpleNamespace(state_file=path, etcd_endpoints=()), log=None)


def test_a_missing_file_is_an_empty_table_and_changes_replace_it_whole(tmp_path):
    path = tmp_path / "state" / "api-tunnels.json"
    first = store(path)
    assert isinstance(first, StateFile) and first.load() == {}
    first.put("web", WEB, expected=None)
    first.put("db", DB)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["api-tunnels.json"]  # no temporary file left
    assert json.loads(path.read_text())["tunnels"] == {"web": WEB, "db": DB}
    inode = path.stat().st_ino
    first.delete("db", expected=DB)
    assert path.stat().st_ino != inode  # renamed over, never rewritten in place
    assert store(path).load() == {"web": WEB}


def test_expected_is_a_compare_and_set(tmp_path):
    path = tmp_path / "api-tunnels.json"
    one = store(path)
    one.load()
    one.put("web", WEB, expected=None)
    with pytest.raises(StoreConflict, match="exists"):
        one.put("web", DB, expected=None)
    with pytest.raises(StoreConflict, match="changed meanwhile"):
        one.put("web", DB, expected=DB)
    with pytest.raises(StoreConflict, match="does not exist"):
        one.delete("db", expected=DB)
    one.put("web", DB, expected=WEB)
    one.put("web", WEB, expected=ANY)
    assert store(path).load() == {"web": WEB}


def test_a_file_it_cannot_read_is_unavailable_and_never_overwritten(tmp_path):
    path = tmp_path / "api-tunnels.json"
    path.write_text("{half a table")
    broken = store(path)
    with pytest.raises(StoreUnavailable, match="is not an API Tunnel table"):
        broken.load()
    with pytest.raises(StoreUnavailable):
        broken.put("web", WEB)
    assert path.read_text() == "{half a table"


def test_a_folder_it_cannot_write_is_unavailable_and_the_table_unchanged():
    unwritable = store(Path("/proc/runewarp-no-such-folder/api-tunnels.json"))  # even root cannot mkdir
    assert unwritable.load() == {}
    with pytest.raises(StoreUnavailable, match="cannot write"):
        unwritable.put("web", WEB)
    with pytest.raises(StoreConflict):  # the failed put left nothing behind
        unwritable.delete("web", expected=WEB)
