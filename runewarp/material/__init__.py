"""Certificate and key material: creation, renewal, rotation and loading.

`store` writes folders crash-safely, `x509` makes and reads keys and certificates,
and `server`, `identity`, `public`, `visitor` and `controlplane` own the Server's, the Client
identity's, the Public hostnames', the Visitor CA's and the control-plane CA's folders
(`authority` is what the two small CAs share).  This module is the API the rest of the package uses.
"""

from ..errors import MaterialError
from .authority import CAFolder
from .controlplane import (CONTROL_PLANE_CA_CERT, DEFAULT_TTL, MAX_TTL, ManagedCert, check_attests,
                           check_managed_cert,
                           identity_csr, init_control_plane_ca, issue_managed_cert, read_public_input,
                           uri_identities, chain_refusal, is_self_signed)
from .identity import (CLIENT_CERT, CLIENT_IDENTITY, CLIENT_KEY, IDENTITY_MAX_AGE_DAYS, IdentityResult,
                       abort_identity, commit_identity, identity_needs_renewal, init_identity,
                       load_identity_paths, renew_identity, rotate_identity, show_identity,
                       stage_identity, staged_identity)
from .public import (PUBLIC_CA_CERT, PUBLIC_CA_KEY, PUBLIC_CERT, PUBLIC_KEY, PublicCertsResult, PublicLeaf,
                     client_key_files, init_public_certs, load_public_cert_paths, public_cert_folder,
                     public_cert_renewable,
                     renew_public_certs, rotate_public_ca)
from .server import (SERVER_CA_BUNDLE, SERVER_CA_CERT, SERVER_CA_KEY, SERVER_CERT, SERVER_KEY, InitResult,
                     ServerCertResult, abort_server_ca, commit_server_ca, init_server_cert,
                     load_server_cert_paths, renew_server_cert, rotate_server_ca, server_cert_paths,
                     server_cert_renewable, server_key_files, stage_server_ca)
from .visitor import (MAX_VISITOR_CERT_DAYS, VISITOR_CA_CERT, VISITOR_CERT_DAYS, VisitorCert,
                      init_visitor_ca, issue_visitor_cert, visitor_cert_name)
from .files import CERT_MODE, DIR_MODE, KEY_MODE, LOCK_WAIT, atomic_write, ensure_dir
from .store import pin
from .x509 import (CA_DAYS, LEAF_DAYS, certificate_serial, client_identity, identity_of_certificate,
                   identity_of_certificate_der, key_permission_problem, key_permission_problems, leaf_not_after,
                   load_certificate, load_certificates, make_self_signed)

__all__ = [
    "CA_DAYS", "CERT_MODE", "CLIENT_CERT", "CLIENT_IDENTITY", "CLIENT_KEY", "DIR_MODE",
    "IDENTITY_MAX_AGE_DAYS", "KEY_MODE", "LEAF_DAYS", "LOCK_WAIT", "PUBLIC_CA_CERT", "PUBLIC_CA_KEY",
    "PUBLIC_CERT", "PUBLIC_KEY", "SERVER_CA_CERT", "SERVER_CA_KEY", "SERVER_CERT", "SERVER_KEY",
    "IdentityResult", "InitResult", "MaterialError", "PublicCertsResult", "PublicLeaf", "ServerCertResult",
    "atomic_write", "certificate_serial", "client_identity", "client_key_files", "ensure_dir",
    "identity_needs_renewal", "identity_of_certificate", "identity_of_certificate_der", "init_identity",
    "init_public_certs", "init_server_cert", "key_permission_problem", "key_permission_problems",
    "leaf_not_after", "load_certificate", "load_certificates", "load_identity_paths", "load_public_cert_paths",
    "load_server_cert_paths", "make_self_signed", "pin", "public_cert_folder", "public_cert_renewable",
    "renew_identity", "renew_public_certs", "renew_server_cert", "rotate_identity", "rotate_public_ca",
    "rotate_server_ca", "server_cert_paths", "server_cert_renewable", "server_key_files", "show_identity",
    "SERVER_CA_BUNDLE", "abort_identity", "abort_server_ca", "commit_identity", "commit_server_ca",
    "stage_identity", "stage_server_ca", "staged_identity",
    "MAX_VISITOR_CERT_DAYS", "VISITOR_CA_CERT", "VISITOR_CERT_DAYS", "VisitorCert",
    "init_visitor_ca", "issue_visitor_cert", "visitor_cert_name",
    "CAFolder", "CONTROL_PLANE_CA_CERT", "DEFAULT_TTL", "MAX_TTL", "ManagedCert", "check_attests", "check_managed_cert",
    "identity_csr", "init_control_plane_ca", "issue_managed_cert", "read_public_input", "uri_identities",
    "chain_refusal", "is_self_signed",
]
