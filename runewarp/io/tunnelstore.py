"""Where API Tunnels are kept: a state file on one node (`StateFile`), or etcd for a fleet
(io/etcdstore.py); `open_store` picks by `[server.api]`.

Every store keeps a table of Tunnel name -> record (proto/apitunnels.py) and offers the same
compare-and-set: `expected` is the record the caller saw (None: absent, ANY: no check), so
two writers that raced each get a clean answer, never a lost update.
"""

import gevent.lock

from ..errors import MaterialError, RunewarpError
from ..material import KEY_MODE, atomic_write
from ..proto.apitunnels import decode_table, encode_table


class StoreUnavailable(RunewarpError):
    """The store cannot be reached or read: the API answers 503, the routing table stays."""


class StoreConflict(RunewarpError):
    """The stored record is not the one `expected` named: the API answers 412."""


class _Any:
    def __repr__(self):
        return "ANY"


ANY = _Any()


def check_expected(current, expected, name):
    """StoreConflict unless `current` (None: absent) is what `expected` says."""
    if expected is ANY or current == expected:
        return
    raise StoreConflict(f"tunnel {name!r} changed meanwhile" if current is not None and expected is not None
                        else f"tunnel {name!r} {'exists' if current is not None else 'does not exist'}")


class StateFile:
    """API Tunnels in one JSON file, replaced whole (temporary file, fsync, rename; mode 0600)
    on each change, so a crash leaves the old table or the new one, never half of one."""

    def __init__(self, api_config, log):
        self.path = api_config.state_file
        self.log = log
        self.label = str(self.path)
        self._table = None
        self._lock = gevent.lock.Semaphore()

    def load(self):
        """The stored table; {} when there is no file yet; StoreUnavailable when unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            self._table = {} if data is None else decode_table(data)
        except ValueError as exc:
            raise StoreUnavailable(f"{self.path} is not an API Tunnel table: {exc}") from None
        return dict(self._table)

    def put(self, name, record, expected=ANY):
        self._change(name, record, expected)

    def delete(self, name, expected=ANY):
        self._change(name, None, expected)

    def _change(self, name, record, expected):
        with self._lock:
            table = dict(self._table if self._table is not None else self.load())
            check_expected(table.get(name), expected, name)
            if record is None:
                table.pop(name, None)
            else:
                table[name] = record
            try:
                atomic_write(self.path, encode_table(table), mode=KEY_MODE)
            except (OSError, MaterialError) as exc:
                raise StoreUnavailable(f"cannot write {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
            self._table = table

    def follow(self, on_change):
        """Nothing changes a state file but this process."""

    def close(self):
        pass


def open_store(api_config, log):
    """The store `[server.api]` names: etcd when it lists endpoints, else the state file."""
    if api_config.etcd_endpoints:
        from .etcdstore import EtcdStore  # engineer C's module; imported only when used

        return EtcdStore(api_config, log)
    return StateFile(api_config, log)
