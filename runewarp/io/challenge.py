"""The acme-tls/1 responder: answers a CA's TLS-ALPN-01 validation handshake.

certbot's `runewarp` plugin (`runewarp.acme.plugin`) leaves the validation
certificate in the ACME challenge folder (`AcmeCertificates.challenge_dir`);
this presents it to a ClientHello for that hostname offering ALPN acme-tls/1.
On the Server it is fed the public socket; on the Client the mux stream of a
terminate Service (the CA's connection arrives through the Tunnel like any
Visitor).  The Server and the Client build it, so `acme/` never imports `io/`.
"""

from pathlib import Path

import gevent
from OpenSSL import SSL, crypto

from ..acme import challenge_file
from ..contextcache import ContextCache
from ..tls import challenge_context
from .tlsconn import ServerTLSConnection, TLSClosed

CHALLENGE_DEADLINE = 10.0


def _locate(challenge_dir, hostname):
    try:
        return (challenge_file(challenge_dir, hostname),)
    except ValueError:
        return None


def _build(_hostname, paths):
    if paths is None:
        return None
    try:
        with open(paths[0], "rb") as f:
            return challenge_context(f.read())
    except (OSError, SSL.Error, crypto.Error, ValueError):
        return None


class ChallengeResponder:
    """Answers acme-tls/1 handshakes from the plugin's challenge folder."""

    def __init__(self, challenge_dir):
        self.challenge_dir = Path(challenge_dir)
        self._contexts = ContextCache(lambda hostname: _locate(self.challenge_dir, hostname),
                                      _build)

    def context_for(self, hostname):
        """Context presenting the pending validation certificate for `hostname`, else None."""
        return self._contexts.current(hostname)

    def answer(self, sock, hostname, buffered, log):
        """Complete the validation handshake on `sock` (recv/sendall/close), then close it.

        `buffered` is the ClientHello intake already read.  True when the
        handshake completed.
        """
        ctx = self.context_for(hostname)
        if ctx is None:
            log.debug("acme-challenge-refused", hostname=hostname, reason="no-pending-challenge")
            sock.close()
            return False
        tls = ServerTLSConnection(sock, ctx, buffered)
        try:
            with gevent.Timeout(CHALLENGE_DEADLINE):
                tls.handshake()
                try:
                    tls.conn.shutdown()
                    tls.flush()
                except (SSL.Error, OSError):
                    pass
            log.debug("acme-challenge-answered", hostname=hostname)
            return True
        except gevent.Timeout:
            log.debug("acme-challenge-failed", hostname=hostname, reason="handshake-deadline")
        except (SSL.Error, TLSClosed, OSError) as exc:
            log.debug("acme-challenge-failed", hostname=hostname, reason=f"tls-error: {exc}")
        finally:
            try:
                tls.close()
            except OSError:
                pass
        return False
