"""A small CA kept in a versioned material folder that issues client certificates: the
Visitor CA (visitor.py) and the control-plane CA (controlplane.py) are two of them.

One home for making, keeping and opening such a CA, so both say the same things about a
missing or half-written one."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from ..errors import MaterialError
from .store import View, update
from .x509 import _cert_pem, _key_pem, _make_ca, _now, read_ca


@dataclass(frozen=True)
class CAFolder:
    """A CA's certificate (what a config names) and whether this call made it."""

    cert_path: Path
    created: bool


@dataclass(frozen=True)
class Authority:
    """Where one kind of CA keeps its files, its subject CN, and the command that makes it."""

    cert_rel: str
    key_rel: str
    cn: str
    what: str
    init_command: str

    def read(self, view: View):
        """The (certificate, key) in one reading of the folder, None if absent."""
        return read_ca(view, self.cert_rel, self.key_rel, self.what,
                       f"remove the folder and run '{self.init_command}' again")

    def init(self, ca_dir: Path, now: _dt.datetime | None = None) -> CAFolder:
        """Ensure the CA in `ca_dir` (key 0600); an existing one is kept."""
        ca_dir = Path(ca_dir)

        def build(view):
            if self.read(view) is not None:
                return {}, CAFolder(ca_dir / self.cert_rel, False)
            cert, key = _make_ca(self.cn, _now(now))
            return {self.key_rel: _key_pem(key), self.cert_rel: _cert_pem(cert)}, \
                CAFolder(ca_dir / self.cert_rel, True)

        return update(ca_dir, build, (self.key_rel, self.cert_rel))

    def require(self, ca_dir: Path):
        """The (certificate, key) to issue with; MaterialError naming the command when absent."""
        view = View(Path(ca_dir))
        ca = self.read(view)
        if ca is None:
            raise MaterialError(f"{view.shown(self.cert_rel)}: missing; run '{self.init_command}' first")
        return ca
