"""The package's layers (docs/architecture.md): no import from a lower layer to a higher one.

`proto` -> nothing of the package but `errors`, and no I/O, clock or randomness;
`config`/`material`/`tls`/`metrics` -> `proto`, `errors`, `logs` (and each other); `acme` -> those;
`io` -> those and `acme` (never `cli`); `cli` and the other entry points -> everything.
Relative imports are resolved against the package, so `from ...io import x` counts.
A new top-level module must be placed in LAYERS before this test passes.
"""

import ast
from pathlib import Path

import pytest

import runewarp

PACKAGE = Path(runewarp.__file__).parent
PROTO_FORBIDDEN = {"socket", "ssl", "gevent", "time", "select", "selectors", "asyncio",
                   "threading", "OpenSSL", "subprocess", "os", "random", "secrets", "pathlib",
                   "io", "datetime"}

BASE = {"runewarp", "errors"}  # the package itself (its __version__) and the exception tree
CORE = BASE | {"proto", "logs", "systemd", "config", "material", "tls", "contextcache", "certcheck", "metrics",
               "workers"}
EVERYTHING = None
LAYERS = {
    "runewarp": set(),
    "errors": set(),
    "harness": set(),  # runs processes for demo, tests and bench: stdlib only
    "proto": {"errors"},
    "logs": BASE,
    "systemd": BASE | {"logs"},
    "config": CORE,
    "material": CORE,
    "tls": CORE,
    "contextcache": set(),  # stdlib only: stats files, calls the builder it is given
    "certcheck": CORE,
    "metrics": CORE,
    "status": set(),  # pure: the /status document as text
    "acme": CORE | {"acme"},
    "acme_plugin": CORE | {"acme"},
    "io": CORE | {"acme"},
    "doctor": CORE | {"io", "doctor"},
    "lifecycle": BASE | {"systemd"},
    "daemon": set(),  # the pid file and the detach: stdlib and gevent only
    "handover": BASE | {"systemd", "daemon"},
    "workers": set(),  # this process's place under a supervisor: stdlib only
    "supervisor": BASE | {"systemd", "handover", "lifecycle", "io", "workers"},
    "cli": EVERYTHING,
    "demo": EVERYTHING,
    "entry": EVERYTHING,
    "__main__": EVERYTHING,
}
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path, package=PACKAGE):
    parts = ["runewarp", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, package=PACKAGE):
    """Every module `path` imports, relative imports resolved to absolute names.
    `from . import x` names `runewarp.x` when that module exists, else the package."""
    name = module_name(path, package)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if module == "runewarp" or (node.level and not node.module):
                for alias in node.names:
                    sub = Path(package, *module.split(".")[1:], alias.name)
                    exists = sub.with_suffix(".py").exists() or sub.is_dir()
                    yield f"{module}.{alias.name}" if exists else module
            else:
                yield module


def unit(module):
    """The layer a module belongs to: its top-level name under runewarp."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runewarp"


def violations(path, package=PACKAGE):
    here = unit(module_name(path, package))
    allowed = LAYERS.get(here, set())
    found = []
    if here not in LAYERS:
        found.append(f"{here} is in no layer: add it to LAYERS in tests/test_layering.py")
    for module in imports(path, package):
        root = module.split(".")[0]
        if root == "runewarp":
            there = unit(module)
            if there != here and allowed is not EVERYTHING and there not in allowed:
                found.append(f"{here} -> {module}")
        elif here == "proto" and root in PROTO_FORBIDDEN:
            found.append(f"proto -> {module} (I/O, clock or randomness)")
    return found


def test_there_are_modules_to_check():
    assert len([p for p in MODULES if unit(module_name(p)) == "proto"]) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    found = violations(path)
    assert not found, "\n".join(found)


def test_detector_resolves_relative_imports_and_sees_forbidden_ones(tmp_path):
    (tmp_path / "io").mkdir()
    (tmp_path / "io" / "splice.py").write_text("")
    (tmp_path / "errors.py").write_text("")
    proto = tmp_path / "proto" / "mux"
    proto.mkdir(parents=True)
    bad = proto / "bad.py"
    bad.write_text("import os\nfrom gevent import socket\nimport time as clock\n"
                   "from ...io.splice import Splice\nfrom ... import errors, __version__\n"
                   "from ..mux import frames\n")
    assert set(imports(bad, tmp_path)) == {"os", "gevent", "time", "runewarp.io.splice",
                                           "runewarp.errors", "runewarp", "runewarp.proto.mux"}
    assert violations(bad, tmp_path) == [
        "proto -> os (I/O, clock or randomness)", "proto -> gevent (I/O, clock or randomness)",
        "proto -> time (I/O, clock or randomness)", "proto -> runewarp.io.splice",
        "proto -> runewarp"]
    cli_using_io = tmp_path / "io" / "x.py"
    cli_using_io.write_text("from ..cli import main\n")
    assert violations(cli_using_io, tmp_path) == ["io -> runewarp.cli"]
