"""The Client identity rule: what names a Client, from bytes only.

A Client identity is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo
of its key, so renewing the certificate keeps the identity.  Material (which
prints it) and the Server's TLS check (which compares it) both call this.
"""

import hashlib


def identity_of_spki(spki_der: bytes) -> str:
    return hashlib.sha256(spki_der).hexdigest()
