"""The one cache that rebuilds a TLS context (or anything built from files) when its files
change: a stat per use, no watcher, no thread.  tls.py builds the contexts; this keeps them."""

import os


def file_stamp(paths):
    """What changes whenever one of `paths` is replaced or rewritten; None when one is missing.

    (path, st_ino, st_mtime_ns, st_size) per file: material is replaced by an
    atomic rename, which always gives a new inode, even when the new file has
    the same size and lands in the same mtime tick as the old one, which
    (mtime, size) alone would miss.  `stat` follows symlinks, so a flipped
    link (certbot's live/, a versioned folder's current) is seen as well.
    """
    try:
        return tuple((str(path), st.st_ino, st.st_mtime_ns, st.st_size)
                     for path, st in ((path, os.stat(path)) for path in paths))
    except OSError:
        return None


class ContextCache:
    """SSL contexts by key (a hostname, or None for one), rebuilt when their files change.

    `locate(key)` names the files cheaply: a tuple of paths, or None when there
    are none.  `build(key, paths)` makes the context, with `paths` None when a
    file is missing, so it gives the caller's own answer for that (raise, or
    return a context that refuses).  Each use stats the files (no watcher, no
    thread); `build` runs only when their `file_stamp` changed.  The stamp is
    taken before `build` reads the files, so a change during a build is seen by
    the next use.

    An outcome is kept until the stamp changes, a refusal included, so its
    warning is logged once; a `build` that raises keeps nothing and the next use
    tries again.  Keys come from the configuration (the Server hostname, the
    terminate hostnames), so the table stays small.
    """

    def __init__(self, locate, build):
        self.locate = locate
        self.build = build
        self._entries = {}

    def current(self, key=None):
        """The context for the files as they are now."""
        paths = self.locate(key)
        stamp = None if paths is None else file_stamp(paths)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        context = self.build(key, None if stamp is None else paths)
        self._entries[key] = (stamp, context)
        return context
