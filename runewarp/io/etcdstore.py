"""API Tunnels in etcd, for a fleet of Server nodes that share one routing table.

The client is `etcd3gw` (etcd's HTTP/JSON gateway over `requests`, so it is cooperative once
gevent has monkey-patched the process; it finds the gateway path, /v3/ on etcd 3.4, from
`/version`).  Reads and compare-and-set writes go through its `post`/`transaction`.  The watch
is read here from the client's own session instead of through `etcd3gw.watch.Watcher`: that
one reads the stream in a thread pool and drops its end and its errors, so a watch broken by an
etcd outage would go unnoticed.

Every call has a deadline (`REQUEST_TIMEOUT`, all endpoints included): etcd down means
StoreUnavailable at once (refused) or at the deadline (silent), never a hang.  The follower
re-reads the whole prefix whenever its watch ends and hands on a table only when it differs,
so an outage costs nothing but a delay: the nodes keep routing their last good table.

The last table read is also written to `state-file` (the state file's format): a Server
restarted while etcd is unreachable starts with it and says so (`api-store-cache-used`).
"""

import random
import re
import ssl
import time
from urllib.parse import urlsplit

import gevent
import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

from ..errors import RemoteProtocolError
from ..material import KEY_MODE, atomic_write
from ..proto import etcdkv
from ..proto.apitunnels import decode_table, encode_table
from ..proto.backoff import Backoff
from .tunnelstore import ANY, StoreConflict, StoreUnavailable, check_expected

REQUEST_TIMEOUT = 3.0  # one store call, every endpoint tried: an API write answers 503 by then
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
WATCH_IDLE = 30.0  # a watch silent that long is re-armed after a fresh read (a hung etcd shows)
RETRY_WINDOWS = (0.5, 1, 2, 4)  # the follower's backoff after a failed read or a short watch
_UNREACHABLE = (etcd_errors.Etcd3Exception, requests.RequestException, OSError, ValueError,
                RemoteProtocolError, KeyError, TypeError, AttributeError)


def _client(url, api_config):
    """The client of one endpoint.  Its session ignores the environment (`trust_env`):
    requests would otherwise send etcd's traffic to an HTTP(S)_PROXY and let a
    REQUESTS_CA_BUNDLE replace `etcd-ca-file` (requests issue 3829).  Without
    `etcd-ca-file`, the system store verifies etcd, not the CA list requests ships."""
    session = requests.Session()
    session.trust_env = False
    system = ssl.get_default_verify_paths()
    trust = api_config.etcd_ca_file or system.cafile or system.capath
    session.verify = str(trust) if trust else True
    if api_config.etcd_cert_file:
        session.cert = (str(api_config.etcd_cert_file), str(api_config.etcd_key_file))
    parts = urlsplit(url)
    return Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), session=session)


def _reason(exc):
    """A short reason: the OS error under requests' wrapping when there is one."""
    text = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
    found = re.search(r"\[(?:Errno -?\d+|SSL: \w+)\] ([^'\"()]+)", text)
    return found.group(1).strip() if found else text[:200]


class EtcdStore:
    """The `StateFile` interface (io/tunnelstore.py) over keys `<etcd-prefix><name>`."""

    def __init__(self, api_config, log):
        self.prefix = api_config.etcd_prefix
        self.endpoints = tuple(api_config.etcd_endpoints)
        self.state_file = api_config.state_file
        self.log = log
        self.label = "etcd " + ",".join(self.endpoints)
        self._clients = [_client(url, api_config) for url in self.endpoints]
        self._current = 0  # the endpoint that answered last: tried first
        self._table = {}
        self._revisions = {}  # name -> mod_revision as last read: what a compare-and-set compares
        self._revision = 0
        self._written = 0  # revision of this node's last write: no older table is handed on
        self._delivered = None
        self._reported = set()
        self._down = None  # the reason of the outage the follower is in
        self._on_change = None
        self._follower = None

    # -- the store interface --

    def load(self):
        """The table in etcd; when etcd is unreachable, the cached one (StoreUnavailable
        without a cache: a node that never saw the table must not pretend it is empty)."""
        try:
            table, revisions, revision, invalid = self._call(self._read)
        except StoreUnavailable as exc:
            return self._cached(exc)
        self._take(table, revisions, revision, invalid)
        self._delivered = table
        self._save(table)
        return dict(table)

    def put(self, name, record, expected=ANY):
        self._write(name, expected, record, etcdkv.put_txn(self.prefix, name, record,
                                                           self._compares(name, expected)))

    def delete(self, name, expected=ANY):
        self._write(name, expected, None, etcdkv.delete_txn(self.prefix, name,
                                                            self._compares(name, expected)))

    def follow(self, on_change):
        """Call `on_change(table, is_current)` from a greenlet after each change of the table
        in etcd.  `is_current()` says whether the table is still not older than this node's own
        last write: the callback asks once it holds its lock, since a local write may land
        while it waits for it."""
        self._on_change = on_change
        self._follower = gevent.spawn(self._follow)

    def close(self):
        if self._follower is not None:
            self._follower.kill(timeout=REQUEST_TIMEOUT)
        for client in self._clients:
            client.session.close()

    # -- etcd calls --

    def _call(self, request):
        """`request(client)` on the first endpoint that answers, within REQUEST_TIMEOUT."""
        failures = []
        with gevent.Timeout(REQUEST_TIMEOUT) as timer:
            try:
                for step in range(len(self._clients)):
                    index = (self._current + step) % len(self._clients)
                    try:
                        answer = request(self._clients[index])
                    except _UNREACHABLE as exc:
                        failures.append(f"{self.endpoints[index]}: {_reason(exc)}")
                        continue
                    self._current = index
                    return answer
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                failures.append(f"no answer within {REQUEST_TIMEOUT:g}s")
        raise StoreUnavailable("etcd unreachable: " + "; ".join(failures))

    def _read(self, client):
        answer = client.post(client.get_url("/kv/range"), json=etcdkv.range_request(self.prefix))
        return etcdkv.read_range(answer, self.prefix)

    def _compares(self, name, expected):
        """`expected` against the record this node last read, then etcd's compare of the key's
        mod_revision as read (nobody wrote it since).  A value that is no record counts as
        absent, so a PUT can replace it and a DELETE remove it."""
        if expected is ANY:
            return ()
        check_expected(self._table.get(name), expected, name)
        if name not in self._revisions:
            return (etcdkv.must_be_absent(self.prefix, name),)
        return (etcdkv.must_be_at(self.prefix, name, self._revisions[name]),)

    def _write(self, name, expected, record, txn):
        txn["failure"] = [{"request_range": {"key": etcdkv.key(self.prefix, name)}}]
        invalid = name in self._revisions and name not in self._table
        answer = self._call(lambda client: client.transaction(txn))
        if not answer.get("succeeded"):
            raise StoreConflict(self._conflict(name, expected, answer))
        revision = etcdkv.revision(answer)
        self._written = max(self._written, revision)
        if invalid:
            self.log.warn("api-store-invalid-record-replaced", store=self.label, tunnel=name,
                          by="put" if record is not None else "delete")
        if self._revision < revision:  # else the watch brought this write (and maybe more)
            # Known at once (the watch echoes it later): the next compare-and-set compares it.
            self._table = {k: v for k, v in self._table.items() if k != name}
            self._revisions = {k: v for k, v in self._revisions.items() if k != name}
            if record is not None:
                self._table[name], self._revisions[name] = record, revision

    def _conflict(self, name, expected, answer):
        """Why a compare failed, from the record the failed transaction read back (the
        state file's words, tunnelstore.check_expected; a key written since this node read
        it, even with the same record, fails too)."""
        kvs = (answer.get("responses") or [{}])[0].get("response_range", {}).get("kvs", [])
        current = None
        if kvs:
            try:
                current = etcdkv.record_of(etcdkv.value(kvs[0]))
            except ValueError:
                current = "a value that is no record"
        try:
            check_expected(current, expected, name)
        except StoreConflict as exc:
            return str(exc)
        return f"tunnel {name!r} was written again meanwhile"

    # -- the follower --

    def _follow(self):
        backoff = Backoff(RETRY_WINDOWS)
        while True:
            try:
                self._take(*self._call(self._read))
                if self._down is not None:
                    self.log.info("api-store-recovered", store=self.label)
                    self._down = None
                self._hand_on()
                backoff.established(time.monotonic())
                self._watch()
            except StoreUnavailable as exc:
                if self._down is None:
                    self.log.warn("api-store-unavailable", store=self.label, reason=str(exc))
                self._down = str(exc)
            gevent.sleep(backoff.next_delay(random.uniform, time.monotonic()))

    def _watch(self):
        """Apply the watch stream from the revision after the last read until it ends."""
        client = self._clients[self._current]
        request = etcdkv.watch_request(self.prefix, self._revision + 1)
        response = None
        try:
            response = client.session.post(client.get_url("/watch"), json=request, stream=True,
                                           timeout=(CONNECT_TIMEOUT, WATCH_IDLE))
            if response.status_code != 200:
                raise StoreUnavailable(f"etcd refused the watch: HTTP {response.status_code}")
            for line in response.iter_lines(chunk_size=None):
                change = (etcdkv.read_watch(line, self.prefix, self._table, self._revisions)
                          if line.strip() else None)
                if change:
                    self._take(*change, whole=False)
                    self._hand_on()
        except _UNREACHABLE as exc:
            self.log.debug("api-store-watch-ended", store=self.label, reason=_reason(exc))
        finally:
            if response is not None:
                response.close()

    def _take(self, table, revisions, revision, invalid, whole=True):
        """Adopt a table read at `revision`; each value that is no record is logged once
        (`whole`: a full read, which forgets the ones that are gone).  A full read older than
        this node's own last write (answered before it) is not adopted: the watch from the
        older revision brings the same changes."""
        for name, reason in invalid:
            if (name, reason) not in self._reported:
                self.log.warn("api-store-invalid-record", store=self.label, tunnel=name,
                              reason=reason)
        self._reported = set(invalid) if whole else self._reported | set(invalid)
        if whole and revision < self._written:
            return
        self._table, self._revisions, self._revision = table, revisions, revision

    def _hand_on(self):
        """Give the follower's callback the table when it changed, unless it is older than
        this node's own last write (which the Server applied already)."""
        table, revision = self._table, self._revision
        if revision < self._written or table == self._delivered:
            return
        self._delivered = table
        self._save(table)
        try:
            self._on_change(dict(table), lambda: revision >= self._written)
        except Exception as exc:  # the follower must outlive a callback's bug
            self.log.error("api-store-apply-failed", store=self.label, reason=repr(exc))
        if revision < self._written:  # refused as stale (or overtaken): not the delivered one
            self._delivered = None

    # -- the cache in state-file --

    def _save(self, table):
        try:
            atomic_write(self.state_file, encode_table(table), mode=KEY_MODE)
        except OSError as exc:
            self.log.warn("api-store-cache-failed", file=str(self.state_file),
                          reason=exc.strerror or str(exc))

    def _cached(self, exc):
        try:
            table = decode_table(self.state_file.read_bytes())
        except FileNotFoundError:
            raise exc from None
        except (OSError, ValueError) as error:
            raise StoreUnavailable(f"{exc}; the cache {self.state_file} is unusable: "
                                   f"{error}") from None
        self.log.warn("api-store-cache-used", store=self.label, file=str(self.state_file),
                      tunnels=len(table), reason=str(exc))
        self._delivered = table
        return table
