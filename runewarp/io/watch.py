"""`watch-config`: reload when the config file or a file it names changes.

Each file and folder gets a stat watcher of the event loop (inotify where the
kernel has it, else a poll every `interval` s; both work on any filesystem).
Paths, not inodes, are judged: an editor saves by renaming a new file over the
old one, and a material update switches a folder's `current` symlink, which
changes nothing in the files the old version holds.  So the folders are
watched too (each file's own, and the material folders the role names), and
the files are judged through their paths.  A watcher compares whole seconds
and misses a second change within the second of the first (libev's ev_stat
notes), so a watcher firing only starts the `debounce` timer, and the files are
stat-ed when it expires: every change of the burst is in place by then.  A file
counts as changed only when its stamp (device, inode, size, mtime, ctime; or
its absence) differs: a read that moved only the access time, or a write to an
unrelated file of a folder, asks for nothing.  Events within `debounce` seconds
of each other make one request: the writes of one save, a certificate and its
key, become one reload.  The watch only asks; the reload runs where SIGHUP's
does (lifecycle.py).
"""

import os

import gevent

INTERVAL = 1.0
DEBOUNCE = 1.0


def stamp(path):
    """What identifies the file's content at `path` now, None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class FileWatch:
    """Calls `on_change(files)` (the changed files, comma-separated) once `debounce` s
    after the last of a burst of events; `watch(files, folders)` sets what is watched."""

    def __init__(self, on_change, interval=INTERVAL, debounce=DEBOUNCE):
        self.on_change = on_change
        self.interval = interval
        self.debounce = debounce
        self.stamps = {}  # file -> its stamp when last seen
        self._watchers = {}  # file or folder -> stat watcher
        self._timer = None

    def watch(self, files, folders=()):
        """Watch exactly these from now on (the role derives them again after each reload)."""
        files = {os.fspath(p) for p in files}
        wanted = files | {os.fspath(p) for p in folders} | {os.path.dirname(p) for p in files}
        for path in set(self._watchers) - wanted:
            self._watchers.pop(path).stop()
        self.stamps = {path: self.stamps.get(path) or stamp(path) for path in files}
        loop = gevent.get_hub().loop
        for path in wanted - set(self._watchers):
            watcher = self._watchers[path] = loop.stat(path, self.interval)
            watcher.start(self._woken)

    def close(self):
        self.watch(())
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _woken(self):
        """A watcher fired: judge the files once nothing has fired for `debounce` s."""
        if self._timer is not None:
            self._timer.stop()
        self._timer = gevent.get_hub().loop.timer(self.debounce)
        self._timer.start(self._settled)

    def _settled(self):
        self._timer = None
        now = {path: stamp(path) for path in self.stamps}
        changed = sorted(path for path, before in self.stamps.items() if now[path] != before)
        self.stamps = now
        if changed:
            self.on_change(",".join(changed))

    def follow(self, config, files=(), folders=()):
        """Watch `config`'s file and the `files` and `folders` it names, or nothing when
        its `watch-config` is off."""
        if not config.watch_config:
            self.watch(())
            return
        self.watch([config.source, *files] if config.source is not None else files, folders)
