"""Dialing the Server: TCP, TLS 1.3 with ALPN runewarp/1, the mux session, hello and welcome.

One copy for the Client's workers (io/client.py) and `runewarp doctor`, which
runs the same steps one by one to say which of them fails.  Each step closes
what it opened when it fails; the caller owns what a step returns.
"""

import socket
from dataclasses import dataclass

import gevent

from ..errors import CertificateRefused, ProtocolError, StreamAborted, Unauthorized
from ..proto import control
from ..proto.mux import Role
from ..tls import ALPN_TUNNEL, certificate_alert, is_unauthorized_alert
from .net import resolve_override, set_keepalive, set_nodelay
from .tlsconn import ClientTLSConnection
from .tunnel import TunnelSession
from .tunnelstream import read_control_messages


@dataclass
class Established:
    """A Tunnel connection past its welcome: the session, its control stream and the
    decoder holding whatever followed the welcome on that stream."""

    session: TunnelSession
    stream: object
    decoder: control.LineDecoder
    welcome: control.Welcome


def connect(address):
    """TCP to a Server address, resolved again on each call (RUNEWARP_RESOLVE honoured)."""
    host, port = address
    sock = socket.create_connection((resolve_override(host), port))
    set_nodelay(sock)
    set_keepalive(sock)
    return sock


def start_tls(sock, context, server_name):
    """The TLS handshake on `sock` (closed on failure) with `server_name` as SNI and as the
    name the Server certificate must carry; ProtocolError unless ALPN runewarp/1 was chosen."""
    try:
        tls = ClientTLSConnection(sock, context, server_name)
        tls.handshake()
    except BaseException:
        sock.close()
        raise
    if tls.selected_alpn_protocol() != ALPN_TUNNEL.decode():
        tls.close()
        raise ProtocolError("the Server did not select ALPN runewarp/1")
    return tls


def hello_welcome(tls, hello, deadline, **session_options):
    """Start the mux session on `tls`, send `hello` on stream 1, wait up to `deadline` s for
    the welcome.  Unauthorized when the Server refused the Client identity, CertificateRefused
    when it refused the certificate (its TLS alert arrives only now: TLS 1.3 checks the client
    certificate after the handshake)."""
    session = TunnelSession(tls, Role.CLIENT, **session_options)
    session.start()
    try:
        stream = session.open_stream()
        stream.sendall(control.encode(hello))
        decoder = control.LineDecoder()
        with gevent.Timeout(deadline):
            welcome = control.parse_welcome(read_control_messages(stream, decoder)[0])
    except (StreamAborted, gevent.Timeout, control.ControlError) as exc:
        session.close()
        error = session.read_error or session.close_error
        if is_unauthorized_alert(error):
            raise Unauthorized() from error
        if certificate_alert(error):
            raise CertificateRefused(certificate_alert(error)) from error
        raise (error or exc) from None
    except BaseException:
        session.close()  # anything else (a bug, a kill): never leave a live session behind
        raise
    session.welcome = welcome  # the Client's coverage of Server workers reads it
    return Established(session, stream, decoder, welcome)


def dial(address, context, server_name, hello, deadline, **session_options):
    """All the steps: TCP and TLS within `deadline` s, then up to `deadline` s for the welcome."""
    with gevent.Timeout(deadline):
        tls = start_tls(connect(address), context, server_name)
    return hello_welcome(tls, hello, deadline, **session_options)
