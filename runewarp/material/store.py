"""Crash-safe writes of material folders; touches nothing but the folders it is given.

Crash safety: an update never overwrites a live file in place. Each update is
one *commit*:

1. every new file is written next to its target as ``<name>.new`` (each write
   atomic and fsynced); the live material is untouched, so a crash here leaves
   the previous material in use and the stray ``.new`` files are discarded by
   the next update;
2. a journal (``.pending-commit``) listing the targets is written atomically;
   from this point the update is decided;
3. the ``.new`` files are renamed over their targets, keys before the
   certificates that depend on them;
4. the journal is removed.

A crash during step 3 leaves a journal behind; every function here first
finishes such an interrupted commit (roll-forward), so callers always see a
consistent set: all old or all new, never a key paired with the wrong
certificate.

Commits and recoveries of one folder hold an exclusive ``flock`` on the folder
itself, because two processes may update it at once: a running Server or Client
renews its own certificates while an operator may run a material command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import stat
import tempfile
import time
from pathlib import Path

from ..errors import MaterialError

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

_JOURNAL = ".pending-commit"
_STAGED_SUFFIX = ".new"


# --------------------------------------------------------------------------
# Durable file primitives


def _fsync_dir(path: Path) -> None:
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
        _fsync_dir(d.parent)
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
    _fsync_dir(path.parent)


def _staged(path: Path) -> Path:
    return path.with_name(path.name + _STAGED_SUFFIX)


def _roll_forward(root: Path) -> bool:
    """Finish a commit whose journal is on disk; True if there was one."""
    journal = root / _JOURNAL
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return False
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError("not a list of paths")
    except ValueError as e:
        raise MaterialError(f"{journal}: unreadable commit journal ({e}); remove it") from e
    resolved_root = root.resolve()
    for rel in entries:
        target = root / rel
        if resolved_root not in target.resolve().parents:
            raise MaterialError(f"{journal}: path {rel!r} escapes {root}")
        staged = _staged(target)
        if staged.exists():
            os.replace(staged, target)
            _fsync_dir(target.parent)
    journal.unlink(missing_ok=True)
    _fsync_dir(root)
    return True


def _discard_strays(targets: list[Path]) -> None:
    """Remove leftovers of an update that crashed before its journal was written."""
    for target in targets:
        parent = target.parent
        if not parent.is_dir():
            continue
        leftovers = [_staged(target), *parent.glob(f".{target.name}.*.tmp"),
                     *parent.glob(f".{_staged(target).name}.*.tmp")]
        for p in leftovers:
            try:
                p.unlink()
            except FileNotFoundError:
                pass


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
def _folder_lock(root: Path):
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


def _recover(root: Path, targets: list[Path], *, cleanup: bool) -> None:
    """Bring `root` to a consistent state before reading or updating it.

    Read-only callers pass cleanup=False: stray staged files are harmless and
    they may lack write access; an unfinished commit, however, must be
    completed or the material is inconsistent.
    """
    if not root.is_dir():
        return
    try:
        with _folder_lock(root):
            _roll_forward(root)
            if cleanup:
                _discard_strays(targets)
    except OSError as e:
        raise MaterialError(f"{root}: cannot complete an interrupted update: {e}") from e


def _commit(root: Path, files: list[tuple[Path, bytes, int]]) -> None:
    """Install `files` (path, data, mode) all-or-nothing; order = rename order."""
    try:
        ensure_dir(root)
    except OSError as e:
        raise MaterialError(f"{root}: cannot write material: {e}") from e
    decided = False
    with _folder_lock(root):
        try:
            for path, data, mode in files:
                atomic_write(_staged(path), data, mode)
            rels = [str(path.relative_to(root)) for path, _, _ in files]
            atomic_write(root / _JOURNAL, json.dumps(rels).encode(), KEY_MODE)
            decided = True
            _roll_forward(root)
        except OSError as e:
            if not decided:
                try:
                    _discard_strays([path for path, _, _ in files])
                except OSError:
                    pass
            raise MaterialError(f"{root}: cannot write material: {e}") from e



def file_stamp(*paths) -> tuple:
    """What changes whenever one of `paths` is rewritten (mtime and size of each), so a
    runtime reloads material only then; OSError when one is missing."""
    return tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, paths))



# --------------------------------------------------------------------------
# Key file permissions
#
# Every key this module writes goes through atomic_write, which creates a new
# 0600 file (mkstemp) and renames it over the old one, so neither the umask nor
# the old file's mode matter.  Keys it keeps (renew_identity) or that operators
# copy in by hand can still be loose; these functions find them so the runtime
# can warn, or refuse to start under strict permissions.


def _make_private(path: Path) -> None:
    """Best effort chmod 600 of a key that is kept rather than rewritten.

    A failure (a key owned by someone else, a read-only mount) is not an error
    here: the runtime's permission check reports the loose key at start.
    """
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, KEY_MODE)
    except OSError:
        pass


def key_permission_problem(path: Path) -> str | None:
    """A one-line complaint if the key at `path` is accessible to group or others.

    None when the mode is owner-only, or when the file is missing or cannot be
    stat'ed (loading it reports that better).  Symlinks are followed: the mode
    that protects the key is the target's.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return (f"{path}: private key is accessible to group or others (mode {mode:04o}); "
            f"run 'chmod 600 {shlex.quote(str(path))}'")


def key_permission_problems(paths) -> list[str]:
    """`key_permission_problem` for each path, in order, problems only."""
    return [p for p in map(key_permission_problem, paths) if p is not None]
