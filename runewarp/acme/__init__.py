"""ACME at run time: certbot as the engine, Runewarp answering TLS-ALPN-01 itself.

`certificates` owns certbot's folders and schedules it; `certbot` runs it;
`plugin` is the certbot authenticator (entry point ``runewarp``) that writes the
challenge material.  Answering the CA's handshake is I/O: `io.challenge`.
"""

from .certificates import AcmeCertificates, challenge_file, renew_once, warn_port

__all__ = ["AcmeCertificates", "challenge_file", "renew_once", "warn_port"]
