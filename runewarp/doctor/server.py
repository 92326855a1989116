"""`runewarp doctor server`: the Server certificate, the names Visitors and Clients
resolve, and the ACME directory."""

import shlex
from functools import partial

from .. import material
from ..proto.hostname import is_wildcard, sample_name, wildcard_over
from ..io.net import describe
from .checks import fail, ok, warn
from .material import Leaf, certificate, key_files
from .probes import ProbeTimeout, acme_directory, addresses, is_local


def checks(cfg, now):
    c = f"-c {shlex.quote(str(cfg.source))}"
    if cfg.acme is None:
        yield from key_files(material.server_key_files(cfg.cert_dir))
        yield from certificate(_server_leaf(cfg, c), now)
    else:
        yield ok(f"certificate-files {cfg.hostname}",
                 f"managed by ACME ([server.acme], {cfg.acme.directory_url}); certbot renews it")
    yield from _resolves(cfg.hostname, server=True)
    for tunnel in cfg.tunnels:
        for hostname in tunnel.public_hostnames:
            yield from _resolves(hostname, server=False)
    owners = {}  # a hostname is in two Tunnels only on disjoint public-ports
    for tunnel in cfg.tunnels:
        for hostname in tunnel.public_hostnames:
            owners.setdefault(hostname, []).append(repr(tunnel.name))
    yield from exact_under_wildcard({h: f"Tunnel {' and '.join(names)}" for h, names in owners.items()})
    if cfg.acme is not None:
        yield acme("server", cfg.acme.directory_url)


def _server_leaf(cfg, c):
    cert_path, key_path = material.server_cert_paths(cfg.cert_dir)
    return Leaf(
        hostname=cfg.hostname, cert_path=cert_path, key_path=key_path,
        ca_path=cfg.cert_dir / material.SERVER_CA_CERT,
        load_pair=partial(material.load_server_cert_paths, cfg.cert_dir),
        renewable=material.server_cert_renewable(cfg.cert_dir), renewer="Server",
        init=f"runewarp server cert init {c}",
        renew=f"runewarp server cert renew {c} (a new certificate for {cfg.hostname} from the "
              "Server CA), then reload the Server",
        replace=f"replace {cert_path} and {key_path} with a current certificate for "
                f"{cfg.hostname}, or run 'runewarp server cert rotate-ca {c}' for a private "
                "Server CA (every Client must then trust its server-ca.crt)")


def exact_under_wildcard(owners):
    """A note (an ok line) per exact name that a wildcard of another owner (a Tunnel, a
    Service) also covers: allowed, and the exact name wins, which is worth knowing."""
    for name, owner in sorted(owners.items()):
        pattern = wildcard_over(name) if not is_wildcard(name) else None
        other = owners.get(pattern)
        if other is not None and other != owner:
            yield ok(f"wildcard-overlap {name}",
                     f"note: {pattern} of {other} covers {name} too; an exact name wins over a "
                     f"wildcard, so {owner} takes it")


def _resolves(hostname, server):
    check = f"resolve {hostname}"
    who = "Clients" if server else "Visitors"
    probe = sample_name(hostname)  # a wildcard's DNS record is a wildcard too
    as_probe = f" (probed as {probe})" if probe != hostname else ""
    try:
        found = addresses(probe)
    except (OSError, ProbeTimeout) as exc:
        if server:  # Clients may dial an IP address with server-name
            yield warn(check, f"does not resolve ({describe(exc)})",
                       f"publish a DNS record for {hostname} pointing at this Server, or give "
                       "each Client server-address = this Server's IP address and "
                       f"server-name = {hostname}")
        else:
            yield fail(check, f"does not resolve{as_probe} ({describe(exc)}): {who} cannot find it",
                       f"publish a DNS record for {hostname} pointing at this Server")
        return
    local = [a for a in found if is_local(a)]
    if local:
        yield ok(check, f"{', '.join(found)}{as_probe} (this machine: {', '.join(local)})")
    else:
        yield warn(check, f"{', '.join(found)}{as_probe}: no address of this machine",
                   f"point {hostname} at this Server, unless a load balancer or NAT in front of "
                   f"it forwards {who} here")


def acme(role, url):
    """The ACME directory of `[role.acme]` answers (both roles' certbot needs it)."""
    check = f"acme-directory {url}"
    try:
        acme_directory(url)
    except (OSError, ProbeTimeout, ValueError) as exc:
        return fail(check, f"not reachable: {describe(exc)}",
                    f"check {role}.acme.directory-url and this machine's outbound HTTPS "
                    "(proxy variables, firewall)")
    return ok(check, "answers with an ACME directory")
