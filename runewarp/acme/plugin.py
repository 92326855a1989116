"""certbot Authenticator `runewarp`: TLS-ALPN-01 answered by a running Runewarp process.

certbot stays the ACME engine (accounts, orders, renewal bookkeeping); this
plugin only hands the challenge material over.  For every `tls-alpn-01`
challenge it writes one file, ``<challenge-dir>/<domain>.pem`` (the validation
certificate, then its key; 0600, written atomically so a reader never sees half
of it), and removes it at cleanup.  The Runewarp process that owns the public
port (`runewarp.acme.ChallengeResponder`) presents that certificate to any
ClientHello for the domain offering ALPN ``acme-tls/1``; the plugin never
listens itself.

`acme` ≥ 5 has no TLS-ALPN-01 class (and the 4.x one used a draft OID), so the
challenge and response types are registered here, at import time: certbot
imports every `certbot.plugins` entry point before it parses its arguments or
talks to the CA, so `--preferred-challenges tls-alpn-01` and the CA's
challenge objects both resolve to these classes.

Usage: certbot certonly -a runewarp --runewarp-challenge-dir DIR
       --preferred-challenges tls-alpn-01 -d HOSTNAME ...
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

from acme import challenges, messages
from certbot import errors, interfaces
from certbot.plugins import common
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .certificates import challenge_file
from ..material import KEY_MODE, atomic_write, ensure_dir

TLS_ALPN_01 = "tls-alpn-01"
# RFC 8737 §3: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
VALIDATION_DAYS = 7


def acme_identifier_value(key_authorization: str) -> bytes:
    """DER OCTET STRING holding SHA-256(key authorization): the extension's value."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04" + bytes([len(digest)]) + digest


def validation_certificate(domain: str, key_authorization: str,
                           now: _dt.datetime | None = None) -> tuple[bytes, bytes]:
    """RFC 8737 validation certificate for `domain`: (cert PEM, PKCS#8 key PEM).

    Self-signed ECDSA P-256, exactly one dNSName SAN (the domain) and the
    critical acmeIdentifier extension.
    """
    now = now or _dt.datetime.now(_dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=VALIDATION_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID,
                                                  acme_identifier_value(key_authorization)),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """ACME tls-alpn-01 challenge response (RFC 8737)."""

    typ = TLS_ALPN_01


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """ACME tls-alpn-01 challenge (RFC 8737); validation() is (cert PEM, key PEM)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key, **kwargs: Any) -> tuple[bytes, bytes]:
        return validation_certificate(kwargs["domain"], self.key_authorization(account_key))


def _domain_of(achall) -> str:
    identifier = getattr(achall, "identifier", None)
    if identifier is not None and getattr(identifier, "value", None):
        if getattr(identifier, "typ", None) not in (None, messages.IDENTIFIER_FQDN):
            raise errors.PluginError(f"runewarp answers DNS identifiers only, not {identifier}")
        return identifier.value
    return achall.domain


class Authenticator(common.Plugin, interfaces.Authenticator):
    """Hands TLS-ALPN-01 material to a running Runewarp process through a folder."""

    description = ("Answer tls-alpn-01 through a running Runewarp process: writes the "
                   "validation certificate into --runewarp-challenge-dir.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._written: list[Path] = []

    @classmethod
    def add_parser_arguments(cls, add) -> None:
        add("challenge-dir", default=None,
            help="Folder the running Runewarp process reads tls-alpn-01 material from.")

    def more_info(self) -> str:
        return ("Writes an RFC 8737 validation certificate per domain into the challenge "
                "folder; the Runewarp process on the public port answers acme-tls/1.")

    def prepare(self) -> None:
        if not self.conf("challenge-dir"):
            raise errors.MisconfigurationError("--runewarp-challenge-dir is required")

    def get_chall_pref(self, identifier: str):  # noqa: ARG002 - certbot's interface
        return [TLSALPN01]

    def perform(self, achalls):
        folder = Path(self.conf("challenge-dir"))
        ensure_dir(folder)
        responses = []
        for achall in achalls:
            domain = _domain_of(achall)
            response, (cert_pem, key_pem) = achall.response_and_validation(domain=domain)
            try:
                path = challenge_file(folder, domain)
            except ValueError as exc:
                raise errors.PluginError(str(exc)) from exc
            atomic_write(path, cert_pem + key_pem, KEY_MODE)
            self._written.append(path)
            responses.append(response)
        return responses

    def cleanup(self, achalls) -> None:
        domains = set()
        for achall in achalls:
            try:
                domains.add(challenge_file(self.conf("challenge-dir"), _domain_of(achall)))
            except (ValueError, errors.PluginError):
                continue
        for path in [p for p in self._written if p in domains]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self._written.remove(path)
