"""The lab's own certificate authority and the HTTPS certificate of its WinRM listener.

Real fleets present a certificate issued by a corporate CA; clients validate it with
``ca_trust_path``. The lab does the same with a throwaway CA so HTTPS is tested with validation
on (``server_cert_validation: validate``), never with ``ignore``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The server certificate covers every name a lab client can use for the one listener.
_DNS_NAMES = ("localhost",)
_IP_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class LabTLS:
    """PEM files of the lab CA and of the listener's certificate and key."""

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context; TLS 1.2+ only, as current Windows listeners are."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmm-cert-exporter lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_lab_tls(state_dir: Path | str) -> LabTLS:
    """Make a fresh CA and a server certificate for 127.0.0.1/::1/localhost in ``state_dir``.

    EC P-256 keys: generated in milliseconds, so every lab start gets its own CA and a leaked
    lab CA is worthless. Files: ``lab-ca.pem`` (give this to clients), ``lab-server.pem``,
    ``lab-server.key`` (mode 0600).
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    # Backdated an hour so a client whose clock is slightly behind still accepts it.
    not_before = now - datetime.timedelta(hours=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vmm-cert-exporter lab CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in _DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in _IP_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    tls = LabTLS(
        ca_path=directory / "lab-ca.pem",
        cert_path=directory / "lab-server.pem",
        key_path=directory / "lab-server.key",
    )
    tls.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is created 0600 from the start rather than chmod-ed after being written.
    fd = os.open(tls.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    return tls
