"""PP2_TYPE_SSL after a terminate handshake that verified a Visitor client certificate:
PP2_CLIENT_CERT_CONN in the client bitfield, verify 0, and the certificate's CN as
PP2_SUBTYPE_SSL_CN between the version and the cipher (haproxy's proxy-protocol.txt 2.2.5)."""

from runewarp.proto.proxyv2 import (PP2_CLIENT_CERT_CONN, PP2_SUBTYPE_SSL_CN, PP2_TYPE_SSL, SIGNATURE,
                                    ProxyHeader, VisitorTLS, backend_header, ssl_tlv, tlvs)

TLS = VisitorTLS("TLSv1.3", "TLS_AES_128_GCM_SHA256", b"", True, "alice")


def test_ssl_tlv_golden_bytes_with_a_client_certificate():
    assert ssl_tlv(TLS) == (
        b"\x20\x00\x30"  # PP2_TYPE_SSL, 48 bytes
        b"\x03"  # client: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN
        b"\x00\x00\x00\x00"  # verify: 0, the certificate was verified
        b"\x21\x00\x07" b"TLSv1.3"  # PP2_SUBTYPE_SSL_VERSION
        b"\x22\x00\x05" b"alice"  # PP2_SUBTYPE_SSL_CN
        b"\x23\x00\x16" b"TLS_AES_128_GCM_SHA256")  # PP2_SUBTYPE_SSL_CIPHER


def test_a_certificate_without_a_cn_sets_the_bit_and_omits_the_cn():
    value = dict(tlvs(ssl_tlv(VisitorTLS("TLSv1.3", "X", b"", True, None))))[PP2_TYPE_SSL]
    assert value[0] == 0x01 | PP2_CLIENT_CERT_CONN
    assert [kind for kind, _ in tlvs(value[5:])] == [0x21, 0x23]


def test_without_a_client_certificate_the_tlv_is_unchanged():
    value = dict(tlvs(ssl_tlv(VisitorTLS("TLSv1.3", "X"))))[PP2_TYPE_SSL]
    assert value[:5] == b"\x01\x00\x00\x00\x00"
    assert PP2_SUBTYPE_SSL_CN not in dict(tlvs(value[5:]))


def test_the_backend_header_carries_the_cn():
    header = backend_header("v2", ProxyHeader(("192.0.2.1", 1), ("192.0.2.2", 443)), "db.example.com", TLS)
    assert header.startswith(SIGNATURE)
    assert header.endswith(ssl_tlv(TLS))
