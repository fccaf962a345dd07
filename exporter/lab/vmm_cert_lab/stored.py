"""Certificates as a refresh stores them, made up without a key pair: for tests and benchmarks
that need many snapshot entries quickly (the fleet makes real X.509 certificates instead)."""

from __future__ import annotations

from datetime import datetime

from vmm_cert_exporter.certificate import CertificateInfo
from vmm_cert_exporter.snapshot import StoredCertificate


def stored_certificate(
    fqdn: str,
    not_after: datetime,
    *,
    serial: str = "01",
    thumbprint: str = "AB" * 20,
    issuer: str | None = None,
    friendly: str | None = None,
) -> StoredCertificate:
    """An SCVMM-like self-signed certificate of ``fqdn``, valid five years until ``not_after``."""
    info = CertificateInfo(
        thumbprint=thumbprint,
        serial=serial,
        subject=f"CN={fqdn}",
        issuer=issuer or f"CN={fqdn}",
        common_name=fqdn,
        not_before=not_after.replace(year=not_after.year - 5),
        not_after=not_after,
        self_signed=True,
        key_algorithm="RSA",
        key_size=2048,
        signature_algorithm="sha256WithRSAEncryption",
        dns_names=(fqdn,),
        network_controller_oid=False,
    )
    return StoredCertificate(info, friendly or f"SCVMM_CERTIFICATE_KEY_CONTAINER{fqdn}", True)
