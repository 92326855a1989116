"""The Client identity rule (proto/identity.py) agrees with OpenSSL's own SPKI hash."""

import subprocess

from runewarp.proto.identity import identity_of_spki


def test_identity_is_the_sha256_of_the_spki_as_openssl_computes_it(tmp_path):
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key], check=True, capture_output=True)
    spki = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                          check=True, capture_output=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=spki, check=True,
                            capture_output=True).stdout.split()[0].decode()
    assert identity_of_spki(spki) == digest
    assert len(digest) == 64 and digest == digest.lower()
