"""Durable file primitives for material folders: folders created with exact modes,
files replaced atomically and fsynced, one exclusive lock per folder (store.py builds
the versioned folders on them)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path

from ..errors import MaterialError

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Persist directory entries (renames, new files) across power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and missing parents with `mode` exactly (umask ignored).

    Existing folders are left as they are: they belong to the user.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)
        fsync_dir(d.parent)
    if not path.is_dir():
        raise MaterialError(f"{path}: exists but is not a folder")


def atomic_write(path: Path, data: bytes, mode: int = CERT_MODE) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    The temporary file is created 0600 (mkstemp), so key bytes are never
    exposed, and gets `mode` only once it is complete.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


LOCK_WAIT = 30.0
"""Seconds to wait for another process's update of the same folder (it takes milliseconds)."""


def _wait_for_lock(fd: int, root: Path) -> None:
    """Poll a non-blocking flock: a blocking one would stall the daemon's whole event
    loop (time.sleep is cooperative under gevent), and a lost holder fails in bounded time."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise MaterialError(f"{root}: still locked by another update after "
                                    f"{LOCK_WAIT:g} s") from None
            time.sleep(0.01)


@contextlib.contextmanager
def folder_lock(root: Path):
    """Hold an exclusive flock on the folder `root` (not a file in it, so nothing is
    created and read-only callers can take it too).  Never nested: a second open of
    the same folder would wait for the first, even in the same process."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None  # the operation itself reports what is wrong with the folder
    try:
        if fd is not None:
            _wait_for_lock(fd, root)
        yield
    finally:
        if fd is not None:
            # Unlocked explicitly: gevent's os.close defers closing a folder's fd to
            # the next loop iteration, and the lock would live until then.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
