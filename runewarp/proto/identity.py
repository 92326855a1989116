"""The Client identity rule: what names a Client, from bytes only.

A Client identity is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo
of its key, so renewing the certificate keeps the identity.  Material (which
prints it) and the Server's TLS check (which compares it) both call this.
"""

import hashlib


def identity_of_spki(spki_der: bytes) -> str:
    return hashlib.sha256(spki_der).hexdigest()


# A managed Client certificate names the identity it attests in a URI SAN, so a reader of
# the certificate alone (openssl x509 -text, an audit log) sees which Client it is for.
IDENTITY_URI_PREFIX = "runewarp:identity:"


def identity_uri(identity: str) -> str:
    return IDENTITY_URI_PREFIX + identity


def identities_in_uris(uris) -> list[str]:
    """The identities the `runewarp:identity:` URIs among `uris` name (lowercased)."""
    return [uri[len(IDENTITY_URI_PREFIX):].lower() for uri in uris
            if uri.lower().startswith(IDENTITY_URI_PREFIX)]


def is_identity(text: str) -> bool:
    """64 lowercase hex characters: how a Client identity is written."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
