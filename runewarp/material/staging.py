"""The staged slot of a material folder: the next set, beside the current one.

A rotation without a gap first writes the whole next set as a version folder that
the ``next`` symlink names (`stage`); ``current`` stays in force, and a reader that
wants the staged set reads ``next/<name>``.  `commit` makes that version
``current`` with one ``rename``; `abort` drops it.  Same folder, same versions,
same lock as every update (store.py): no second layout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..errors import MaterialError
from .files import folder_lock
from .store import (NEXT, View, install, link, next_version, prune, read_source, set_link,
                    write_version)


class StagedView(View):
    """A View of the staged set: every name is read in the version ``next`` named."""

    def __init__(self, root: Path, version: str):
        super().__init__(root)
        self.version, self.journal = version, frozenset()

    def path(self, rel: str) -> Path:
        return self.root / self.version / rel


def staged_view(root: Path) -> StagedView | None:
    """The staged set, or None when nothing is staged."""
    version = View(root).staged
    return None if version is None else StagedView(root, version)


def staged_path(root: Path, rel: str) -> Path:
    """The stable name of the staged `rel` (through the ``next`` link)."""
    return Path(root) / NEXT / rel


@contextlib.contextmanager
def _writing(root: Path):
    try:
        with folder_lock(root):
            yield
    except OSError as e:
        raise MaterialError(f"{root}: cannot write material: {e.strerror or e}") from e


def _already(root: Path) -> MaterialError:
    return MaterialError(f"{root}: a rotation is already staged ({root / NEXT}); "
                         "commit it (--commit) or drop it (--abort) first")


def refuse_if_staged(view: View) -> None:
    """For the one-step forms (a hard cut): never behind a staged set's back."""
    if view.staged is not None:
        raise _already(view.root)


def stage(root: Path, build, flat=()):
    """Write the next set under the folder's lock; MaterialError when one is staged already.

    `build(view)` gets the current View and returns ``(staged, current, result)``:
    the `staged` files replace theirs in a copy of the current set, which ``next``
    then names; the `current` files (may be empty) are first installed in the
    current set, as `update` does.  `result` is returned."""
    root = Path(root)
    with _writing(root):
        view = View(root)
        refuse_if_staged(view)
        staged, current, result = build(view)
        if current:
            view = install(root, view, current, flat)
        content = {n: read_source(view.path(n)) for n in view.files() if n not in staged}
        version = next_version(root)
        write_version(root, root / version, content | staged)
        set_link(root, NEXT, version)
        return result


def _staged_or_fail(root: Path, verb: str) -> View:
    view = View(root)
    if view.staged is None:
        raise MaterialError(f"{root}: nothing staged to {verb}; stage a rotation with "
                            "--stage first")
    return view


def commit(root: Path, keep_previous: bool = True) -> None:
    """Make the staged set current in one rename.  The previous set stays as a rollback
    point, pruned like an update's (store.PRUNE_AFTER), or goes at once without
    `keep_previous` (a rotated-away key should not linger)."""
    root = Path(root)
    with _writing(root):
        view = _staged_or_fail(root, "commit")
        for rel in staged_view(root).files():  # a name only the staged set has: its link first
            if not os.path.lexists(root / rel):
                link(root, rel)
        set_link(root, "current", view.staged)
        os.unlink(root / NEXT)
        if view.version is not None and not keep_previous:
            shutil.rmtree(root / view.version, ignore_errors=True)
        prune(root, {view.staged, view.version})


def abort(root: Path) -> None:
    """Drop the staged set; the current one is untouched."""
    root = Path(root)
    with _writing(root):
        view = _staged_or_fail(root, "abort")
        os.unlink(root / NEXT)
        shutil.rmtree(root / view.staged, ignore_errors=True)
