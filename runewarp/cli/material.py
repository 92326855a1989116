"""Material commands: the Server certificate, the Client identity, Public hostname
certificates, the Visitor CA and its certificates, and one ACME renewal for cron or a
systemd timer."""

import sys
from functools import partial
from pathlib import Path

from .. import config as configuration, material
from ..config.paths import default_client_visitor_ca_dir
from ..errors import ConfigError, MaterialError
from ..logs import log
from ..proto.hostname import HostnameError, normalize
from .common import CONFIG, DIR, HELP, folder, load, own_folder, print_ca, selected_config

SERVER_CERT = f"""Create, renew or replace the Server certificate and its CA.

Usage:
  runewarp server cert init [--hostname H] [--dir D] [-c FILE]
  runewarp server cert renew [--dir D] [-c FILE]
  runewarp server cert rotate-ca [--hostname H] [--dir D] [-c FILE]
  runewarp server cert rotate-ca (--stage | --commit | --abort) [--hostname H] [--dir D] [-c FILE]

Every form prints the path of the Server CA bundle Clients must trust.  rotate-ca
alone is a hard cut: every Client fails until it trusts the new server-ca.crt.
With no gap: --stage makes the next CA and its certificate (the Server keeps the
current one) and prints server-ca-bundle.crt (both CAs) for the Clients'
server-ca-file; --commit, once every Client trusts it, switches the Server to the
staged certificate at its next Tunnel handshake; --abort drops the staged CA.

Options:
  --hostname H             The Server hostname (default: server.hostname of the config).
{DIR}
{CONFIG}
{HELP}
"""

CLIENT_IDENTITY = f"""Create, renew, replace or print the Client identity.

Usage:
  runewarp client identity (init | renew | rotate | show) [--dir D] [-c FILE]
  runewarp client identity rotate (--stage | --commit | --abort) [--dir D] [-c FILE]
  runewarp client identity csr [--dir D] [-c FILE]

Every form but csr prints the identity (64 hex characters) to list in the Server's Tunnel;
csr prints a PEM certificate signing request signed by the identity key, for a control
plane to issue the [client.managed] cert-file from ('runewarp ca issue --csr').
rotate alone is a hard cut: the Client is refused until the Server lists the new
identity.  With no gap: rotate --stage makes the next key and prints its identity
(the running Client dials with it too, and moves to it once a Server accepts it);
rotate --commit makes it current and removes the old key; rotate --abort drops it.

Options:
{DIR}
{CONFIG}
{HELP}
"""

CLIENT_PUBLIC_CERT = f"""Create or renew Public hostname certificates for terminate Services, or
replace their CA.

Usage:
  runewarp client public-cert (init | renew) [--hostname H]... [--dir D] [-c FILE]
  runewarp client public-cert rotate-ca [--dir D] [-c FILE]

Options:
  --hostname H             A Public hostname (default: those of the config's terminate
                           Services).
{DIR}
{CONFIG}
{HELP}
"""

CLIENT_VISITOR_CA = f"""Create the Visitor CA: a terminate Service whose visitor-ca-file names its
certificate admits only Visitors presenting a certificate it issued.

Usage:
  runewarp client visitor-ca init [--dir D]

Prints the path of the CA certificate to set as visitor-ca-file.  An existing CA is kept.

Options:
  --dir D                  Visitor CA folder (default: $XDG_DATA_HOME/runewarp/client/visitor-ca).
{HELP}
"""

CLIENT_VISITOR_CERT = f"""Issue a Visitor client certificate from the Visitor CA.

Usage:
  runewarp client visitor-cert issue --name NAME [--dir D] [--days N] [--out-dir O]

Writes NAME.crt and NAME.key (mode 0600) and prints their paths; hand both to the
Visitor (curl --cert/--key, runewarp proxy --cert/--key).

Options:
  --name NAME              The certificate's name and subject CN: 1-64 of A-Z a-z 0-9 . _ -.
  --dir D                  Visitor CA folder (default: $XDG_DATA_HOME/runewarp/client/visitor-ca).
  --days N                 Validity in days, 1-3650 [default: {material.VISITOR_CERT_DAYS}].
  --out-dir O              Where to write the pair [default: .].
{HELP}
"""

RENEW_ACME = """Run one certbot renewal for the ACME certificates of the selected config (for
cron or a systemd timer); the running {role} answers the challenges and picks
the new certificate up without a restart.

Usage:
  runewarp {role} {group} renew-acme [-c FILE]

Options:
{config}
{help}
"""


def renew_acme(args, role):
    from .. import acme

    path = selected_config(args)
    cfg = load(role, path)
    hostnames = [cfg.hostname] if role == "server" else cfg.terminate_hostnames
    if cfg.acme is None:
        raise ConfigError(f"no [{role}.acme] table: nothing to renew", file=cfg.source,
                          key=f"{role}.acme")
    log.configure(cfg.log_level, cfg.log_format)
    return acme.renew_once(cfg.acme, hostnames, log, role)


def server_cert(args):
    path = selected_config(args)
    cert_dir = folder(args, path, "server.cert-dir", configuration.default_server_cert_dir())
    given = args["--hostname"]
    hostname = given or configuration.peek(path, "server.hostname")
    if hostname is not None:
        try:
            hostname = normalize(str(hostname))
        except HostnameError as exc:
            raise ConfigError(str(exc), file="command line" if given else path,
                              key="--hostname" if given else "server.hostname")
    if args["init"]:
        if hostname is None:
            raise ConfigError("no Server hostname: pass --hostname or set server.hostname",
                              file="command line", key="--hostname")
        result = material.init_server_cert(cert_dir, hostname)
        if not result.created:
            print(f"Server certificate material already complete in {cert_dir}", file=sys.stderr)
    elif args["renew"]:
        result = material.renew_server_cert(cert_dir, hostname=hostname)
    elif args["--stage"]:
        staged, bundle = material.stage_server_ca(cert_dir, hostname=hostname)
        print(f"staged a new Server CA and certificate ({staged.cert_path}); the Server keeps "
              f"serving the current one. Make {bundle} every Client's server-ca-file, then run "
              "'runewarp server cert rotate-ca --commit'", file=sys.stderr)
        print(bundle)
        return 0
    elif args["--commit"]:
        material.commit_server_ca(cert_dir)
        print("the staged Server certificate is current: new Tunnel connections get it",
              file=sys.stderr)
    elif args["--abort"]:
        material.abort_server_ca(cert_dir)
        print("the staged Server CA is dropped; the current one stays", file=sys.stderr)
    else:
        result = material.rotate_server_ca(cert_dir, hostname=hostname)
        print("warning: new Server CA created; every Client must now trust the new "
              f"{cert_dir / 'server-ca.crt'} (server-ca-file) before it can reconnect",
              file=sys.stderr)
    print(cert_dir / "server-ca.crt")
    return 0


def client_identity(args):
    path = selected_config(args)
    identity_dir = folder(args, path, "client.identity-dir",
                          configuration.default_client_identity_dir())
    if args["show"]:
        print(material.show_identity(identity_dir))
        return 0
    if args["csr"]:
        sys.stdout.write(material.identity_csr(identity_dir).decode())
        return 0
    if args["init"]:
        result = material.init_identity(identity_dir)
        if not result.created:
            print(f"Client identity already exists in {identity_dir}", file=sys.stderr)
    elif args["renew"]:
        result = material.renew_identity(identity_dir)
    elif args["--stage"]:
        result = material.stage_identity(identity_dir)
        print("staged the next Client identity; list it in the Server's Tunnel "
              "(client-identities) beside the current one and reload the Server: the running "
              "Client moves to it by itself. Then 'runewarp client identity rotate --commit'",
              file=sys.stderr)
    elif args["--commit"]:
        print(material.commit_identity(identity_dir))
        return 0
    elif args["--abort"]:
        print(material.abort_identity(identity_dir))
        return 0
    else:
        result = material.rotate_identity(identity_dir)
        print("warning: the Client identity changed; list the new identity in the Server's "
              "Tunnel (client-identity) before this Client can connect", file=sys.stderr)
    print(result.identity)
    return 0


def client_public_cert(args):
    path = selected_config(args)
    cert_dir = folder(args, path, "client.public-cert-dir",
                      configuration.default_client_public_cert_dir())
    hostnames = args["--hostname"]
    if not hostnames and not args["rotate-ca"]:
        hostnames = _terminate_hostnames(path)
    if args["init"]:
        result = material.init_public_certs(cert_dir, hostnames)
    elif args["renew"]:
        result = material.renew_public_certs(cert_dir, hostnames)
    else:
        result = material.rotate_public_ca(cert_dir)
        print("warning: new Public hostname CA; Visitors that pinned the old public-ca.crt "
              "must get the new one", file=sys.stderr)
    for leaf in result.leaves:
        print(leaf.cert_path)
    return 0


def _visitor_ca_dir(args):
    return own_folder(args, default_client_visitor_ca_dir())


def client_visitor_ca(args):
    return print_ca(material.init_visitor_ca(_visitor_ca_dir(args)), "Visitor CA")


def client_visitor_cert(args):
    days = args["--days"]
    if not (days.isdigit() and 1 <= int(days) <= material.MAX_VISITOR_CERT_DAYS):
        raise ConfigError(f"{days!r}: expected a number of days, 1-{material.MAX_VISITOR_CERT_DAYS}",
                          file="command line", key="--days")
    try:
        name = material.visitor_cert_name(args["--name"])
    except MaterialError as exc:
        raise ConfigError(str(exc), file="command line", key="--name") from None
    result = material.issue_visitor_cert(_visitor_ca_dir(args), name,
                                         Path(args["--out-dir"]).expanduser(), int(days))
    print(result.cert_path)
    print(result.key_path)
    return 0


def _terminate_hostnames(path):
    services = configuration.peek(path, "client.services")
    names = [h for s in services if isinstance(s, dict) and s.get("tls-mode") == "terminate"
             for h in s.get("public-hostnames", [])] if isinstance(services, list) else []
    if not names:
        raise ConfigError("no hostname: pass --hostname or select a config with a terminate "
                          "Service", file=path or "command line", key="--hostname")
    return names


def _renew_acme_doc(role, group):
    return RENEW_ACME.format(role=role, group=group, config=CONFIG, help=HELP)


COMMANDS = (
    (("server", "cert"), SERVER_CERT, server_cert),
    (("server", "cert", "renew-acme"), _renew_acme_doc("server", "cert"),
     partial(renew_acme, role="server")),
    (("client", "identity"), CLIENT_IDENTITY, client_identity),
    (("client", "public-cert"), CLIENT_PUBLIC_CERT, client_public_cert),
    (("client", "visitor-ca"), CLIENT_VISITOR_CA, client_visitor_ca),
    (("client", "visitor-cert"), CLIENT_VISITOR_CERT, client_visitor_cert),
    (("client", "public-cert", "renew-acme"), _renew_acme_doc("client", "public-cert"),
     partial(renew_acme, role="client")),
)
