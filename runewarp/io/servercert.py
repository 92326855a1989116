"""The Server certificate: the Tunnel TLS context built from it, and its checks.

The manual certificate (cert-dir) is renewed by the Server when it holds the
Server CA, warned about when it cannot, and refused at start when unusable;
with ACME, certbot renews and the Server only reloads.
"""

import shlex

from .. import certcheck
from ..certcheck import CertificateRefused
from ..errors import MaterialError
from ..material import (SERVER_CA_KEY, load_certificate, load_server_cert_paths, pin,
                        renew_server_cert, server_cert_paths, server_cert_renewable)
from ..tls import ContextCache, server_tunnel_context


class ServerCertificateChecks:
    """The certificate half of the Server (mixed into io.server.Server): it reads
    `config`, `acme`, `clock`, `certificate`, `stopping`, `metrics` and `log` from the Server."""

    def _certificate_for(self, config):
        """The Server certificate's context, rebuilt only when its files change.

        The manual pair is checked (`_checked_paths`) only then, not per
        connection; a missing file raises that check's MaterialError, with the
        command that makes the files.  The pair is opened through one version of
        the material folder (`pin`), so a renewal switching it in between cannot
        give a mismatched key and certificate."""
        if self.acme is None:
            return ContextCache(
                lambda _key: server_cert_paths(config.cert_dir),
                lambda _key, _paths: server_tunnel_context(*pin(*self._checked_paths(config)),
                                                           self._authorize))

        def build(_key, paths):
            if paths is None:
                raise MaterialError(f"no ACME certificate for {config.hostname} yet")
            context = server_tunnel_context(*paths, self._authorize)
            self.metrics.certificate("server", config.hostname,
                                     load_certificate(paths[0]).not_valid_after_utc)
            return context

        return ContextCache(lambda _key: self.acme.paths(config.hostname), build)

    def certificate_files(self):
        """(chain, key) of the Server certificate now, of one version; None before ACME got
        one.  The configuration API (io/api.py) presents the same certificate."""
        if self.acme is None:
            return pin(*server_cert_paths(self.config.cert_dir))
        return self.acme.paths(self.config.hostname)

    # -- the manual Server certificate: renewed by the Server when it holds the CA --
    def check_certificate(self):
        """At start: renew a due certificate the Server issued itself, warn about one it
        cannot renew that expires within 30 days, and refuse (CertificateRefused, naming
        the config key) one that does not name `hostname`, or cannot serve and cannot be
        renewed.  Nothing to do with ACME: certbot renews."""
        if self.acme is None:
            self._certificate_pass(self.config, starting=True)
        self._certificate_checked = True

    def _certificate_upkeep(self):
        """The periodic pass: renew when due, warn at most once a day, never refuse."""
        if self.acme is None and not self.stopping and \
                self._certificate_pass(self.config, starting=False):
            self.certificate.current()  # load it now, so a broken one is reported at once

    def _certificate_pass(self, config, starting):
        """One check of `config`'s certificate at `self.clock()`; True when it was renewed."""
        try:
            cert_path, _ = load_server_cert_paths(config.cert_dir)
            leaf = load_certificate(cert_path)
        except MaterialError:
            if starting:
                raise
            return False  # reported as server-certificate-missing at the next Tunnel connection
        now = self.clock()
        renewable = server_cert_renewable(config.cert_dir)
        verdict = certcheck.decide(leaf, now, renewable=renewable, hostname=config.hostname)
        if verdict == certcheck.WRONG_HOSTNAME:
            if starting:
                raise _refusal(config, verdict, cert_path, leaf, now, renewable)
            return False  # the certificate's check refuses it at the next Tunnel connection
        if verdict == certcheck.RENEW:
            try:
                result = renew_server_cert(config.cert_dir, hostname=config.hostname, now=now)
            except (MaterialError, OSError) as exc:
                if starting and certcheck.validity(leaf, now) != certcheck.VALID:
                    raise CertificateRefused(f"{cert_path}: {certcheck.describe(leaf, now)}, and "
                                             f"renewing it failed: {exc}",
                                             key="server.cert-dir") from None
                self.log.error("server-certificate-renewal-failed", file=str(cert_path),
                               not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                               reason=str(exc))
                return False
            self.log.info("server-certificate-renewed", server_hostname=config.hostname,
                          not_after=certcheck.rfc3339(result.not_after),
                          serial=format(result.serial, "x"),
                          previous_not_after=certcheck.rfc3339(leaf.not_valid_after_utc))
            return True
        if verdict == certcheck.REFUSE and starting:
            raise _refusal(config, verdict, cert_path, leaf, now, renewable)
        if verdict in (certcheck.REFUSE, certcheck.WARN):
            self._warn_expiring(config, cert_path, leaf, now)
        return False

    def _warn_expiring(self, config, cert_path, leaf, now):
        if not self._expiry_warnings.due(config.hostname, leaf, now):
            return
        expired = certcheck.validity(leaf, now) != certcheck.VALID
        self.log.warn("server-certificate-expiring", file=str(cert_path),
                      not_after=certcheck.rfc3339(leaf.not_valid_after_utc),
                      days_left=certcheck.days_left(leaf, now),
                      reason=("it is not valid now: Clients refuse it" if expired else
                              f"the Server cannot renew it: {_not_ours(config)}"),
                      fix=_replace_hint(config))

    def _checked_paths(self, config):
        """The certificate's check: a usable pair that names the Server hostname."""
        paths = load_server_cert_paths(config.cert_dir)
        leaf = load_certificate(paths[0])
        if not certcheck.names_hostname(leaf, config.hostname):
            raise CertificateRefused(_wrong_hostname(config, paths[0], leaf,
                                                     server_cert_renewable(config.cert_dir)),
                                     key="server.hostname")
        self.metrics.certificate("server", config.hostname, leaf.not_valid_after_utc)
        return paths

    def _certificate_renewed(self, _hostname):
        """Load a new ACME certificate now, so a broken one is reported at once."""
        self.certificate.current()
        if self.certificate_missing:
            self.certificate_missing = False
            self.log.info("server-certificate-ready")


def check_usable(config, now):
    """The start's check of the manual certificate, read only (`config check`, `doctor`):
    CertificateRefused for what a start refuses; a due certificate the Server can renew
    passes (a start renews it); the pair must load into a Tunnel TLS context."""
    cert_path, key_path = load_server_cert_paths(config.cert_dir)
    leaf = load_certificate(cert_path)
    renewable = server_cert_renewable(config.cert_dir)
    verdict = certcheck.decide(leaf, now, renewable=renewable, hostname=config.hostname)
    if verdict in (certcheck.WRONG_HOSTNAME, certcheck.REFUSE):
        raise _refusal(config, verdict, cert_path, leaf, now, renewable)
    server_tunnel_context(*pin(cert_path, key_path), lambda _identity: False)


def _refusal(config, verdict, cert_path, leaf, now, renewable):
    """Why a start refuses the certificate, naming the config key to blame."""
    if verdict == certcheck.WRONG_HOSTNAME:
        return CertificateRefused(_wrong_hostname(config, cert_path, leaf, renewable),
                                  key="server.hostname")
    return CertificateRefused(
        f"{cert_path}: {certcheck.describe(leaf, now)}, and the Server cannot renew it "
        f"({_not_ours(config)}); {_replace_hint(config)}", key="server.cert-dir")


def _config_arg(config):
    return f"-c {shlex.quote(str(config.source or 'FILE'))}"  # a Server always has a config file


def _not_ours(config):
    return f"it was not issued by a Server CA whose key is {config.cert_dir / SERVER_CA_KEY}"


def _replace_hint(config):
    """How to get a Server certificate the Server can serve, when it cannot renew this one."""
    return (f"replace server.crt and server.key with a current certificate for "
            f"{config.hostname}, or run 'runewarp server cert rotate-ca {_config_arg(config)}' "
            "for a private Server CA that the Server renews itself (every Client must then "
            "trust its server-ca.crt)")


def _wrong_hostname(config, cert_path, leaf, renewable):
    names = ", ".join(certcheck.dns_names(leaf)) or "no DNS name"
    if renewable:
        fix = (f"run 'runewarp server cert renew {_config_arg(config)}' for a certificate "
               f"for {config.hostname}")
    else:
        fix = _replace_hint(config)
    return (f"{cert_path} is for {names}, not {config.hostname} (the name Clients check); "
            f"{fix}")
