"""The Client's Tunnel connection workers: one per (server-address, resolved address, index).

Every A and AAAA address of every `server-address` gets `connections-per-server`
workers, each with its own backoff sequence (proto/backoff.py).  The names are resolved
again every `resolve-interval` seconds and on reload; proto/serverset.py says which
workers to add and which to drain.  A drained worker dials no more and sends its live
connection a go away; the connection closes once its streams end, or after
`graceful-shutdown-duration`.

While a Client identity is staged (`client identity rotate --stage`), each resolved
address also gets one staged worker, which dials with the staged identity and tries
again with backoff while the Server refuses it.  Once a Server address accepts it,
that address's workers replace their connections: each sends its old connection a go
away (it drains) and dials again at once with the staged identity, while the staged
connection serves.  No moment without a Tunnel connection.

A Server with `workers = N` says in each welcome which of its worker processes holds
the connection; each address then gets `connections-per-server` workers per Server
worker, and a connection that lands on a Server worker already covered is closed and
dialed again at once (proto/serverset.coverage), a bounded number of times.
"""

import random
import ssl
import time

import gevent
from gevent.event import Event

from ..errors import CertificateRefused, MaterialError, ProtocolError, StreamAborted, Unauthorized
from ..proto import control
from ..proto.address import format_address
from ..proto.backoff import Backoff
from ..proto.mux import GOAWAY_NORMAL
from ..proto.serverset import Link, coverage, plan
from .net import describe, resolve_all
from .upkeep import utcnow

RETIRE_POLL = 0.2  # seconds between checks that a drained connection's streams have ended
UNRESOLVED_RETRY = 5.0  # seconds: a name with no address yet is tried again this soon


class ServerLink:
    """One worker: what /status tells about it, and its drain signal."""

    def __init__(self, key):
        self.key = key  # proto.serverset.Link
        self.server = format_address(key.entry)
        self.resolved = format_address(key.address)
        self.state = "connecting"  # | "established" | "waiting" | "draining"
        self.connected_since = None
        self.last_error = None
        self.retry_at = None  # monotonic
        self.session = None
        self.retired = Event()
        self.replace = Event()  # the staged identity was accepted: move this worker to it
        self.identity = None  # the staged IdentityResult this worker dials with, None: current
        self.staged = key.index is None  # the staged worker of its address
        self.server_worker = None  # the welcome's `worker` while established (/status)
        self.server_workers = None  # and its `workers`
        self.incomplete_logged = False  # coverage gave up once: said once
        self.greenlet = None

    def fields(self):
        """The log fields that name this worker."""
        return dict(server_address=self.server, resolved_address=self.resolved,
                    connection="staged" if self.staged else self.key.index)


class ServerLinks:
    """The workers of `client` (io.client.Client: config, log, metrics, sessions, stopping,
    identity and its `_connect`), kept in step with what the names resolve to."""

    def __init__(self, client, windows):
        self.client = client
        self.windows = windows
        self.links = {}  # Link -> ServerLink, draining ones included until their worker ends
        self.staged = {}  # (entry, address) -> the staged-identity ServerLink of that address
        self.promoted = set()  # (entry, address) whose Server accepted the staged identity
        self.unstaged = set()  # staged workers retired by a commit or abort, until they end
        self.unresolved = {}  # entry -> why its last resolution failed (one warning per outage)
        self.workers = {}  # (entry, address) -> the Server's worker count, from its welcomes
        self.timer = None

    def start(self):
        self.refresh()
        self.timer = gevent.spawn(self._resolve_loop)

    def reload(self):
        """After a reload: resolve now (connections-per-server may have changed), then every
        resolve-interval as it is now.  Never blocks the reload on DNS."""
        if self.timer is not None:
            self.timer.kill(block=False)
        self.timer = gevent.spawn(self._resolve_loop, now=True)

    def established(self):
        return any(link.state == "established" for link in self.all())

    def all(self):
        """Every worker, the staged ones last."""
        return [*(link for _, link in sorted(self.links.items())), *self.staged.values()]

    def refresh(self, resolve=True):
        """Resolve every entry now (`resolve`; else keep the current addresses, after a
        welcome changed a Server's worker count); start the workers of new addresses and
        Server workers, drain vanished ones."""
        config = self.client.config
        resolved = {entry: self._resolve(entry) if resolve else None
                    for entry in config.server_addresses}
        running = {key for key, link in self.links.items() if not link.retired.is_set()}
        add, drain = plan(running, resolved, config.connections_per_server, self.workers)
        for key in drain:
            link = self.links[key]
            link.retired.set()
            addresses = resolved.get(key.entry)
            self.client.log.info("tunnel-connection-retired", **link.fields(),
                                 reason="address no longer resolved"
                                 if addresses and key.address[0] not in addresses
                                 else "connections-per-server lowered or fewer Server workers")
        for key in add:
            link = self.links[key] = ServerLink(key)
            link.greenlet = gevent.spawn(self._worker, link)
        self._stage({(k.entry, k.address) for k in running | set(add) if k not in drain})

    def _stage(self, addresses):
        """One staged worker per address while an identity is staged; none otherwise."""
        staged = self.client.staged
        if staged is None or staged.identity == self.client.identity:
            addresses = set()
            self.promoted.clear()
        for where, link in list(self.staged.items()):
            if staged is None or where not in addresses or \
                    link.identity.identity != staged.identity:
                link.retired.set()
                self.unstaged.add(self.staged.pop(where))
        for entry, address in addresses - set(self.staged):
            link = self.staged[entry, address] = ServerLink(Link(entry, address, None))
            link.identity = staged
            link.greenlet = gevent.spawn(self._worker, link)

    def identity_for(self, link):
        """The staged identity for a worker whose address accepted it; None (the current
        identity) otherwise.  A staged worker keeps the identity it was started with."""
        staged = self.client.staged
        if staged is not None and (link.key.entry, link.key.address) in self.promoted:
            return staged
        return None

    def _still_staged(self, link):
        staged = self.client.staged
        return staged is not None and staged.identity == link.identity.identity

    def _accepted(self, link):
        """The staged connection of `link`'s address is up: its workers move to the staged
        identity (io/client.py logs it)."""
        where = (link.key.entry, link.key.address)
        if where in self.promoted:
            return
        self.promoted.add(where)
        self.client.log.info("client-identity-staged-accepted", **link.fields(),
                             client_identity=link.identity.identity,
                             replacing=sum(1 for k in self.links if (k.entry, k.address) == where))
        for key, other in self.links.items():
            if (key.entry, key.address) == where:
                other.replace.set()

    def _cover(self, link, session, tries):
        """The coverage verdict for `link`'s new `session` (proto/serverset.coverage); a new
        worker count at its address re-plans first."""
        welcome = session.welcome
        where = (link.key.entry, link.key.address)
        if self.workers.get(where, 1) != welcome.workers:
            self.workers[where] = welcome.workers
            self.client.log.info("server-workers-changed", **link.fields(),
                                 server_workers=welcome.workers)
            self.refresh(resolve=False)
        if link.staged:
            return "keep"  # the staged identity's probe: one per address, wherever it lands
        others = [(other.server_worker, other.server_workers)
                  for key, other in self.links.items()
                  if other is not link and (key.entry, key.address) == where
                  and other.state == "established" and other.server_worker is not None]
        verdict = coverage(welcome.worker, welcome.workers, others,
                           self.client.config.connections_per_server, tries)
        if verdict == "incomplete" and not link.incomplete_logged:
            link.incomplete_logged = True
            self.client.log.info("tunnel-connection-worker-coverage-incomplete", **link.fields(),
                                 server_worker=welcome.worker, server_workers=welcome.workers,
                                 tries=tries, effect="kept; the Server's workers pass Visitors "
                                                     "on to the one holding this connection")
        return verdict

    def _resolve(self, entry):
        """The addresses of `entry`; None when resolving failed (logged once per outage)."""
        host, port = entry
        log, label = self.client.log, format_address(entry)
        try:
            addresses = resolve_all(host, port)
        except OSError as exc:
            if entry not in self.unresolved:
                log.warn("server-address-unresolved", server_address=label, reason=describe(exc),
                         keeping=sum(1 for k in self.links if k.entry == entry))
            self.unresolved[entry] = describe(exc)
            return None
        if self.unresolved.pop(entry, None) is not None:
            log.info("server-address-resolved", server_address=label, addresses=",".join(addresses))
        return addresses

    def _resolve_loop(self, now=False):
        stopping = self.client.stopping
        while now or not stopping.wait(self._interval()):
            now = False
            if stopping.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the schedule must survive any pass
                self.client.log.error("server-address-refresh-failed", reason=describe(exc))

    def _interval(self):
        """resolve-interval as configured now; sooner while a name has no worker at all (a
        Client started during a DNS outage connects when it ends, not a minute later)."""
        interval = self.client.config.resolve_interval
        if any(not any(k.entry == entry for k in self.links) for entry in self.unresolved):
            return min(interval, UNRESOLVED_RETRY)
        return interval

    def stop(self):
        links = [*self.all(), *self.unstaged]
        gevent.killall([g for g in [self.timer, *(link.greenlet for link in links)]
                        if g is not None], block=False)

    # -- one worker --
    def _worker(self, link):
        try:
            self._run(link)
        finally:
            if self.links.get(link.key) is link and link.retired.is_set():
                del self.links[link.key]
            self.unstaged.discard(link)

    def _run(self, link):
        client, log = self.client, self.client.log
        backoff = Backoff(self.windows)
        failures = 0  # attempts that failed since the last established connection
        surplus = 0  # connections in a row that landed on a Server worker already covered
        down_since = time.monotonic()  # no Tunnel connection on this worker since then
        state = client.metrics.state[link.server]
        while not (client.stopping.is_set() or link.retired.is_set()):
            link.state = "connecting"
            went_away = False
            if link.staged and not self._still_staged(link):
                break  # unstaged by a reload whose refresh has not run yet
            if not link.staged:
                link.identity = self.identity_for(link)
            link.replace.clear()
            try:
                session = client._connect(link, failures, down_since)
            except CertificateRefused as exc:
                failures += 1
                link.last_error = client.managed.refused(exc.alert)
                log.error("tunnel-connection-certificate-refused", **link.fields(), attempt=failures,
                          client_identity=(link.identity or client).identity, alert=exc.alert,
                          reason=link.last_error)
            except Unauthorized:
                failures += 1
                link.last_error = "unauthorized client identity"
                identity = (link.identity or client).identity
                if link.staged:  # expected until the operator lists it: not an error yet
                    log.info("tunnel-connection-staged-refused", **link.fields(),
                             client_identity=identity, attempt=failures,
                             reason=f"staged client identity {identity} not listed by the "
                                    "Server yet (expected while staged; the current identity "
                                    "keeps serving)")
                else:
                    log.error("tunnel-connection-unauthorized", **link.fields(),
                              client_identity=identity, attempt=failures,
                              reason=f"unauthorized client identity {identity}: the "
                                     "Server's Tunnels do not list it")
            except MaterialError as exc:
                failures += 1
                link.last_error = str(exc)
                log.error("tunnel-connection-failed", **link.fields(), attempt=failures,
                          reason=str(exc))
            except (OSError, ssl.SSLError, gevent.Timeout, ProtocolError, StreamAborted,
                    control.ControlError) as exc:
                failures += 1
                link.last_error = describe(exc)
                # The first failure of an outage is the warning; its repeats are counted.
                log.log("warn" if failures == 1 else "info", "tunnel-connection-failed",
                        **link.fields(), attempt=failures, reason=describe(exc))
            except Exception as exc:  # noqa: BLE001 - a peer's bytes never end this worker
                failures += 1
                link.last_error = f"unexpected {describe(exc)}"
                log.error("tunnel-connection-failed", **link.fields(), attempt=failures,
                          reason=f"unexpected {describe(exc)}")
            else:
                failures = 0
                backoff.established(time.monotonic())
                client.sessions.add(session)
                if self._cover(link, session, surplus) == "redial":
                    surplus += 1
                    log.debug("tunnel-connection-surplus", **link.fields(),
                              server_worker=session.welcome.worker, tries=surplus)
                    session.go_away()
                    gevent.spawn(self._retire, session, client.config.graceful_shutdown_duration)
                    continue  # dial again at once: another Server worker may take it
                surplus = 0
                link.server_worker = session.welcome.worker
                link.server_workers = session.welcome.workers
                link.state, link.session, link.connected_since = "established", session, utcnow()
                state.inc()
                if link.staged:
                    self._accepted(link)
                elif link.identity is None and (link.key.entry, link.key.address) in self.promoted:
                    link.replace.set()  # accepted while this one was dialing
                gevent.wait([session.closed, session.peer_going_away, client.stopping,
                             link.retired, link.replace], count=1)
                if client.stopping.is_set():
                    break  # the Client's own drain (io/client.py) owns the session now
                state.dec()
                link.session, link.connected_since = None, None
                link.server_worker = link.server_workers = None
                down_since = time.monotonic()
                if link.replace.is_set() and not (session.closed.is_set() or
                                                  link.retired.is_set()):
                    log.info("tunnel-connection-replaced", **link.fields(),
                             reason="the staged client identity was accepted")
                    session.go_away()
                    gevent.spawn(self._retire, session, client.config.graceful_shutdown_duration)
                    continue  # dial again at once: the staged connection serves meanwhile
                # A Server stopping or handing over says go away (normal) before it closes.
                went_away = session.go_away_reason == GOAWAY_NORMAL
                if link.retired.is_set() and not session.closed.is_set():
                    link.state = "draining"
                    session.go_away()
                    self._retire(session, client.config.graceful_shutdown_duration)
                    break
                link.state = "connecting"
                link.last_error = session.close_reason or "the Server is going away"
                if session.closed.is_set() and not went_away:
                    client.sessions.discard(session)
                    log.warn("tunnel-connection-lost", **link.fields(),
                             reason=session.close_reason)
                else:
                    # The Server is draining: its streams finish on the old connection while
                    # this worker dials the replacement at once (an ordinary disconnect).
                    log.info("tunnel-connection-draining", **link.fields())
                    gevent.spawn(self._retire, session)
            if client.stopping.is_set() or link.retired.is_set():
                break
            delay = backoff.next_delay(random.uniform, time.monotonic(), went_away=went_away)
            client.metrics.reconnects[link.server].inc()
            link.state, link.retry_at = "waiting", time.monotonic() + delay
            log.info("tunnel-reconnect-scheduled", **link.fields(),
                     next_retry_delay=round(float(delay), 2))
            if delay:
                gevent.wait([client.stopping, link.retired], timeout=delay, count=1)

    def _retire(self, session, grace=None):
        """Close `session` once it ends or, with `grace`, once its streams have ended (the
        control stream aside) or `grace` seconds have passed."""
        try:
            if grace is None:
                session.wait()
                return
            deadline = time.monotonic() + grace
            while session.active_streams > 1 and time.monotonic() < deadline:
                session.wait(min(RETIRE_POLL, max(0.0, deadline - time.monotonic())))
        finally:
            self.client.sessions.discard(session)
            session.close("drained")
