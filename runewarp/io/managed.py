"""The Client's managed certificate ([client.managed] cert-file, docs/managed.md): the Tunnel
TLS context that presents it with the identity key, rebuilt before a dial once the file
changed, and what a Server's refusal of it tells the operator.

The Server judges the certificate; the Client reads its dates only to say what is wrong,
and dials with an expired one anyway (its clock may be the wrong one)."""

from ..material import CLIENT_KEY, check_managed_cert
from ..contextcache import ContextCache
from ..tls import client_tunnel_context
from .monitor import rfc3339
from .upkeep import utcnow

_WAITING = "waiting for a renewed cert-file"


class ManagedCertificate:
    """The cert-file of `client` (io.client.Client: config, log) as a cached TLS context."""

    def __init__(self, client):
        self.client = client
        self.cert = None  # material.ManagedCert of the last build
        self._cache = ContextCache(self._locate, self._build)

    def context(self):
        """The context for the files as they are now (MaterialError: unusable, told by file)."""
        return self._cache.current()

    def _locate(self, _key):
        cfg = self.client.config
        ca = (cfg.server_ca_file,) if cfg.server_trust == "ca-file" else ()
        return (cfg.managed.cert_file, cfg.identity_dir / CLIENT_KEY, *ca)

    def _build(self, _key, _paths):
        cfg, log = self.client.config, self.client.log
        cert = self.cert = check_managed_cert(cfg.managed.cert_file, cfg.identity_dir)
        now, fields = utcnow(), dict(file=str(cert.path), not_before=rfc3339(cert.not_before),
                                     not_after=rfc3339(cert.not_after))
        if now >= cert.not_after:
            log.warn("managed-certificate-expired", **fields,
                     effect=f"dialing anyway (the Server judges); {_WAITING}")
        elif now < cert.not_before:
            log.warn("managed-certificate-not-yet-valid", **fields,
                     effect="dialing anyway (the Server judges; check the clocks)")
        else:
            log.info("managed-certificate-loaded", **fields)
        return client_tunnel_context(cert.path, cfg.identity_dir / CLIENT_KEY, cfg.server_trust,
                                     cfg.server_ca_file)

    def refused(self, alert):
        """The reason line for a Server's refusal of our certificate (CertificateRefused.alert)."""
        if self.client.config.managed is None:
            if alert == "unknown-ca":
                return ("the Server admits only certificates from its control-plane CA, not this "
                        "self-signed identity certificate: set [client.managed] cert-file "
                        "(docs/managed.md)")
            return f"the Server refused the identity certificate ({alert})"
        cert, path = self.cert, self.client.config.managed.cert_file
        if alert == "expired":
            when = f" at {rfc3339(cert.not_after)}" if cert else ""
            return f"the Server refused the managed certificate: expired{when}; {_WAITING} {path}"
        if alert == "unknown-ca":
            return (f"the Server refused the managed certificate {path}: not issued by the "
                    f"control-plane CA it trusts (its client-ca-file); {_WAITING}")
        return (f"the Server refused the managed certificate {path}: not usable for a Client "
                f"(clientAuth); {_WAITING}")
