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
