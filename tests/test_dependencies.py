"""The data path uses private internals of pyOpenSSL (and the cryptography bindings behind
it) and gevent.  setup.cfg caps those libraries below their next major version, and this
test fails loudly, naming the internal and the file using it, when one of them moves.

Every private use is discovered from the source, not listed by hand:

- `from <library>._private import name`: the module must import and hold `name`, and
  every attribute the code reads from `name` (`_lib.SSL_read`) must exist;
- `<expr>._name` where `_name` is no attribute runewarp defines itself: it must have an
  entry in PRIVATE_ATTRIBUTES, which says whose internal it is and checks it;
- `.hub.loop.` on a socket: gevent's hub and loop behind a socket object.

So a new private use fails here until it is given an entry with a check.
"""

import ast
import configparser
import re
from importlib import import_module
from importlib.metadata import version
from pathlib import Path

import gevent.socket
import pytest
from OpenSSL import SSL, crypto
from gevent.server import StreamServer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "runewarp"
LIBRARIES = ("OpenSSL", "cryptography", "gevent", "greenlet")
# The capped requirements: (distribution, the major version the cap is below).
CAPPED = {"pyOpenSSL": 27, "gevent": 27}


def _gevent_socket_attr(name):
    def check():
        sock = gevent.socket.socket()
        try:
            return hasattr(sock, name)
        finally:
            sock.close()
    return check


def _server_attr(name):
    def check():
        server = StreamServer(("127.0.0.1", 0), lambda *_: None)
        return hasattr(server, name)
    return check


def _connection_attr(name):
    return lambda: hasattr(SSL.Connection(SSL.Context(SSL.TLS_METHOD), None), name)


# attribute -> (whose internal it is, check returning True while it is still there)
PRIVATE_ATTRIBUTES = {
    "_sock": ("gevent.socket.socket._sock (the OS socket under gevent's wrapper)",
              _gevent_socket_attr("_sock")),
    "_spawn": ("gevent.server.StreamServer._spawn (how a handler greenlet is started)",
               _server_attr("_spawn")),
    "_handle": ("gevent.server.StreamServer._handle (the connection handler)",
                _server_attr("_handle")),
    "_ssl": ("OpenSSL.SSL.Connection._ssl (the SSL* pointer)", _connection_attr("_ssl")),
    "_raise_ssl_error": ("OpenSSL.SSL.Connection._raise_ssl_error",
                         _connection_attr("_raise_ssl_error")),
    "_context": ("OpenSSL.SSL.Context._context (the SSL_CTX* pointer)",
                 lambda: hasattr(SSL.Context(SSL.TLS_METHOD), "_context")),
    "_from_raw_x509_ptr": ("OpenSSL.crypto.X509._from_raw_x509_ptr",
                           lambda: hasattr(crypto.X509, "_from_raw_x509_ptr")),
}
PRIVATE_MODULES = {"OpenSSL._util": {"ffi", "lib"}}


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _where(path, node):
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def _attributes_runewarp_defines():
    """Attribute names runewarp itself gives objects: methods and class attributes,
    __slots__ entries, and any `<expr>.name = ...` assignment."""
    defined = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        defined.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        defined.update(t.id for t in targets if isinstance(t, ast.Name))
                        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                            defined.update(c.value for c in ast.walk(item.value)
                                           if isinstance(c, ast.Constant) and isinstance(c.value, str))
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    defined.update(n.attr for n in ast.walk(target) if isinstance(n, ast.Attribute))
    return defined


def discovered_private_attributes():
    """{attribute: [file:line, ...]} for `<expr>._name` that runewarp does not define."""
    defined = _attributes_runewarp_defines()
    uses = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and node.attr not in defined:
                uses.setdefault(node.attr, []).append(_where(path, node))
    return uses


def discovered_private_modules():
    """{(module, name): [file:line, ...]} and {(module, name): {attribute: [file:line]}}."""
    imports, reads = {}, {}
    for path in _sources():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.split(".")[0] in LIBRARIES \
                    and any(part.startswith("_") for part in node.module.split(".")):
                for alias in node.names:
                    key = (node.module, alias.name)
                    imports.setdefault(key, []).append(_where(path, node))
                    aliases[alias.asname or alias.name] = key
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in LIBRARIES and \
                            any(part.startswith("_") for part in alias.name.split(".")):
                        imports.setdefault((alias.name, None), []).append(_where(path, node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases:
                reads.setdefault(aliases[node.value.id], {}).setdefault(node.attr, []).append(
                    _where(path, node))
    return imports, reads


def test_the_discovery_finds_the_known_uses():
    """Guards the scanner itself: it must see what the data path is known to use."""
    uses = discovered_private_attributes()
    assert {"_sock", "_ssl", "_context"} <= set(uses), uses
    imports, reads = discovered_private_modules()
    assert ("OpenSSL._util", "lib") in imports
    assert "SSL_read" in reads[("OpenSSL._util", "lib")]


def test_every_private_attribute_has_an_entry_and_is_still_there():
    problems = []
    for attribute, places in sorted(discovered_private_attributes().items()):
        entry = PRIVATE_ATTRIBUTES.get(attribute)
        if entry is None:
            problems.append(f"`.{attribute}` used by {', '.join(places)} is a private attribute "
                            "of a dependency: add it to PRIVATE_ATTRIBUTES in "
                            "tests/test_dependencies.py with a check, and cap the library "
                            "in setup.cfg")
            continue
        internal, check = entry
        if not check():
            problems.append(f"{internal} is gone (installed: {_installed()}); used by "
                            f"{', '.join(places)}: port that code before raising the cap in "
                            "setup.cfg")
    assert not problems, "\n".join(problems)


def test_private_modules_and_every_name_read_from_them_are_still_there():
    imports, reads = discovered_private_modules()
    problems = []
    for (module, name), places in sorted(imports.items(), key=str):
        if name not in PRIVATE_MODULES.get(module, ()):
            problems.append(f"{module}.{name} imported by {', '.join(places)} is a private "
                            "module of a dependency: add it to PRIVATE_MODULES in "
                            "tests/test_dependencies.py and cap the library in setup.cfg")
            continue
        try:
            owner = getattr(import_module(module), name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module}.{name} is gone ({exc}; installed: {_installed()}); "
                            f"imported by {', '.join(places)}")
            continue
        for attribute, where in sorted(reads.get((module, name), {}).items()):
            if not hasattr(owner, attribute):
                problems.append(f"{module}.{name}.{attribute} is gone (installed: "
                                f"{_installed()}); used by {', '.join(where)}")
    assert not problems, "\n".join(problems)


def test_gevent_hub_and_loop_behind_a_socket():
    """splice.py parks a direction on `sock.hub.loop.io(fd, READ)`: gevent's loop API."""
    users = [f"{path.relative_to(ROOT)}:{n}" for path in _sources()
             for n, line in enumerate(path.read_text().splitlines(), 1) if ".hub.loop." in line]
    assert users, "splice.py no longer reads sock.hub.loop: drop this check"
    sock = gevent.socket.socket()
    try:
        watcher = sock.hub.loop.io(sock.fileno(), 1)
        assert callable(watcher.start) and callable(watcher.stop) and callable(watcher.close), \
            f"gevent's io watcher changed; used by {', '.join(users)}"
        watcher.close()
    except AttributeError as exc:
        pytest.fail(f"gevent socket.hub.loop.io is gone ({exc}; installed: {_installed()}); "
                    f"used by {', '.join(users)}")
    finally:
        sock.close()


def test_a_pyopenssl_context_still_takes_our_attributes():
    """tls.py keeps its refused-identity table and verify callback on the Context."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx._runewarp_refused = {}
    assert ctx._runewarp_refused == {}


def _requirements():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].strip().splitlines()
    return {re.match(r"[A-Za-z0-9_.-]+", line.strip()).group(0): line.strip() for line in lines}


@pytest.mark.parametrize("distribution,major", CAPPED.items())
def test_libraries_with_private_uses_are_capped_below_their_next_major(distribution, major):
    requirement = _requirements()[distribution]
    assert f"<{major}" in requirement.replace(" ", ""), \
        f"setup.cfg: {requirement!r} needs an upper bound <{major} (its internals are used)"
    installed = int(version(distribution).split(".")[0])
    assert installed < major, f"{distribution} {version(distribution)} is installed, above the cap"


def _installed():
    return ", ".join(f"{d} {version(d)}" for d in ("pyOpenSSL", "cryptography", "gevent"))
