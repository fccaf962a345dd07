"""X.509 certificates from the DER bytes a computer sent: parsed once, here, with cryptography.

Dates, names and serials are never taken from PowerShell's text output (locale- and
version-dependent); the collector sends ``RawData`` and this module reads it. Every bad
input raises ``CertificateError`` with a specific reason, never another exception, because
these bytes come from the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.hashes import HashAlgorithm
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = [
    "MAX_DER_BYTES",
    "NETWORK_CONTROLLER_OID",
    "CertificateError",
    "CertificateInfo",
    "format_serial",
    "parse_certificate",
]

# The OID the Network Controller host agent looks for on SDN / Azure Local hosts.
NETWORK_CONTROLLER_OID: Final = "1.3.6.1.4.1.311.95.1.1.1"

# A certificate is a few KiB; anything far larger is not one, and is not worth parsing.
MAX_DER_BYTES: Final = 256 * 1024

# Exceptions cryptography raises for malformed or unsupported content. Its Rust parser
# reports bad DER as ValueError; the rest come from lazily parsed parts (extensions, names,
# keys). Caught precisely so that a real bug (AttributeError, ...) is not disguised as "bad
# certificate".
_PARSE_ERRORS: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,  # not a ValueError: a version field other than v1/v2/v3
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

# Signature algorithm OIDs -> the names OpenSSL prints ("Signature Algorithm: ..."). Our own
# table because cryptography keeps its name table private; unknown OIDs are shown dotted.
_SIGNATURE_NAMES: Final[dict[str, str]] = {
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.14": "sha224WithRSAEncryption",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.113549.1.1.10": "rsassaPss",
    "1.3.14.3.2.29": "sha1WithRSA",
    "2.16.840.1.101.3.4.3.13": "RSA-SHA3-224",
    "2.16.840.1.101.3.4.3.14": "RSA-SHA3-256",
    "2.16.840.1.101.3.4.3.15": "RSA-SHA3-384",
    "2.16.840.1.101.3.4.3.16": "RSA-SHA3-512",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "2.16.840.1.101.3.4.3.9": "ecdsa_with_SHA3-224",
    "2.16.840.1.101.3.4.3.10": "ecdsa_with_SHA3-256",
    "2.16.840.1.101.3.4.3.11": "ecdsa_with_SHA3-384",
    "2.16.840.1.101.3.4.3.12": "ecdsa_with_SHA3-512",
    "1.2.840.10040.4.3": "dsa-with-sha1",
    "2.16.840.1.101.3.4.3.1": "dsa-with-sha224",
    "2.16.840.1.101.3.4.3.2": "dsa-with-sha256",
    "1.3.101.112": "ed25519",
    "1.3.101.113": "ed448",
}

# SubjectPublicKeyInfo algorithm OIDs, for keys cryptography cannot load.
_KEY_ALGORITHM_NAMES: Final[dict[str, str]] = {
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.113549.1.1.10": "RSA-PSS",
    "1.2.840.10045.2.1": "EC",
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
}


class CertificateError(ValueError):
    """The bytes are not a certificate we can read; the message says why."""


@dataclass(frozen=True)
class CertificateInfo:
    """What the exporter needs from one certificate. All fields come from the DER bytes.

    - ``thumbprint``: SHA-1 of the DER bytes, upper-case hex: Windows' ``Thumbprint``.
    - ``serial``: see ``format_serial`` (Windows' ``SerialNumber`` format).
    - ``subject``/``issuer``: RFC 4514 strings (most specific RDN first, as OpenSSL's
      ``-nameopt RFC2253`` prints them; Windows prints the same RDNs in the same order).
    - ``common_name``: the first CN of the subject, or None.
    - ``not_before``/``not_after``: timezone-aware UTC.
    - ``self_signed``: issuer == subject AND the signature verifies with the certificate's
      own public key; False when it cannot be verified (unsupported key or algorithm).
    - ``key_algorithm``: ``RSA``, ``EC``, ``DSA``, ``Ed25519``, ``Ed448``, ... or the dotted
      OID of an unknown algorithm; ``key_size`` in bits (EC: the curve size), None for
      Ed25519/Ed448 (fixed by the algorithm) and for unknown keys.
    - ``signature_algorithm``: OpenSSL's name (``sha256WithRSAEncryption``) or the dotted OID.
    - ``dns_names``: the subjectAltName DNS entries, in certificate order.
    - ``network_controller_oid``: 1.3.6.1.4.1.311.95.1.1.1 is an extended key usage or an
      extension OID of the certificate.
    """

    thumbprint: str
    serial: str
    subject: str
    issuer: str
    common_name: str | None
    not_before: datetime
    not_after: datetime
    self_signed: bool
    key_algorithm: str
    key_size: int | None
    signature_algorithm: str
    dns_names: tuple[str, ...]
    network_controller_oid: bool


def format_serial(serial: int) -> str:
    """The serial as Windows shows ``SerialNumber``: the DER INTEGER bytes, upper-case hex.

    That is the minimal two's-complement big-endian encoding, so a serial whose top bit is
    set keeps its leading ``00`` (``0x8F`` -> ``"008F"``), every string has an even number of
    digits, and a (non-RFC 5280, but seen in the wild) negative serial shows its
    two's-complement bytes (-123 -> ``"85"``). Compare serials as these strings. That
    Windows shows exactly these bytes is documented .NET behaviour (``SerialNumber`` is the
    raw big-endian serial), not verified against a VMM certificate here.
    """
    magnitude = serial if serial >= 0 else ~serial
    length = (magnitude.bit_length() + 8) // 8
    return serial.to_bytes(length, "big", signed=True).hex().upper()


def parse_certificate(der: bytes | bytearray | memoryview) -> CertificateInfo:
    """Parse one DER-encoded X.509 certificate; raise ``CertificateError`` if it is not one."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise CertificateError(f"expected DER bytes, got {type(der).__name__}")
    der = bytes(der)
    if not der:
        raise CertificateError("empty input: no certificate bytes")
    if len(der) > MAX_DER_BYTES:
        raise CertificateError(f"{len(der)} bytes is too large for a certificate")
    if der[0] != 0x30:
        # Fast, clearer answer for the common mistakes (PEM text, base64 not decoded).
        hint = " (PEM text? send the DER bytes)" if der.startswith(b"-----BEGIN") else ""
        raise CertificateError(f"not DER: a certificate starts with a SEQUENCE (0x30){hint}")
    try:
        cert = x509.load_der_x509_certificate(der)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"not a valid DER X.509 certificate: {exc}") from None

    step = "validity dates"
    try:
        not_before = cert.not_valid_before_utc
        not_after = cert.not_valid_after_utc
        step = "serial number"
        serial = format_serial(cert.serial_number)
        step = "subject"
        subject_name = cert.subject
        subject = subject_name.rfc4514_string()
        common_name = _common_name(subject_name)
        step = "issuer"
        issuer_name = cert.issuer
        issuer = issuer_name.rfc4514_string()
        step = "extensions"
        extensions = cert.extensions
        dns_names = _dns_names(extensions)
        network_controller = _has_network_controller_oid(extensions)
        step = "signature algorithm"
        signature_algorithm = _signature_name(cert.signature_algorithm_oid.dotted_string)
        step = "public key"
        key_algorithm, key_size, public_key = _key_info(cert)
    except _PARSE_ERRORS as exc:
        raise CertificateError(f"malformed {step}: {exc}") from None

    self_signed = issuer_name == subject_name and _signed_by(cert, public_key)
    return CertificateInfo(
        thumbprint=hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),
        serial=serial,
        subject=subject,
        issuer=issuer,
        common_name=common_name,
        not_before=not_before,
        not_after=not_after,
        self_signed=self_signed,
        key_algorithm=key_algorithm,
        key_size=key_size,
        signature_algorithm=signature_algorithm,
        dns_names=dns_names,
        network_controller_oid=network_controller,
    )


def _common_name(name: x509.Name) -> str | None:
    for attribute in name.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _dns_names(extensions: x509.Extensions) -> tuple[str, ...]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


def _has_network_controller_oid(extensions: x509.Extensions) -> bool:
    for extension in extensions:
        if extension.oid.dotted_string == NETWORK_CONTROLLER_OID:
            return True
        if extension.oid == ExtensionOID.EXTENDED_KEY_USAGE:
            usages = extension.value
            if isinstance(usages, x509.ExtendedKeyUsage) and any(
                usage.dotted_string == NETWORK_CONTROLLER_OID for usage in usages
            ):
                return True
    return False


def _signature_name(dotted: str) -> str:
    return _SIGNATURE_NAMES.get(dotted, dotted)


_PublicKey = (
    rsa.RSAPublicKey
    | ec.EllipticCurvePublicKey
    | dsa.DSAPublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | x25519.X25519PublicKey
    | x448.X448PublicKey
)


def _key_info(cert: x509.Certificate) -> tuple[str, int | None, _PublicKey | None]:
    dotted = cert.public_key_algorithm_oid.dotted_string
    try:
        key = cert.public_key()
    except UnsupportedAlgorithm:
        # A key type cryptography does not know (GOST, SM2, ...): still a readable
        # certificate, whose dates matter more than its key.
        return _KEY_ALGORITHM_NAMES.get(dotted, dotted), None, None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size, key
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", None, key
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", None, key
    if isinstance(key, x25519.X25519PublicKey):
        return "X25519", None, key
    if isinstance(key, x448.X448PublicKey):
        return "X448", None, key
    return _KEY_ALGORITHM_NAMES.get(dotted, dotted), None, None


def _signed_by(cert: x509.Certificate, key: _PublicKey | None) -> bool:
    """Whether ``cert``'s signature verifies with ``key``.

    Verified with the key primitives rather than ``verify_directly_issued_by``, which refuses
    SHA-1 signatures, and older VMM certificates may well be sha1WithRSAEncryption.
    """
    if key is None:
        return False
    signature, data = cert.signature, cert.tbs_certificate_bytes
    try:
        hash_algorithm: HashAlgorithm | None = cert.signature_hash_algorithm
        parameters = cert.signature_algorithm_parameters
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(parameters, AsymmetricPadding) or hash_algorithm is None:
                return False
            key.verify(signature, data, parameters, hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(parameters, ec.ECDSA):
                return False
            key.verify(signature, data, parameters)
        elif isinstance(key, dsa.DSAPublicKey):
            if hash_algorithm is None:
                return False
            key.verify(signature, data, hash_algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if hash_algorithm is not None:
                return False
            key.verify(signature, data)
        else:
            return False  # X25519/X448 keys cannot sign
    except InvalidSignature:
        return False
    except _PARSE_ERRORS:
        # Key and signature algorithm do not fit together, or an algorithm this build
        # cannot verify: not provably self-signed.
        return False
    return True
