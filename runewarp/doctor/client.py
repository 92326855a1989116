"""`runewarp doctor client`: the Client identity and trust, the Public hostname
certificates it terminates with, each Server address step by step (resolve, TCP, TLS,
identity, Hostname mirroring) and each Local backend."""

import shlex
import ssl
import uuid
from functools import partial

import gevent

from .. import __version__, certcheck, material
from ..errors import CertificateRefused, MaterialError, ProtocolError, Unauthorized
from ..io import dial
from ..io.net import describe, literal_family
from ..logs import Logger
from ..proto import control, proxyv2
from ..proto.address import format_address
from ..proto.mux import RESET_BEFORE_BACKEND
from ..proto.services import ServiceTable
from ..tls import client_tunnel_context
from .checks import fail, ok, warn
from .material import Leaf, certificate, key_files
from .probes import PROBE_TIMEOUT, Deadline, ProbeTimeout, addresses, backend_certificate, tcp
from ..proto.hostname import sample_name
from .server import acme, exact_under_wildcard

_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
PROBE_ERRORS = (OSError, ProbeTimeout, gevent.Timeout)  # ssl.SSLError is an OSError


def checks(cfg, now):
    c = f"-c {shlex.quote(str(cfg.source))}" if cfg.source else "-c FILE"
    identity = yield from _identity(cfg, c)
    manual = cfg.public_cert_dir if cfg.acme is None else None
    yield from key_files(material.client_key_files(cfg.identity_dir, manual,
                                                   cfg.terminate_hostnames if manual else None))
    trusted = yield from _trust(cfg)
    for hostname in cfg.terminate_hostnames:
        if manual is None:
            yield ok(f"certificate-files {hostname}", "managed by ACME ([client.acme]); certbot "
                                                      "renews it")
        else:
            yield from certificate(_public_leaf(manual, hostname, c), now)
    if cfg.acme is not None:
        yield acme("client", cfg.acme.directory_url)
    if identity is not None and trusted:
        for address in cfg.server_addresses:
            yield from _server(cfg, address, identity)
    for service in cfg.services:
        yield from _backend(service)
    yield from exact_under_wildcard({h: f"the Service of {format_address(s.backend_address)}"
                                     for s in cfg.services for h in s.public_hostnames})


def _identity(cfg, c):
    try:
        identity = material.show_identity(cfg.identity_dir)
        material.load_identity_paths(cfg.identity_dir)
    except MaterialError as exc:
        yield fail("client-identity", str(exc), f"runewarp client identity init {c}")
        return None
    yield ok("client-identity", f"{identity} ({cfg.identity_dir})")
    return identity


def _trust(cfg):
    if cfg.server_trust == "system":
        yield ok("server-trust", "the system CA store checks the Server certificate")
        return True
    try:
        cas = material.load_certificates(cfg.server_ca_file)
    except MaterialError as exc:
        yield fail("server-trust", str(exc), f"copy the Server's server-ca.crt (in its cert-dir) "
                                             f"to {cfg.server_ca_file}")
        return False
    # A bundle (server-ca-bundle.crt of a staged CA rotation) trusts each of its CAs.
    names = "; ".join(f"{ca.subject.rfc4514_string()} until {ca.not_valid_after_utc:%Y-%m-%d}"
                      for ca in cas)
    counted = f"{len(cas)} CAs: " if len(cas) > 1 else ""
    yield ok("server-trust", f"only {cfg.server_ca_file} ({counted}{names})")
    return True


def _public_leaf(public_dir, hostname, c):
    folder = public_dir / material.public_cert_folder(hostname)
    cert_path, key_path = folder / material.PUBLIC_CERT, folder / material.PUBLIC_KEY
    quoted = shlex.quote(hostname)
    return Leaf(
        hostname=hostname, cert_path=cert_path, key_path=key_path,
        ca_path=public_dir / material.PUBLIC_CA_CERT,
        load_pair=partial(material.load_public_cert_paths, public_dir, hostname),
        renewable=material.public_cert_renewable(public_dir, hostname), renewer="Client",
        init=f"runewarp client public-cert init --hostname {quoted} {c}",
        renew=f"runewarp client public-cert renew --hostname {quoted} {c}",
        replace=f"replace {cert_path} and {key_path} with a current certificate for {hostname}")


def _server(cfg, address, identity):
    """resolve, then tcp, tls, identity and mirroring lines for every address of one
    Server address entry: the Client keeps a Tunnel connection to each of them."""
    label, name = format_address(address), cfg.tls_name(address)
    host, port = address
    if literal_family(host) is not None:
        yield from _server_address(cfg, address, label, name, identity)
        return
    try:
        found = addresses(host, port)
    except PROBE_ERRORS as exc:
        yield fail(f"resolve {label}", f"does not resolve: {describe(exc)}",
                   f"check client.server-address and the DNS record of {host}")
        return
    yield ok(f"resolve {label}", ", ".join(found))
    for ip in found:
        each = label if len(found) == 1 else f"{label} ({format_address((ip, port))})"
        yield from _server_address(cfg, (ip, port), each, name, identity)


def _server_address(cfg, address, label, name, identity):
    """tcp, tls, identity and mirroring lines for one resolved Server address; `name` is
    the TLS name the Client checks (server-name, else the entry's hostname)."""
    port = address[1]
    try:
        with Deadline(PROBE_TIMEOUT):
            sock = dial.connect(address)
    except PROBE_ERRORS as exc:
        yield fail(f"tcp {label}", f"no TCP connection: {describe(exc)}",
                   f"start the Server and let port {port} through its firewall, or correct "
                   "client.server-address")
        return
    yield ok(f"tcp {label}", "accepts TCP")
    try:
        cert, key = material.load_identity_paths(cfg.identity_dir)
        cert = cfg.managed.cert_file if cfg.managed is not None else cert  # what the Client presents
        context = client_tunnel_context(cert, key, cfg.server_trust, cfg.server_ca_file)
        with Deadline(PROBE_TIMEOUT):
            tls = dial.start_tls(sock, context, name)  # closes sock when it fails
    except (*PROBE_ERRORS, ProtocolError, MaterialError) as exc:
        sock.close()
        yield _tls_failure(cfg, label, name, exc)
        return
    yield ok(f"tls {label}", f"TLS 1.3 with ALPN runewarp/1; the certificate names {name} and "
                             f"is trusted ({cfg.server_trust})")
    yield from _welcome(cfg, label, tls, identity)


def _tls_failure(cfg, label, name, exc):
    check = f"tls {label}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code == _HOSTNAME_MISMATCH:
            return fail(check, f"the Server certificate does not name {name}: {exc.verify_message}",
                        "set client.server-name to the Server's hostname (server.hostname)")
        where = (f"copy the Server's current server-ca.crt to {cfg.server_ca_file}"
                 if cfg.server_trust == "ca-file" else
                 'give the Server a certificate from a public CA, or set server-trust = '
                 '"ca-file" with the Server\'s server-ca.crt')
        return fail(check, f"the Server certificate is not trusted: {exc.verify_message}", where)
    if isinstance(exc, ProtocolError):
        return fail(check, str(exc), "point client.server-address at a Runewarp Server's public "
                                     "or tunnel listener")
    if isinstance(exc, (ConnectionError, ssl.SSLEOFError)):
        return fail(check, f"the Server closed the connection during the TLS handshake "
                           f"({describe(exc)}): {name} is not its hostname, or it is no "
                           "Runewarp Server",
                    "set client.server-name to the Server's hostname (server.hostname)")
    return fail(check, f"no TLS handshake: {describe(exc)}",
                "see the Server's log for tunnel-connection-refused")


def _welcome(cfg, label, tls, identity):
    services = ServiceTable(cfg.services)
    hello = control.hello(__version__, f"doctor-{uuid.uuid4().hex[:8]}", services.hostnames,
                          services.catch_all is not None)
    check = f"identity {label}"
    try:
        tunnel = dial.hello_welcome(tls, hello, PROBE_TIMEOUT, on_stream=_refuse,
                                    log=Logger("off"), name=label)
    except CertificateRefused as exc:
        yield fail(check, f"the Server refused the certificate itself (alert {exc.alert})",
                   "see docs/managed.md: [client.managed] cert-file, its expiry and its CA")
        return
    except Unauthorized:
        yield fail(check, f"the Server refused the Client identity {identity}: no Tunnel lists it",
                   f'add client-identity = "{identity}" to this Client\'s [[server.tunnels]] '
                   "entry in the Server's config, then reload the Server")
        return
    except (*PROBE_ERRORS, control.ControlError, ProtocolError) as exc:
        yield fail(check, f"no welcome from the Server: {describe(exc)}",
                   "see the Server's log for tunnel-connection-refused")
        return
    try:
        tunnel.session.go_away()  # the Server places no Visitor on this connection
        welcome = tunnel.welcome
        yield ok(check, f"accepted for Tunnel {welcome.tunnel!r} (Server {welcome.version})")
        yield from mirroring(label, welcome, services)
    finally:
        gevent.sleep(0.05)  # let the go away leave before the close
        tunnel.session.close("doctor done")


def _refuse(_session, stream):
    """A Visitor placed here before the go away arrived: it reached no backend, so the
    Server may place it again on a real member (seen as a reset Visitor under load)."""
    stream.reset(RESET_BEFORE_BACKEND)


def mirroring(label, welcome, services):
    """One line per Tunnel hostname no Service takes and per Service hostname the Tunnel
    does not route; one ok line when they agree."""
    if welcome.public_hostnames is None:
        yield warn(f"mirroring {label}",
                   f"the Server ({welcome.version}) does not send its Tunnel's hostnames in "
                   "welcome: Hostname mirroring cannot be checked from here",
                   "upgrade the Server; meanwhile its log has hostname-mirroring-drift")
        return
    unserved, unowned = control.hostname_drift(welcome.public_hostnames, services.hostnames,
                                               services.catch_all is not None)
    for hostname in unserved:
        yield fail(f"mirroring {hostname}",
                   f"Tunnel {welcome.tunnel!r} routes {hostname} to this Client, but no Service "
                   "lists it: its Visitors are refused",
                   f"add {hostname} to a Service's public-hostnames, or remove it from the "
                   "Tunnel on the Server")
    for hostname in unowned:
        yield warn(f"mirroring {hostname}",
                   f"a Service lists {hostname}, but Tunnel {welcome.tunnel!r} does not route it: "
                   "no Visitor for it arrives",
                   f"add {hostname} to the Tunnel's public-hostnames on the Server, or remove it "
                   "from the Service")
    if not unserved and not unowned:
        covered = "a Catch-all Service takes" if services.catch_all else "the Services list"
        yield ok(f"mirroring {label}", f"{covered} every hostname of Tunnel {welcome.tunnel!r} "
                                       f"({len(welcome.public_hostnames)})")


def _backend(service):
    label = format_address(service.backend_address)
    try:
        tcp(service.backend_address)
    except PROBE_ERRORS as exc:
        yield fail(f"backend {label}", f"no TCP connection: {describe(exc)}",
                   f"start the Local backend at {label}, or correct its backend-address")
        return
    yield ok(f"backend {label}", "accepts TCP")
    if service.tls_mode != "passthrough":
        return
    for hostname in service.public_hostnames:
        # A backend with proxy-protocol reads a header first: the probe is no Visitor.
        first = proxyv2.local_header(service.proxy_protocol) if service.proxy_protocol else b""
        yield _backend_certificate(service.backend_address, label, hostname, first)


def _backend_certificate(address, label, hostname, first):
    check = f"backend-certificate {hostname}"
    probe = sample_name(hostname)  # a wildcard Service: the backend sees names under it
    try:
        cert = backend_certificate(address, probe, first)
    except PROBE_ERRORS as exc:
        return warn(check, f"{label} completed no TLS handshake for {hostname}: {describe(exc)}",
                    'a passthrough backend speaks TLS itself; use tls-mode = "terminate" for a '
                    "plaintext backend")
    if certcheck.names_hostname(cert, probe):
        return ok(check, f"{label} presents a certificate for {hostname}")
    names = ", ".join(certcheck.dns_names(cert)) or "no DNS name"
    return fail(check, f"{label} presents a certificate for {names}, not {hostname}: Visitors "
                       "see a name mismatch",
                f"give the backend at {label} a certificate for {hostname}")
