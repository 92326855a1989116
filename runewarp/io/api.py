"""The Server configuration API (`[server.api] bind-address`, docs/api.md): HTTPS with the
Server certificate, every caller authenticated by a client certificate from `client-ca-file`
(mutual TLS), JSON resources under /v1.  Changes go through the Server's ApiTunnels
(io/apitable.py); the values and routes are proto/apitunnels.py's.

Bounded like the metrics listener (io/httpserve.py): a pool of MAX_CONNECTIONS, one request
per connection, a TLS handshake deadline and then a request deadline, at most MAX_BODY
bytes of body.  A change runs in its own greenlet from a bounded pool, so a caller that
hangs up or a request deadline never stops a change halfway between store and routing.
"""

import ssl
from http import HTTPStatus

import gevent
from cryptography import x509
from gevent.pool import Pool

from ..config.render import document
from ..errors import MaterialError
from ..proto.address import format_address
from ..proto.apitunnels import RequestRefused, etag, if_match, parse_record, route, tunnel_document
from ..proto.openapi import DOCUMENT
from ..contextcache import ContextCache
from ..tls import api_server_context
from .httpserve import MAX_CONNECTIONS, BoundedHandler, BoundedServer, read_body, respond, respond_json
from .listener import side_listener

MAX_BODY = 64 * 1024
HANDSHAKE_DEADLINE = 5.0
REQUEST_DEADLINE = 10.0  # a change may wait for the lock and the store


class _ApiHandler(BoundedHandler):
    deadline = REQUEST_DEADLINE
    body_bytes = MAX_BODY

    def get_environ(self):
        environ = super().get_environ()
        environ["runewarp.caller"] = _subject(self.socket.getpeercert(binary_form=True))
        return environ


def _subject(der):
    """The caller's certificate subject as RFC 4514 text, `CN=operator` (for the change log)."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else "unknown"


class _TlsServer(BoundedServer):
    """pywsgi over TLS, each handshake with the context current now, so a renewed Server
    certificate (or a replaced client CA file) is used at once."""

    def __init__(self, sock, app, contexts, log):
        super().__init__(sock, app, _ApiHandler)
        self.contexts = contexts
        self.log_ = log

    def handle(self, sock, address):
        tls = None
        try:
            # Wrapped first, handshake after: the wrapper owns the socket from here on, and a
            # handshake cut short must leave it to `finally`, not to the garbage collector.
            tls = self.contexts.current().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            with gevent.Timeout(HANDSHAKE_DEADLINE) as timer:
                tls.do_handshake()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._refused(address, "no TLS handshake in time")
        except (ssl.SSLError, OSError, MaterialError) as exc:
            self._refused(address, str(exc))
        else:
            super().handle(tls, address)
        finally:
            if tls is not None:
                tls.close()
            sock.close()

    def _refused(self, address, reason):
        self.log_.debug("api-connection-refused", peer=format_address(address), reason=reason)


class ApiListener:
    """The API's listener; `server` is the io.server.Server it manages."""

    def __init__(self, server, api_config, log):
        self.server = server
        self.config = api_config
        self.log = log
        self.sock = None
        self.unit_owned = False
        self.http = None
        self.changes = Pool(MAX_CONNECTIONS)
        self.contexts = ContextCache(self._files, self._build)

    def _files(self, _key):
        """The Server certificate's files (None: none yet) and the client CA file: a change
        to any of them rebuilds the context."""
        paths = self.server.certificate_files()
        return None if paths is None else (*paths, self.config.client_ca_file)

    def _build(self, _key, paths):
        if paths is None:
            raise MaterialError("no Server certificate yet")
        return api_server_context(*paths)

    def bind(self, inherited=None):
        """As Monitor.bind: bind now or take a hand-over's socket; BindError naming the key."""
        if self.sock is not None:
            return
        self.sock, self.unit_owned = side_listener(self.config.bind_address, inherited,
                                                   "server.api.bind-address", "api")

    def start(self):
        self.bind()
        self.http = _TlsServer(self.sock, self.app, self.contexts, self.log)
        self.http.start()
        self.log.info("api-listening", api_bind_address=format_address(self.sock.getsockname()))

    def stop(self):
        if self.http is not None:
            self.http.close()
        elif self.sock is not None:
            self.sock.close()

    # -- HTTP --
    def app(self, environ, start_response):
        try:
            resource, name = route(environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return getattr(self, f"_{resource}")(environ, start_response, name)
        except RequestRefused as exc:
            headers = [("Allow", exc.allow)] if exc.allow else []
            return respond_json(start_response, _status(exc.status), {"error": exc.message}, headers)

    def _tunnels(self, _environ, start_response, _name):
        tunnels = [self._document(name) for name in self._names()]
        return respond_json(start_response, _status(200), {"tunnels": tunnels})

    def _config(self, _environ, start_response, _name):
        return respond_json(start_response, _status(200), document("server", self.server.config))

    def _openapi(self, _environ, start_response, _name):
        return respond_json(start_response, _status(200), DOCUMENT)

    def _tunnel(self, environ, start_response, name):
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            record = self._record(name)
            if record is None:
                raise RequestRefused(404, f"no tunnel {name!r}")
            return respond_json(start_response, _status(200), self._document(name),
                                [("ETag", etag(record))])
        record = None
        if method == "PUT":
            body = read_body(environ, MAX_BODY)
            if body is None:
                raise RequestRefused(413, f"the body is larger than {MAX_BODY} bytes")
            record = parse_record(body, name)
        header = environ.get("HTTP_IF_MATCH")
        done, outcome = self.changes.spawn(_outcome, self.server.change_api_tunnel, name, record,
                                           lambda current: if_match(header, current)).get()
        if not done:
            raise outcome
        before, record = outcome
        self.log.info("api-tunnel-changed", method=method, tunnel=name, caller=environ["runewarp.caller"],
                      created=record is not None and before is None)
        if record is None:
            return respond(start_response, _status(204), b"")
        return respond_json(start_response, _status(201 if before is None else 200),
                            tunnel_document(name, record, "api"), [("ETag", etag(record))])

    # -- the Tunnels as the API shows them --
    def _names(self):
        return [t.name for t in self.server.file_config.tunnels] + sorted(self.server.api_table)

    def _record(self, name):
        if name in self.server.api_table:
            return self.server.api_table[name]
        tunnel = next((t for t in self.server.file_config.tunnels if t.name == name), None)
        return None if tunnel is None else {"public-hostnames": list(tunnel.public_hostnames),
                                            "client-identities": list(tunnel.client_identities)}

    def _document(self, name):
        if name in self.server.api_table:
            return tunnel_document(name, self.server.api_table[name], "api")
        tunnel = next(t for t in self.server.file_config.tunnels if t.name == name)
        return tunnel_document(name, self._record(name), "file", tunnel.public_ports)


def _outcome(change, *args):
    """(True, result) or (False, the RequestRefused): a refusal is an answer, not a crash
    of the change's greenlet."""
    try:
        return True, change(*args)
    except RequestRefused as exc:
        return False, exc


def _status(code):
    return f"{code} {HTTPStatus(code).phrase}"
