"""parse_certificate: real certificates made here with cryptography, and hostile bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm_cert_exporter.certificate import (
    _SIGNATURE_NAMES,
    NETWORK_CONTROLLER_OID,
    CertificateError,
    CertificateInfo,
    format_serial,
    parse_certificate,
)

UTC = dt.UTC
SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None
# VMM's pattern: valid from 1 January of the year the computer was added, for 5 years.
VMM_NOT_BEFORE = dt.datetime(2015, 1, 1, tzinfo=UTC)
VMM_NOT_AFTER = dt.datetime(2020, 1, 1, tzinfo=UTC)

# Key generation is the slow part: one key of each kind for the whole module.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
CA_KEY = ec.generate_private_key(ec.SECP384R1())


def _name(cn: str | None, org: str | None = None) -> x509.Name:
    attributes = []
    if org is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


@dataclass
class Made:
    cert: x509.Certificate
    der: bytes


def make_cert(
    *,
    key: CertificateIssuerPrivateKeyTypes = RSA_KEY,
    subject: x509.Name | None = None,
    issuer: x509.Name | None = None,
    signing_key: CertificateIssuerPrivateKeyTypes | None = None,
    serial: int = 0x1234,
    not_before: dt.datetime = VMM_NOT_BEFORE,
    not_after: dt.datetime = VMM_NOT_AFTER,
    dns_names: list[str] | None = None,
    extra_general_names: list[x509.GeneralName] | None = None,
    ekus: list[x509.ObjectIdentifier] | None = None,
    extensions: list[x509.ExtensionType] | None = None,
    hash_algorithm: SignHash = None,
    rsa_padding: padding.PSS | padding.PKCS1v15 | None = None,
) -> Made:
    subject = subject if subject is not None else _name("hv01.corp.example")
    signer = signing_key if signing_key is not None else key
    if hash_algorithm is None and not isinstance(signer, ed25519.Ed25519PrivateKey):
        hash_algorithm = hashes.SHA256()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names or []]
    names += extra_general_names or []
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    for extension in extensions or []:
        builder = builder.add_extension(extension, critical=False)
    if rsa_padding is not None:
        cert = builder.sign(signer, hash_algorithm, rsa_padding=rsa_padding)
    else:
        cert = builder.sign(signer, hash_algorithm)
    return Made(cert, cert.public_bytes(serialization.Encoding.DER))


def make_ca() -> Made:
    name = _name("Corp Issuing CA", org="Corp")
    return make_cert(key=CA_KEY, subject=name, hash_algorithm=hashes.SHA384())


def resign_sha1(made: Made, key: rsa.RSAPrivateKey) -> bytes:
    """Re-sign an RSA/SHA-256 certificate as sha1WithRSAEncryption.

    cryptography no longer signs certificates with SHA-1, but VMM certificates made years ago
    may well be SHA-1: swap the algorithm OID (same length) in both places, re-sign the TBS.
    """
    sha256_rsa = bytes.fromhex("06092a864886f70d01010b")
    sha1_rsa = bytes.fromhex("06092a864886f70d010105")
    assert made.der.count(sha256_rsa) == 2
    old_tbs = made.cert.tbs_certificate_bytes
    new_tbs = old_tbs.replace(sha256_rsa, sha1_rsa)
    signature = key.sign(new_tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - on purpose
    assert len(signature) == len(made.cert.signature)
    der = made.der.replace(old_tbs, new_tbs).replace(sha256_rsa, sha1_rsa)
    return der.replace(made.cert.signature, signature)


# --------------------------------------------------------------------------------------------
# Good certificates


def test_vmm_like_rsa_self_signed_expired() -> None:
    made = make_cert(dns_names=["hv01.corp.example"], serial=0x0A1B2C)
    info = parse_certificate(made.der)
    assert isinstance(info, CertificateInfo)
    assert info.thumbprint == hashlib.sha1(made.der, usedforsecurity=False).hexdigest().upper()
    sha1 = hashes.SHA1()  # noqa: S303 - the Windows thumbprint is SHA-1
    assert info.thumbprint == made.cert.fingerprint(sha1).hex().upper()
    assert len(info.thumbprint) == 40 and info.thumbprint.isupper()
    assert info.serial == "0A1B2C"
    assert info.subject == "CN=hv01.corp.example"
    assert info.issuer == "CN=hv01.corp.example"
    assert info.common_name == "hv01.corp.example"
    assert info.not_before == VMM_NOT_BEFORE
    assert info.not_after == VMM_NOT_AFTER
    assert info.not_after.tzinfo is not None and info.not_after.utcoffset() == dt.timedelta(0)
    assert info.not_after < dt.datetime.now(UTC)  # expired, and still parsed
    assert info.self_signed is True
    assert info.key_algorithm == "RSA"
    assert info.key_size == 2048
    assert info.signature_algorithm == "sha256WithRSAEncryption"
    assert info.dns_names == ("hv01.corp.example",)
    assert info.network_controller_oid is False


def test_parse_is_deterministic_and_accepts_bytes_like() -> None:
    made = make_cert()
    assert parse_certificate(made.der) == parse_certificate(bytearray(made.der))
    assert parse_certificate(memoryview(made.der)) == parse_certificate(made.der)


def test_ec_certificate_issued_by_a_ca_is_not_self_signed() -> None:
    ca = make_ca()
    made = make_cert(
        key=EC_KEY,
        subject=_name("hv02.corp.example", org="Corp"),
        issuer=ca.cert.subject,
        signing_key=CA_KEY,
        hash_algorithm=hashes.SHA384(),
        dns_names=["hv02.corp.example", "hv02"],
    )
    info = parse_certificate(made.der)
    assert info.self_signed is False
    assert info.issuer == "CN=Corp Issuing CA,O=Corp"
    assert info.subject == "CN=hv02.corp.example,O=Corp"
    assert info.common_name == "hv02.corp.example"
    assert info.key_algorithm == "EC"
    assert info.key_size == 256
    assert info.signature_algorithm == "ecdsa-with-SHA384"
    assert info.dns_names == ("hv02.corp.example", "hv02")

    ca_info = parse_certificate(ca.der)
    assert ca_info.self_signed is True
    assert (ca_info.key_algorithm, ca_info.key_size) == ("EC", 384)


def test_same_name_but_signed_by_another_key_is_not_self_signed() -> None:
    # issuer == subject is not enough: the signature must verify with the certificate's own key.
    made = make_cert(key=RSA_KEY, signing_key=OTHER_RSA_KEY)
    info = parse_certificate(made.der)
    assert info.issuer == info.subject
    assert info.self_signed is False


def test_ca_signed_with_the_subjects_own_key_but_other_issuer_is_not_self_signed() -> None:
    made = make_cert(key=RSA_KEY, issuer=_name("Someone Else"))
    assert parse_certificate(made.der).self_signed is False


def test_sha1_signed_self_signed_certificate_verifies() -> None:
    made = make_cert(key=RSA_KEY)
    der = resign_sha1(made, RSA_KEY)
    info = parse_certificate(der)
    assert info.signature_algorithm == "sha1WithRSAEncryption"
    assert info.self_signed is True
    assert info.thumbprint == hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def test_ec_p384_self_signed() -> None:
    info = parse_certificate(make_cert(key=EC384_KEY, hash_algorithm=hashes.SHA512()).der)
    assert (info.key_algorithm, info.key_size, info.self_signed) == ("EC", 384, True)
    assert info.signature_algorithm == "ecdsa-with-SHA512"


def test_ed25519_self_signed() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    info = parse_certificate(make_cert(key=key).der)
    assert (info.key_algorithm, info.key_size) == ("Ed25519", None)
    assert info.signature_algorithm == "ed25519"
    assert info.self_signed is True


def test_dsa_self_signed() -> None:
    key = dsa.generate_private_key(key_size=1024)  # noqa: S505 - fast; size is not the point
    info = parse_certificate(make_cert(key=key).der)
    assert (info.key_algorithm, info.key_size) == ("DSA", 1024)
    assert info.signature_algorithm == "dsa-with-sha256"
    assert info.self_signed is True


def test_rsa_pss_self_signed() -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    info = parse_certificate(make_cert(key=RSA_KEY, rsa_padding=pss).der)
    assert info.signature_algorithm == "rsassaPss"
    assert info.key_algorithm == "RSA"
    assert info.self_signed is True


def test_without_san_and_without_cn() -> None:
    info = parse_certificate(make_cert(subject=_name(None, org="No CN Ltd")).der)
    assert info.dns_names == ()
    assert info.common_name is None
    assert info.subject == "O=No CN Ltd"


def test_only_dns_entries_of_the_san_are_listed() -> None:
    import ipaddress

    made = make_cert(
        dns_names=["a.corp.example", "b.corp.example"],
        extra_general_names=[
            x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
            x509.RFC822Name("admin@corp.example"),
        ],
    )
    assert parse_certificate(made.der).dns_names == ("a.corp.example", "b.corp.example")


def test_network_controller_oid_as_eku() -> None:
    nc = x509.ObjectIdentifier(NETWORK_CONTROLLER_OID)
    made = make_cert(ekus=[ExtendedKeyUsageOID.SERVER_AUTH, nc])
    assert parse_certificate(made.der).network_controller_oid is True


def test_network_controller_oid_as_extension() -> None:
    nc = x509.ObjectIdentifier(NETWORK_CONTROLLER_OID)
    made = make_cert(extensions=[x509.UnrecognizedExtension(nc, b"\x05\x00")])
    assert parse_certificate(made.der).network_controller_oid is True


def test_other_ekus_are_not_the_network_controller_oid() -> None:
    made = make_cert(
        ekus=[ExtendedKeyUsageOID.SERVER_AUTH, x509.ObjectIdentifier("1.3.6.1.4.1.311.95.1.1.2")]
    )
    assert parse_certificate(made.der).network_controller_oid is False


def test_not_yet_valid_certificate_parses() -> None:
    future = dt.datetime(2090, 1, 1, tzinfo=UTC)
    info = parse_certificate(make_cert(not_before=future, not_after=future.replace(2095)).der)
    assert info.not_before == future
    assert info.not_after.year == 2095


def test_unknown_public_key_algorithm_still_parses() -> None:
    # Turn the SubjectPublicKeyInfo OID of an Ed25519 certificate into an unknown one
    # (1.3.101.119, same length): readable dates, unknown key, not provably self-signed.
    der = make_cert(key=ed25519.Ed25519PrivateKey.generate()).der
    oid = bytes.fromhex("06032b6570")
    assert der.count(oid) == 3  # tbs signature, SPKI, outer signatureAlgorithm
    spki = der.find(oid, der.find(oid) + 1)
    patched = der[:spki] + bytes.fromhex("06032b6577") + der[spki + len(oid) :]
    info = parse_certificate(patched)
    assert info.key_algorithm == "1.3.101.119"
    assert info.key_size is None
    assert info.self_signed is False
    assert info.not_after == VMM_NOT_AFTER


# --------------------------------------------------------------------------------------------
# Serial numbers


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        (0, "00"),
        (1, "01"),
        (0x7F, "7F"),
        (0x80, "0080"),  # top bit set: DER keeps a leading zero byte, and so does Windows
        (0xFF, "00FF"),
        (0x0100, "0100"),
        (0x1234ABCD, "1234ABCD"),
        (0xDEADBEEF, "00DEADBEEF"),
        (-1, "FF"),
        (-123, "85"),
        (-128, "80"),
        (-129, "FF7F"),
    ],
)
def test_format_serial(serial: int, expected: str) -> None:
    assert format_serial(serial) == expected


def test_serial_with_top_bit_keeps_its_zero_byte() -> None:
    # 19 bytes with the top bit set: DER (and Windows) prefix a zero byte -> 20 bytes.
    serial = (1 << 151) | 0xABCDEF
    info = parse_certificate(make_cert(serial=serial).der)
    assert info.serial == "00" + format(serial, "X")
    assert len(info.serial) == 40


def test_negative_serial_in_the_wild() -> None:
    # RFC 5280 forbids it; old tools produced it. cryptography warns, and we must still read it.
    der = make_cert(serial=5).der
    at = der.find(b"\x02\x01\x05")
    patched = der[:at] + b"\x02\x01\x85" + der[at + 3 :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = parse_certificate(patched)
    assert info.serial == "85"


def test_signature_names_match_cryptography_where_it_knows_them() -> None:
    for dotted, name in _SIGNATURE_NAMES.items():
        known = repr(x509.ObjectIdentifier(dotted))
        if "Unknown OID" not in known:
            assert f"name={name})" in known, (dotted, name, known)


# --------------------------------------------------------------------------------------------
# Bad input


def _reason(data: object) -> str:
    with pytest.raises(CertificateError) as caught:
        parse_certificate(data)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


def test_empty_input() -> None:
    assert "empty" in _reason(b"")


def test_not_bytes() -> None:
    assert "expected DER bytes, got str" in _reason("MIIB...")
    assert "got NoneType" in _reason(None)


def test_pem_instead_of_der() -> None:
    pem = make_cert().cert.public_bytes(serialization.Encoding.PEM)
    assert "PEM" in _reason(pem)


def test_base64_text_instead_of_der() -> None:
    import base64

    assert "not DER" in _reason(base64.b64encode(make_cert().der))


def test_garbage() -> None:
    assert "not a valid DER X.509 certificate" in _reason(b"\x30\x03\x02\x01\x01")
    assert "not DER" in _reason(b"hello world")


def test_trailing_bytes_are_refused() -> None:
    # Extra bytes would also change the thumbprint: never accept a certificate "plus something".
    assert "not a valid DER X.509 certificate" in _reason(make_cert().der + b"\x00")


@pytest.mark.parametrize("cut", [1, 2, 4, 10, 50, 100, 200, -200, -50, -10, -1])
def test_truncated_der(cut: int) -> None:
    der = make_cert(dns_names=["hv01.corp.example"]).der
    _reason(der[:cut])


def test_too_large() -> None:
    assert "too large" in _reason(b"\x30" + b"\x00" * (300 * 1024))


def test_other_der_structures_are_not_certificates() -> None:
    key_der = RSA_KEY.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _reason(key_der)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("hv01.corp.example"))
        .sign(EC_KEY, hashes.SHA256())
    )
    _reason(csr.public_bytes(serialization.Encoding.DER))


def test_invalid_version_is_a_certificate_error() -> None:
    # cryptography raises x509.InvalidVersion (not a ValueError) here: found by fuzzing.
    der = make_cert().der
    version = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    assert der.count(version) == 1
    reason = _reason(der.replace(version, bytes.fromhex("a003020105")))
    assert "not a valid DER X.509 certificate" in reason


def test_malformed_extension_is_a_certificate_error() -> None:
    bad_san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x01\x02")
    reason = _reason(make_cert(extensions=[bad_san]).der)
    assert reason.startswith("malformed extensions:")


# --------------------------------------------------------------------------------------------
# Fuzzing: nothing but CertificateError, ever

SAMPLE_DER = make_cert(
    dns_names=["hv01.corp.example"],
    ekus=[x509.ObjectIdentifier(NETWORK_CONTROLLER_OID)],
).der


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_certificate_error(data: bytes) -> None:
    try:
        parse_certificate(data)
    except CertificateError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512).map(lambda b: b"\x30\x82" + b))
def test_random_sequences_raise_only_certificate_error(data: bytes) -> None:
    try:
        parse_certificate(data)
    except CertificateError:
        pass


@st.composite
def mutated_der(draw: st.DrawFn) -> bytes:
    data = bytearray(SAMPLE_DER)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "set":
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del data[position]
        else:
            data.insert(position, draw(st.integers(min_value=0, max_value=255)))
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_der())
def test_mutated_certificates_parse_or_raise_certificate_error(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mutated serials may be negative: cryptography warns
        try:
            info = parse_certificate(data)
        except CertificateError:
            return
    # Whatever parsed is internally consistent.
    assert info.thumbprint == hashlib.sha1(data, usedforsecurity=False).hexdigest().upper()
    assert info.not_before.tzinfo is not None and info.not_after.tzinfo is not None
