"""Can the service user run a venv made from this interpreter?  Used by `make install`.

`python -m venv` links bin/python to the build interpreter and keeps using its
standard library, so an interpreter under a folder other users cannot enter
(pyenv under /root, for example) gives the service user `Permission denied`
(systemd status 126).  Prints the extra `venv` flags on stdout: nothing, or
`--copies` when only the executable's path is closed (a copied executable is
enough then); exits 1 with an explanation when the standard library or
libpython is closed too, since no venv flag can fix that.

Run it with the interpreter to check: `python3 tools/check_python.py`.
"""

import os
import stat
import sys
import sysconfig
from pathlib import Path


def closed_part(path, need, root="/"):
    """The first component of `path` below `root` that others cannot use, or None.

    Folders need others' execute bit; the last component needs `need` ("x" or "r").
    Mode bits, not os.access: the check runs as root, who can enter anything.
    """
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    parts = [p for p in reversed(path.parents) if root in p.parents]
    for folder in parts:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        return None if mode & stat.S_IXOTH and mode & stat.S_IROTH else path
    bit = stat.S_IXOTH if need == "x" else stat.S_IROTH
    return None if mode & bit else path


def executable_chain(executable):
    """The executable as named and every link on the way to the real file."""
    chain, path = [], Path(executable)
    for _ in range(40):
        chain.append(path)
        if not path.is_symlink():
            break
        path = path.parent / os.readlink(path)
    return chain


def venv_flags(executable, library_paths, root="/"):
    """'' or '--copies'; raises SystemExit with the reason when neither would work."""
    for path in library_paths:
        blocked = closed_part(path, "r", root)
        if blocked is not None:
            raise SystemExit(
                f"error: a venv of {executable} needs {path} at run time, but other users "
                f"cannot enter {blocked} (mode {stat.S_IMODE(os.stat(blocked).st_mode):04o}), so the "
                "service user could not run the installed venv. Install with an interpreter "
                "under /usr or /opt, e.g. `make install PYTHON=/usr/bin/python3`.")
    for path in executable_chain(executable):
        if closed_part(path, "x", root) is not None:
            print(f"note: {path} is not reachable by other users; the venv gets a copy of "
                  "the interpreter (venv --copies)", file=sys.stderr)
            return "--copies"
    return ""


def interpreter_paths():
    """What a venv of this interpreter needs at run time: the base executable, stdlib, libpython."""
    executable = getattr(sys, "_base_executable", sys.executable)
    libraries = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir, name = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
        if libdir and name and os.path.exists(os.path.join(libdir, name)):
            libraries.add(os.path.realpath(os.path.join(libdir, name)))
    return executable, sorted(os.path.realpath(p) for p in libraries if p)


if __name__ == "__main__":
    print(venv_flags(*interpreter_paths()))
