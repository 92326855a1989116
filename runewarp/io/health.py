"""The Client's Service health: the gevent driver around proto/health.py.

One ServiceHealth per Local backend (two Services on one backend share it, as they share
its metrics), fed by every stream's backend connect (io/streams.py), by probes and by
active checks, one greenlet per backend.  A change is logged (`service-unhealthy`,
`service-healthy`) and sent to the Server on every Tunnel connection as a `service-health`
control message (docs/protocol.md); each connection is told what changed since what it
was last told, so a new one, or one that just got a later hello, learns the whole state.
"""

import ssl
import time

import gevent
from gevent.event import Event

from ..errors import StreamAborted
from ..proto import control, proxyv2
from ..proto.address import format_address
from ..proto.health import ServiceHealth, probe_name, reported_change
from ..tls import any_certificate_context
from .net import describe, dial

NOTHING_REPORTED = (frozenset(), False)


class Health:
    """The health of `client`'s Services (io.client.Client: config, log, sessions)."""

    def __init__(self, client):
        self.client = client
        self.states = {}  # backend address -> ServiceHealth
        self.checkers = {}  # backend address -> (greenlet, wake Event)
        self.reported = {}  # TunnelSession -> what it was last told (NOTHING_REPORTED form)
        self.last_error = {}  # backend address -> the last failure's reason
        self._tls = None

    def configure(self, config):
        """At start and on each reload: a state and a checker per Local backend, the
        running ones kept (with their count) and given the new settings."""
        now = time.monotonic()
        wanted = {}
        for service in config.services:
            check = service.health_check
            wanted[service.backend_address] = None if check is None else check.interval
        for backend in [b for b in self.states if b not in wanted]:
            del self.states[backend]
            self.last_error.pop(backend, None)
            greenlet, _ = self.checkers.pop(backend)
            greenlet.kill(block=False)
        for backend, interval in wanted.items():
            state = self.states.get(backend)
            if state is None:
                self.states[backend] = ServiceHealth(config.unhealthy_after, interval, now)
                wake = Event()
                self.checkers[backend] = gevent.spawn(self._run, backend, wake), wake
                continue
            state.unhealthy_after = config.unhealthy_after
            if state.check_interval != interval:
                state.check_interval = interval
                state.next_check = now  # the new check (or the probe) runs at once
            self.checkers[backend][1].set()

    def stop(self):
        gevent.killall([greenlet for greenlet, _ in self.checkers.values()], block=False)

    def healthy(self, backend):
        state = self.states.get(backend)
        return state is None or state.healthy

    # -- events --
    def connect_failed(self, service, reason):
        state = self.states.get(service.backend_address)
        if state is not None:
            self.last_error[service.backend_address] = reason
            self._changed(service.backend_address, state.connect_failed(time.monotonic()))

    def connect_succeeded(self, service):
        state = self.states.get(service.backend_address)
        if state is not None and (state.failures or not state.healthy):
            self._changed(service.backend_address, state.connect_succeeded(time.monotonic()))

    def _changed(self, backend, transition):
        if transition is None:
            return
        state = self.states[backend]
        services = [s for s in self.client.config.services if s.backend_address == backend]
        fields = dict(backend_address=format_address(backend),
                      public_hostnames=",".join(h for s in services for h in s.public_hostnames)
                      or "(Catch-all)")
        if state.healthy:
            self.client.log.info("service-healthy", **fields)
        else:
            self.client.log.warn("service-unhealthy", **fields, failures=state.failures,
                                 reason=self.last_error.get(backend))
            self.checkers[backend][1].set()  # the probe starts
        self.report()

    # -- what the Server is told --
    def unhealthy_now(self):
        """(the hostnames of unhealthy Services, whether the Catch-all Service is)."""
        names, catch_all = set(), False
        for service in self.client.config.services:
            if not self.healthy(service.backend_address):
                names.update(service.public_hostnames)
                catch_all = catch_all or service.is_catch_all
        return frozenset(names), catch_all

    def report(self, session=None, fresh=False):
        """Send each Tunnel connection what changed since it was last told; `session`: only
        that one (it just connected, or with `fresh` just sent a hello: it knows nothing)."""
        now = self.unhealthy_now()
        for gone in [s for s in self.reported if s.closed.is_set()]:
            del self.reported[gone]
        if fresh:
            self.reported[session] = NOTHING_REPORTED
        for target in [session] if session is not None else list(self.reported):
            if target.closed.is_set() or target.control is None:
                self.reported.pop(target, None)
                continue
            change = reported_change(self.reported.get(target, NOTHING_REPORTED), now)
            self.reported[target] = now
            if change is not None:
                try:
                    target.control.sendall(control.encode(control.service_health(*change)))
                except StreamAborted:
                    self.reported.pop(target, None)

    # -- probes and active checks --
    def _run(self, backend, wake):
        while True:
            state = self.states.get(backend)
            if state is None:
                return
            due = state.due()
            left = None if due is None else due - time.monotonic()
            if left is None or left > 0:
                wake.wait(left)
                wake.clear()
                continue
            service = next((s for s in self.client.config.services
                            if s.backend_address == backend), None)
            if service is None:
                return
            reason = self._check(service)
            if reason is not None:
                self.last_error[backend] = reason
            if self.states.get(backend) is state:
                self._changed(backend, state.check_result(reason is None, time.monotonic()))

    def _check(self, service):
        """One check of the Service's Local backend: None when it passed, else why not.
        A probe of a Service without health-check is a TCP connect within backend-connect."""
        check = service.health_check
        timeout = check.timeout if check else self.client.config.timeouts.backend_connect
        try:
            with gevent.Timeout(timeout) as timer:
                sock = dial(service.backend_address)
                try:
                    if service.proxy_protocol is not None:  # no Visitor: a LOCAL header
                        sock.sendall(proxyv2.local_header(service.proxy_protocol))
                    if check is not None and check.kind == "tls":
                        self._handshake(sock, probe_name(service.public_hostnames))
                finally:
                    sock.close()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return f"{check.kind if check else 'tcp'} check: deadline exceeded"
        except (OSError, ssl.SSLError) as exc:
            return f"{check.kind if check else 'tcp'} check: {describe(exc)}"
        except Exception as exc:  # noqa: BLE001 - a backend's bytes never end the checker
            return f"{check.kind if check else 'tcp'} check: unexpected {describe(exc)}"
        return None

    def _handshake(self, sock, hostname):
        if self._tls is None:
            self._tls = any_certificate_context()  # the check asks only that it completes
        # The wrapper owns the socket once made: it closes it even when the handshake is cut
        # short by the deadline (else the descriptor waits for the garbage collector).
        tls = self._tls.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        finally:
            tls.close()
