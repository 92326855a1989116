"""One exception tree, so callers can tell whose fault a failure is."""


class RunewarpError(Exception):
    """Base of every error Runewarp raises on purpose."""


class ConfigError(RunewarpError):
    """Invalid configuration: reported as `error: <file>: <key>: <what>`, exit 2."""

    def __init__(self, message, *, file=None, key=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key

    def __str__(self):
        parts = [str(p) for p in (self.file, self.key) if p]
        parts.append(self.message)
        return ": ".join(parts)


class MaterialError(RunewarpError):
    """Missing or unusable certificate / key material."""


class ProtocolError(RunewarpError):
    """Wire data that breaks the protocol."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids (their fault)."""


class TransportError(RunewarpError):
    """A connection, stream or handshake that ended or was refused: the peer or the
    network, not the bytes it sent."""


# -- the rest of the tree, by layer; each is re-exported where it is raised --

class RoutingConflict(ConfigError, ValueError):
    """Two routing rules claim the same key; routing would be ambiguous."""


class ControlError(RemoteProtocolError, ValueError):
    """A control line that is not a bounded JSON object with a type, or a message whose
    fields have the wrong type or size.  Still a ValueError for older callers."""


class AdmissionRefused(TransportError):
    """No admission slot: `reason` is "table-full" (nothing sheddable) or "source-full"."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class IntakeRejected(ProtocolError):
    """A Visitor's opening bytes were refused, so its connection or stream closes;
    `reason` is safe to log (never the bytes)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class StreamAborted(TransportError):
    """A mux stream was reset by the peer, or its Tunnel connection died (the io
    exception; proto.mux.StreamReset is the session's event for a peer's reset)."""


class TLSClosed(TransportError):
    """The peer went away during a TLS handshake."""


class Unauthorized(TransportError):
    """The Server refused our Client identity."""


class CertificateRefused(Unauthorized):
    """The Server refused the certificate itself (managed mode): `alert` is what its TLS alert
    said, "expired", "unknown-ca" or "unsupported" (docs/managed.md)."""

    def __init__(self, alert):
        super().__init__(alert)
        self.alert = alert

