"""The sans-I/O rule: nothing under runewarp/proto imports I/O, gevent or the clock."""

import ast
from pathlib import Path

import pytest

import runewarp.proto

FORBIDDEN = {"socket", "ssl", "gevent", "time", "select", "selectors", "asyncio",
             "threading", "OpenSSL", "subprocess"}
MODULES = sorted(Path(runewarp.proto.__file__).parent.rglob("*.py"))


def imported_roots(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_there_are_modules_to_check():
    assert len(MODULES) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_imports(path):
    assert not set(imported_roots(path)) & FORBIDDEN


def test_detector_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom gevent import socket\nimport time as clock\n")
    assert {"gevent", "time"} <= set(imported_roots(bad))
