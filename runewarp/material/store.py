"""Crash-safe material folders: versions written whole, then one atomic switch.

A folder's material lives in version folders ``v<N>/`` (certbot's ``archive/`` and
``live/`` idea).  An update takes the folder's ``flock``, writes a complete
``v<N+1>/`` (every file of the set: the new ones and a copy of the kept ones),
fsyncs it, and then replaces the ``current`` symlink with one ``rename``: readers
see the whole old set or the whole new set, never a key paired with the wrong
certificate, and a crash before the rename leaves the old set in use.

The names operators and configs use (``server.crt``, ``state/server-ca.key``,
``<hostname>/public.crt`` …) stay where they were, as relative symlinks through
``current/``.  A name an operator replaced with a file of their own is read as
that file, and a name they deleted is missing.

Readers never write and never lock: they resolve ``current`` once (`View`), so
every file one reading opens comes from one version.  Folders in the flat layout
of earlier releases still load, including one with the journal
(``.pending-commit``) of an interrupted update, read as completed; the first
update migrates such a folder (a version holding exactly what the flat files
hold, then the files replaced by links, then the update itself).

A rotation without a gap first stages the next set: a whole version that the
``next`` symlink names beside ``current`` (staging.py).

Each update keeps the previous version as a rollback point; older ones are removed
once they are `PRUNE_AFTER` seconds old, so a reader that resolved ``current``
just before two quick updates still finds its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

from ..errors import MaterialError
from .files import (CERT_MODE, DIR_MODE, KEY_MODE, ensure_dir,
                    folder_lock, fsync_dir)

CURRENT = "current"
NEXT = "next"
PRUNE_AFTER = 60.0
_VERSION = re.compile(r"v[1-9][0-9]*")
_LINK = re.compile(r"(?:\.\./)*" + CURRENT + r"/(.+)")
_JOURNAL = ".pending-commit"  # the journal of the flat layout: read, never written
_STAGED_SUFFIX = ".new"


# --------------------------------------------------------------------------
# Versioned folders


def is_version(name: str) -> bool:
    """True for the name of a version folder, ``v<N>``."""
    return _VERSION.fullmatch(name) is not None


def _staged(path: Path) -> Path:
    return path.with_name(path.name + _STAGED_SUFFIX)


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _link_text(rel: str) -> str:
    """The symlink a top-level name holds: relative, so a copied folder still works."""
    return "../" * rel.count("/") + f"{CURRENT}/{rel}"


def _mode(rel: str) -> int:
    return KEY_MODE if rel.endswith(".key") else CERT_MODE


def _current(root: Path, slot: str = CURRENT) -> str | None:
    """The version ``current`` (or `slot`) names; None for a folder in the flat layout
    (for ``next``: nothing staged)."""
    link = root / slot
    try:
        target = os.readlink(link)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise MaterialError(f"{link}: not a link to a version folder: {e.strerror or e}") from e
    if not _VERSION.fullmatch(target):
        raise MaterialError(f"{link}: points to {target!r}, not to a version folder v<N>")
    return target


def _journal(root: Path) -> frozenset[str]:
    """Names whose staged ``.new`` file an interrupted flat-layout update had decided."""
    journal = root / _JOURNAL
    try:
        entries = json.loads(journal.read_bytes())
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError("not a list of paths")
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except (OSError, ValueError) as e:
        raise MaterialError(f"{journal}: unreadable commit journal ({e}); remove it") from e
    for rel in entries:
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise MaterialError(f"{journal}: path {rel!r} escapes {root}")
    return frozenset(entries)


class View:
    """One reading of a material folder: every file it reads comes from one version.

    `path(rel)` is where to read `rel`; `shown(rel)` is the name to hand out (the
    stable top-level link rather than its version folder).  Creating a View writes
    nothing: it works in a read-only folder.  A flat folder's leftover journal counts
    as completed: the staged files it lists are read in place of their targets.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.version = _current(self.root)
        self.journal = _journal(self.root)
        self.staged = _current(self.root, NEXT)

    def linked(self, rel: str) -> bool:
        return self.version is not None and _readlink(self.root / rel) == _link_text(rel)

    def path(self, rel: str) -> Path:
        shown = self.shown(rel)
        if shown == self.root / rel and self.linked(rel):
            return self.root / self.version / rel
        return shown

    def shown(self, rel: str) -> Path:
        top = self.root / rel
        if rel in self.journal and _staged(top).exists():
            return _staged(top)
        return top

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def files(self, extra=()) -> list[str]:
        """Names this view holds: the version's files and `extra`, where present."""
        names = set(extra) | self.journal
        if self.version is not None:
            base = self.root / self.version
            for folder, _, entries in os.walk(base):
                names.update(str((Path(folder) / e).relative_to(base)) for e in entries)
        return sorted(n for n in names if self.path(n).is_file())


def pin(*paths) -> tuple[Path, ...]:
    """`paths` with each top-level link resolved through one reading of its folder's
    ``current``, so files opened one after the other are of one version even if an
    update switches ``current`` in between.  Other paths are returned as they are."""
    versions: dict[Path, str | None] = {}
    pinned = []
    for path in map(Path, paths):
        match = _LINK.fullmatch(_readlink(path) or "")
        if match is None:
            pinned.append(path)
            continue
        rel = match.group(1)
        root = path.parents[rel.count("/")]
        if root not in versions:
            versions[root] = _current(root)
        version = versions[root]
        pinned.append(path if version is None else root / version / rel)
    return tuple(pinned)


def read_source(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_version(root: Path, folder: Path, content: dict[str, bytes]) -> None:
    """Write `content` (relative name → bytes) as the new folder `folder`, fsynced.

    Folders mirror the modes of their top-level counterparts (the version folder
    that of `root`), so a group granted access to the material keeps it."""
    os.mkdir(folder)
    os.chmod(folder, stat.S_IMODE(os.stat(root).st_mode))
    made = [folder]
    for rel, data in sorted(content.items()):
        path = folder / rel
        for sub in reversed(Path(rel).parents[:-1]):
            if not (folder / sub).is_dir():
                top = root / sub
                os.mkdir(folder / sub)
                os.chmod(folder / sub, stat.S_IMODE(os.stat(top).st_mode) if top.is_dir() else DIR_MODE)
                made.append(folder / sub)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _mode(rel))
            os.fsync(f.fileno())
    for d in reversed(made):
        fsync_dir(d)
    fsync_dir(root)


def link(root: Path, rel: str) -> None:
    """Make the top-level name `rel` the link through ``current``, in one rename."""
    top = root / rel
    ensure_dir(top.parent)
    tmp = top.with_name(f".{top.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(_link_text(rel), tmp)
    os.replace(tmp, top)
    fsync_dir(top.parent)


def prune(root: Path, keep: set) -> None:
    """Remove versions other than `keep` once they are old enough (see PRUNE_AFTER)."""
    limit = time.time() - PRUNE_AFTER
    for name in os.listdir(root):
        path = root / name
        if _VERSION.fullmatch(name) and name not in keep and not path.is_symlink():
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime < limit:
                    shutil.rmtree(path)


def next_version(root: Path) -> str:
    """The name of the version folder to write next."""
    numbers = [int(n[1:]) for n in os.listdir(root) if _VERSION.fullmatch(n)]
    return f"v{max(numbers, default=0) + 1}"


def set_link(root: Path, slot: str, version: str) -> None:
    """Point ``current`` (or ``next``) at `version` in one rename."""
    tmp = root / f".{slot}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(version, tmp)
    os.replace(tmp, root / slot)
    fsync_dir(root)


def _switch(root: Path, view: View, content: dict[str, bytes]) -> View:
    """Write `content` as the next version and make it current in one rename."""
    version = next_version(root)
    write_version(root, root / version, content)
    for rel in content:  # a new name's link exists before its file does: it appears with the switch
        if not os.path.lexists(root / rel):
            link(root, rel)
    set_link(root, CURRENT, version)
    prune(root, {version, view.version, view.staged})
    return View(root)


def _forget_journal(root: Path, names) -> None:
    """Remove what the flat layout's updates may have left: journal, staged and temporary files."""
    for rel in names:
        top = root / rel
        leftovers = [_staged(top), *top.parent.glob(f".{top.name}.*.tmp"),
                     *top.parent.glob(f".{_staged(top).name}.*.tmp")]
        for p in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / _JOURNAL)
    fsync_dir(root)


def update(root: Path, build, flat=()):
    """Run `build(view)` under the folder's lock and install what it returns.

    `build` gets a `View` of the folder and returns ``(files, result)``: `files`
    (relative name → bytes, may be empty) become, all or nothing, a new version that
    also carries every other file of the current one; `result` is returned.
    Deciding under the lock means two updates never build on the same old version.

    `flat` (names, or a function of the view giving them) lists the files that make
    up a folder's material in the flat layout; those not yet links (a flat folder, or
    files an operator put in place of the links) are first migrated into a version
    holding exactly what they hold, then replaced by links.
    """
    root = Path(root)
    try:
        ensure_dir(root)
        with folder_lock(root):
            view = View(root)
            files, result = build(view)
            if files:
                install(root, view, files, flat)
            return result
    except OSError as e:
        raise MaterialError(f"{root}: cannot write material: {e.strerror or e}") from e


def install(root: Path, view: View, files: dict, flat=()) -> View:
    """`update`'s install step, for callers holding the folder's lock: `files` and every
    other file of `view`'s version become the current version (a flat folder migrated first)."""
    names = view.files(flat(view) if callable(flat) else flat)
    unlinked = [n for n in names if not view.linked(n)]
    if unlinked or view.journal:
        view = _switch(root, view, {n: read_source(view.path(n)) for n in names})
        for rel in unlinked:
            link(root, rel)
        _forget_journal(root, names)
        view = View(root)
    content = {n: read_source(view.path(n)) for n in view.files() if n not in files}
    return _switch(root, view, content | files)


