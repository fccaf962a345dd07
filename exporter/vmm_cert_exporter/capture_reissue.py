"""Re-issue a certificate under redacted names, for a redacted capture.

A certificate's DER carries its computer's FQDN (subject and issuer CN, subjectAltName), so a
redacted capture cannot keep it. The copy keeps what the exporter judges by — NotBefore,
NotAfter, serial number, extensions, key algorithm and size, self-signedness — and changes
the names, the key (a fresh one, so nothing links the copy to the original key) and hence
the signature and the thumbprint. The same original always gives the same copy, so a
computer's certificate and VMM's TrustedPeople copy of it stay equal.

DER that does not parse as a certificate is kept byte for byte, except that every name in it
is overwritten with ``x`` of the same length (so DER lengths stay valid).
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

_Key = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
# what cryptography raises on content it cannot read or build (see certificate.py)
_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


class Names(Protocol):
    """The redaction's view of hostnames (``capture_redact.NameMap``)."""

    def rename(self, text: str) -> str: ...

    def contains(self, data: bytes) -> bool: ...

    def mask(self, data: bytes) -> bytes: ...


def thumbprint(der: bytes) -> str:
    """Windows' Thumbprint: the SHA-1 of the DER, upper-case hex."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


class Reissuer:
    """Re-issues certificates, one copy per original (by thumbprint), one fresh key per kind."""

    def __init__(self, names: Names) -> None:
        self._names = names
        self._keys: dict[tuple[str, int | str], _Key] = {}
        self._copies: dict[str, bytes] = {}

    def reissue(self, der: bytes) -> bytes:
        original = thumbprint(der)
        copy = self._copies.get(original)
        if copy is None:
            try:
                copy = self._build(x509.load_der_x509_certificate(der))
            except _ERRORS:
                copy = self._names.mask(der)
            self._copies[original] = copy
        return copy

    def thumbprints(self) -> dict[str, str]:
        """Original thumbprint -> the copy's thumbprint, for every certificate re-issued."""
        return {old: thumbprint(new) for old, new in self._copies.items()}

    # --- building -------------------------------------------------------------------------

    def _build(self, cert: x509.Certificate) -> bytes:
        key = self._key_like(cert)
        public = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(self._name(cert.subject))
            .issuer_name(self._name(cert.issuer))
            .not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc)
            .public_key(public)
        )
        try:
            builder = builder.serial_number(cert.serial_number)
        except ValueError:  # outside what RFC 5280 (and cryptography) allows: keep it stable
            digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
            builder = builder.serial_number((int.from_bytes(digest[:19], "big") >> 1) or 1)
        for extension in cert.extensions:
            value = self._extension(extension.value, public)
            if value is not None:
                builder = builder.add_extension(value, extension.critical)
        algorithm = self._hash(cert, key)
        try:
            signed = builder.sign(key, algorithm)  # type: ignore[arg-type]
        except (ValueError, TypeError, UnsupportedAlgorithm):
            signed = builder.sign(key, None if algorithm is None else hashes.SHA256())
        return signed.public_bytes(Encoding.DER)

    def _key_like(self, cert: x509.Certificate) -> _Key:
        """A fresh key of the original's algorithm and size (RSA-2048 when unknown)."""
        try:
            public = cert.public_key()
        except _ERRORS:
            public = None
        kind: tuple[str, int | str]
        if isinstance(public, rsa.RSAPublicKey):
            kind = ("rsa", max(1024, public.key_size))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            kind = ("ec", public.curve.name)
        elif isinstance(public, dsa.DSAPublicKey):
            kind = ("dsa", public.key_size)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            kind = ("ed25519", 0)
        elif isinstance(public, ed448.Ed448PublicKey):
            kind = ("ed448", 0)
        else:
            kind = ("rsa", 2048)
        key = self._keys.get(kind)
        if key is None:
            key = self._new_key(kind, public)
            self._keys[kind] = key
        return key

    @staticmethod
    def _new_key(kind: tuple[str, int | str], public: object) -> _Key:
        name, size = kind
        if name == "ec" and isinstance(public, ec.EllipticCurvePublicKey):
            return ec.generate_private_key(public.curve)
        if name == "dsa" and isinstance(size, int):
            return dsa.generate_private_key(size)
        if name == "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        if name == "ed448":
            return ed448.Ed448PrivateKey.generate()
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))

    @staticmethod
    def _hash(cert: x509.Certificate, key: _Key) -> hashes.HashAlgorithm | None:
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return None
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None
        return algorithm if isinstance(algorithm, hashes.HashAlgorithm) else hashes.SHA256()

    def _name(self, name: x509.Name) -> x509.Name:
        rdns = []
        for rdn in name.rdns:
            attributes = []
            for attribute in rdn:
                value = attribute.value
                if isinstance(value, str):
                    renamed = self._names.rename(value)
                    kind = attribute._type
                    try:
                        attribute = x509.NameAttribute(attribute.oid, renamed, _type=kind)
                    except ValueError:  # e.g. a PrintableString that cannot hold the new text
                        attribute = x509.NameAttribute(attribute.oid, renamed)
                attributes.append(attribute)
            rdns.append(x509.RelativeDistinguishedName(attributes))
        return x509.Name(rdns)

    def _general_names(self, names: list[x509.GeneralName]) -> list[x509.GeneralName]:
        out: list[x509.GeneralName] = []
        for general in names:
            if isinstance(general, x509.DNSName):
                out.append(x509.DNSName(self._names.rename(general.value)))
            elif isinstance(general, x509.RFC822Name):
                out.append(x509.RFC822Name(self._names.rename(general.value)))
            elif isinstance(general, x509.UniformResourceIdentifier):
                out.append(x509.UniformResourceIdentifier(self._names.rename(general.value)))
            elif isinstance(general, x509.DirectoryName):
                out.append(x509.DirectoryName(self._name(general.value)))
            elif isinstance(general, x509.OtherName):
                if not self._names.contains(general.value):  # e.g. a UPN: dropped if it names one
                    out.append(general)
            else:  # IPAddress, RegisteredID
                out.append(general)
        return out

    def _extension(self, value: x509.ExtensionType, public: object) -> x509.ExtensionType | None:
        """The copy's extension: names redacted, key identifiers of the new key; an extension
        that names a computer in a form not rewritten here is left out."""
        if isinstance(value, x509.SubjectAlternativeName):
            names = self._general_names(list(value))
            return x509.SubjectAlternativeName(names) if names else None
        if isinstance(value, x509.IssuerAlternativeName):
            names = self._general_names(list(value))
            return x509.IssuerAlternativeName(names) if names else None
        if isinstance(value, x509.SubjectKeyIdentifier):
            return x509.SubjectKeyIdentifier.from_public_key(public)  # type: ignore[arg-type]
        if isinstance(value, x509.AuthorityKeyIdentifier):
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)  # type: ignore[arg-type]
        try:
            raw = value.public_bytes()
        except _ERRORS:
            return None
        return None if self._names.contains(raw) else value
