"""Real X.509 certificates for the lab's certificate stores, made with ``cryptography``.

Two costs dominate a fleet of thousands: RSA key generation (~50-200 ms a key) and signing
(~1 ms a certificate). Keys therefore come from a small pool generated once per process (the
certificates are still real and self-signed, several just share a key pair), and each
certificate is built and signed lazily, the first time its DER is needed, then cached. Loading
5,000 computers thus costs no cryptography at all; a collection pays ~1 ms per computer once.

What a real SCVMM certificate carries beyond subject, SAN and dates (key usage, EKUs, key size)
is unverified (see docs/lab-scenarios.md); the lab's choice is RSA-2048, SHA-256,
digitalSignature + keyEncipherment, serverAuth + clientAuth.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCVMM_FRIENDLY_PREFIX = "SCVMM_CERTIFICATE_KEY_CONTAINER"
KEY_POOL_SIZE = 4  # enough variety that not every certificate shares one key, cheap to make

_pool: list[rsa.RSAPrivateKey] = []
_pool_lock = threading.Lock()


def pool_key(index: int) -> rsa.RSAPrivateKey:
    """One of ``KEY_POOL_SIZE`` RSA-2048 keys, generated on first use and kept for the process."""
    slot = index % KEY_POOL_SIZE
    with _pool_lock:
        while len(_pool) <= slot:
            _pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _pool[slot]


def make_serial(*parts: str) -> int:
    """A deterministic positive serial below 2**159 (RFC 5280 allows at most 20 octets)."""
    digest = hashlib.sha256("|".join(parts).encode("utf-8")).digest()
    return (int.from_bytes(digest[:20], "big") >> 1) or 1


class LabCertificate:
    """The X.509 content of one certificate; DER, base64 and thumbprint built once, lazily.

    Identity matters: the model compares certificates with ``is`` (each one has its own serial,
    so two distinct objects never share DER), which keeps state checks free of cryptography.
    """

    __slots__ = (
        "_b64",
        "_der",
        "_san",
        "_thumbprint",
        "dns_names",
        "key_index",
        "not_after",
        "not_before",
        "scvmm_profile",
        "serial",
        "subject_cn",
    )

    def __init__(
        self,
        *,
        subject_cn: str,
        not_before: datetime,
        not_after: datetime,
        serial: int,
        key_index: int = 0,
        san: bool = True,
        scvmm_profile: bool = True,
    ) -> None:
        self.subject_cn = subject_cn
        self.not_before = not_before
        self.not_after = not_after
        self.serial = serial
        self.key_index = key_index
        # DnsNameList in PowerShell is the SAN DNS names, or the subject CN when there are none
        self.dns_names = [subject_cn]
        self.scvmm_profile = scvmm_profile
        self._der: bytes | None = None
        self._b64: str | None = None
        self._thumbprint: str | None = None
        self._san = san

    @property
    def der(self) -> bytes:
        # A benign race: two threads may both build it, and the results are identical
        # (same inputs, deterministic PKCS#1 v1.5 signature), so no lock is needed.
        if self._der is None:
            self._der = self._build()
        return self._der

    @property
    def der_base64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self.der).decode("ascii")
        return self._b64

    @property
    def thumbprint(self) -> str:
        """What Windows shows: SHA-1 of the DER, upper-case hex."""
        if self._thumbprint is None:
            self._thumbprint = hashlib.sha1(self.der, usedforsecurity=False).hexdigest().upper()
        return self._thumbprint

    @property
    def subject(self) -> str:
        return f"CN={self.subject_cn}"

    def _build(self) -> bytes:
        key = pool_key(self.key_index)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.subject_cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)  # self-signed: issuer = subject
            .public_key(key.public_key())
            .serial_number(self.serial)
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
        )
        if self._san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(self.subject_cn)]), critical=False
            )
        if self.scvmm_profile:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        cert = builder.sign(key, hashes.SHA256())
        return cert.public_bytes(Encoding.DER)


@dataclass
class StoreEntry:
    """A certificate as one store holds it: the store-level properties live here, not in DER.

    The same ``LabCertificate`` can sit in a computer's ``My`` (with its friendly name and
    private key) and in the VMM server's ``TrustedPeople`` (a public copy), sharing DER.
    """

    cert: LabCertificate
    friendly_name: str = ""
    has_private_key: bool = False

    @property
    def is_scvmm(self) -> bool:
        return self.friendly_name.startswith(SCVMM_FRIENDLY_PREFIX)
