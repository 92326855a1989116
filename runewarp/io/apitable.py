"""The API Tunnels half of the Server (mixed into io.server.Server): the table the store
keeps, merged into the file's configuration by the file's rules, and every change to it
applied through the Server's build-then-swap reload under one lock that a SIGHUP or
watch-config reload also takes, so the two never interleave.

`self.file_config` is the configuration as the file gives it; `self.config` is that plus
the API Tunnels, what the Server routes by.
"""

import gevent.lock

from ..config.server import with_api_tunnels
from ..errors import ConfigError, RunewarpError
from ..proto.apitunnels import RequestRefused
from .tunnelstore import StoreConflict, StoreUnavailable, open_store


class ApiTunnels:
    """Reads `config`, `log` and `_swap(config)` from the Server."""

    def _init_api_tunnels(self, config):
        self.file_config = config
        self.api_table = {}  # name -> record: the API Tunnels routed now
        self.api_stored = {}  # the store's table as last seen: also those the file's rules left out
        self.config_lock = gevent.lock.Semaphore()
        self.store = open_store(config.api, self.log) if config.api is not None else None

    @property
    def api_label(self):
        """Where API Tunnels are kept, as the `file` of their error lines."""
        return getattr(self.store, "label", "api")

    def _start_api_tunnels(self):
        """At start, before the listeners: the stored API Tunnels join the routing table.  An
        unreachable store starts the Server with none (warned); a stored Tunnel the file's
        rules now refuse is left out (logged) rather than failing the start."""
        if self.store is None:
            return
        try:
            table = self.store.load()
        except StoreUnavailable as exc:
            self.log.warn("api-tunnels-unavailable", reason=str(exc), kept="no API Tunnels")
            table = {}
        config, self.api_table = self._fit(table)
        self.api_stored = dict(table)
        self._adopt(config)

    def _follow_api_tunnels(self):
        """Once serving: apply the store's changes made elsewhere (etcd's watch)."""
        if self.store is not None:
            self.store.follow(self.follow_api_tunnels)

    def _close_api_tunnels(self):
        if self.store is not None:
            self.store.close()

    def reload(self, config):
        """The file changed (SIGHUP, watch-config): the new file plus the same API Tunnels,
        or a ConfigError naming the API Tunnel the new file conflicts with (nothing changes).
        A stored Tunnel the old file's rules left out routes again once the new file admits it."""
        with self.config_lock:
            config = self._keep_running(config)
            merged = with_api_tunnels(config, self.api_table, self.api_label) if self.api_table else config
            kept = dict(self.api_table)
            for name in sorted(set(self.api_stored) - set(kept)):
                try:
                    merged = with_api_tunnels(config, {**kept, name: self.api_stored[name]}, self.api_label)
                except ConfigError:
                    continue
                kept[name] = self.api_stored[name]
                self.log.info("api-tunnel-admitted", tunnel=name, reason="the reloaded file allows it")
            self._swap(merged)
            self.file_config = config
            self.api_table = kept

    def change_api_tunnel(self, name, record, if_match):
        """PUT (`record`) or DELETE (None) the API Tunnel `name`, in this order: validate,
        store (compare-and-set against the record stored as this node last saw it), apply.
        (The record stored before or None, the record stored now, hostnames normalized, or
        None); RequestRefused for the API's
        404/409/412/422/503 answers.  A stored Tunnel the file's rules left out at start can
        be deleted (or replaced by one they accept)."""
        with self.config_lock:
            if any(t.name == name for t in self.file_config.tunnels):
                raise RequestRefused(409, f"tunnel {name!r} comes from the config file "
                                          f"{self.file_config.source}; change it there")
            current = self.api_stored.get(name)
            if record is None and current is None:
                raise RequestRefused(404, f"no tunnel {name!r}")
            if not if_match(current):
                raise RequestRefused(412, f"tunnel {name!r} is not the version If-Match names")
            table = {k: v for k, v in self.api_table.items() if k != name}
            if record is not None:
                table[name] = record
            try:
                merged = with_api_tunnels(self.file_config, table, self.api_label)
            except ConfigError as exc:  # a PUT only: fewer Tunnels than a valid table is valid
                raise RequestRefused(422, str(exc)) from None
            if record is not None:  # stored as it routes: app.example.com, not App.Example.COM.
                tunnel = next(t for t in merged.tunnels if t.name == name)
                record = table[name] = {"public-hostnames": list(tunnel.public_hostnames),
                                        "client-identities": list(tunnel.client_identities)}
            self._store_change(name, record, current)
            try:
                if merged != self.config:  # a PUT of the same Tunnel changes no routing
                    self._swap(merged)
            except RunewarpError as exc:  # e.g. the Server certificate is unreadable right now
                self._put_back(name, current, record)
                raise RequestRefused(503, f"the Server cannot apply a change now: {exc}") from None
            self.api_table = table
            self.api_stored = {k: v for k, v in self.api_stored.items() if k != name}
            if record is not None:
                self.api_stored[name] = record
            return current, record

    def _put_back(self, name, record, written):
        """Undo a store write whose change could not be applied; when even that fails, the
        store holds a change this node does not route: say so (a restart, or with etcd the
        next table the watch brings, settles it)."""
        try:
            self._store_change(name, record, written)
        except RequestRefused as exc:
            self.log.error("api-store-diverged", tunnel=name, reason=exc.message,
                           effect="the store keeps a change this node does not route")

    def _store_change(self, name, record, current):
        try:
            if record is None:
                self.store.delete(name, expected=current)
            else:
                self.store.put(name, record, expected=current)
        except StoreUnavailable as exc:
            raise RequestRefused(503, f"the API Tunnel store is unavailable: {exc}") from None
        except StoreConflict as exc:
            raise RequestRefused(412, f"{exc}; read it again") from None

    def follow_api_tunnels(self, table, is_current=lambda: True):
        """The store's table changed elsewhere (another node, through etcd): apply it like an
        API change.  The same table again (the echo of this node's own write) changes
        nothing; one the store says is older than a change this node made while the table
        waited for the lock (`is_current()` false) is dropped: a newer one follows."""
        with self.config_lock:
            if not is_current():
                return
            self.api_stored = dict(table)
            config, kept = self._fit(table)
            if config == self.config:
                self.api_table = kept
                return
            try:
                self._swap(config)
            except RunewarpError as exc:
                self.log.error("api-tunnels-not-applied", reason=str(exc), kept="previous routing table")
                return
            self.api_table = kept
            self.log.info("api-tunnels-followed", tunnels=len(kept))

    def _fit(self, table):
        """(file config + the API Tunnels of `table` that pass its rules, those Tunnels): one
        the rules refuse is logged and left out, the others still route."""
        try:
            return with_api_tunnels(self.file_config, table, self.api_label), dict(table)
        except ConfigError:
            pass
        kept = {}
        for name in sorted(table):
            try:
                with_api_tunnels(self.file_config, {**kept, name: table[name]}, self.api_label)
            except ConfigError as exc:
                self.log.error("api-tunnel-refused", tunnel=name, reason=str(exc))
            else:
                kept[name] = table[name]
        return with_api_tunnels(self.file_config, kept, self.api_label), kept
