"""Control stream codec: newline-delimited JSON objects on mux stream 1.

Unknown message types are passed through so the runtime can ignore them;
that is what keeps the control channel forward compatible.
"""

import json

MAX_LINE = 64 * 1024


class ControlError(ValueError):
    """A control message that is not a JSON object on one line, or too long."""


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def hello(version, instance, hostnames, catch_all):
    return {"type": "hello", "version": version, "instance": instance,
            "hostnames": list(hostnames), "catch_all": catch_all}


def welcome(tunnel, version):
    return {"type": "welcome", "tunnel": tunnel, "version": version}


class LineDecoder:
    """Feed bytes, get complete messages; bounded so a peer cannot grow it without end."""

    def __init__(self, max_line=MAX_LINE):
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, data) -> list[dict]:
        self._buf += data
        messages = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    raise ControlError("control line too long")
                return messages
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if len(line) > self.max_line:
                raise ControlError("control line too long")
            try:
                message = json.loads(line)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ControlError(f"control line is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ControlError("control message is not an object with a type")
            messages.append(message)


def hostname_drift(tunnel_hostnames, client_hostnames, catch_all):
    """Hostname-mirroring drift between a Tunnel and the Client serving it.

    Returns (hostnames the Client cannot serve, Client hostnames the Tunnel does
    not own).  A Catch-all Client serves everything the Tunnel admits.
    """
    tunnel = set(tunnel_hostnames)
    client = set(client_hostnames)
    unserved = set() if catch_all else tunnel - client
    unowned = client - tunnel
    return sorted(unserved), sorted(unowned)
