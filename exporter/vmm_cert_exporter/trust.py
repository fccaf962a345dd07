"""TrustedPeople matching: whether VMM's copy of a computer's certificate is its current one.

The VMM server keeps a copy of each managed computer's SCVMM certificate in its
``LocalMachine\\TrustedPeople`` store. The collector and the renewal receiver both judge a
computer's certificate with these functions, so "trusted" means the same thing to both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from vmm_cert_exporter.certificate import CertificateError, CertificateInfo, parse_certificate
from vmm_cert_exporter.inventory import Computer, fqdn_key
from vmm_cert_exporter.results import CertificateRecord, CertificatesResult
from vmm_cert_exporter.snapshot import StoredCertificate, scvmm_friendly_host

# TrustedPeople entries that are not copies of a managed computer's certificate
_NOT_A_COPY: Final = "VMMWinPEAgentOSDBootstrap"


def is_copy_candidate(record: CertificateRecord, info: CertificateInfo | None) -> bool:
    """TrustedPeople entries named by IP address or for WinPE bootstrap are not host copies."""
    names = list(record.dns_names)
    if info is not None and info.common_name:
        names.append(info.common_name)
    if any(_NOT_A_COPY.lower() in n.lower() for n in names) or _NOT_A_COPY.lower() in (
        record.friendly_name.lower()
    ):
        return False
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return True
    return False


def trusted_names(record: CertificateRecord, info: CertificateInfo | None) -> set[str]:
    """The computers a TrustedPeople entry stands for: its DnsNameList, the names in its DER
    and, as Microsoft support's checker reads it, the FQDN its SCVMM friendly name carries."""
    names = {fqdn_key(n) for n in record.dns_names}
    named = scvmm_friendly_host(record.friendly_name)
    if named:
        names.add(fqdn_key(named))
    if info is not None:
        names.update(fqdn_key(n) for n in info.dns_names)
        if info.common_name:
            names.add(fqdn_key(info.common_name))
    return names


@dataclass(frozen=True)
class TrustedCopies:
    """VMM's TrustedPeople, indexed by computer name: thumbprints of each one's copies."""

    by_name: dict[str, frozenset[str]]

    @staticmethod
    def from_result(result: CertificatesResult) -> TrustedCopies:
        by_name: dict[str, set[str]] = {}
        for record in result.certificates:
            try:
                info: CertificateInfo | None = parse_certificate(record.der)
            except CertificateError:
                info = None
            if not is_copy_candidate(record, info):
                continue
            for name in trusted_names(record, info):
                by_name.setdefault(name, set()).add(record.thumbprint.upper())
        return TrustedCopies({k: frozenset(v) for k, v in by_name.items()})


def trust_of(
    computer: Computer,
    current: StoredCertificate | None,
    copies: TrustedCopies | None,
) -> bool | None:
    """Whether VMM's copy matches; None when there is nothing to compare or no verdict due.

    The VMM server's own entry is judged only when TrustedPeople has one: whether VMM keeps
    a copy of its own certificate is unverified, and a missing self-copy must not alert.
    """
    if current is None or copies is None or computer.vmm_server is None:
        return None
    thumbprints = copies.by_name.get(computer.key)
    if computer.is_vmm_server and not thumbprints:
        return None
    return bool(thumbprints) and current.info.thumbprint.upper() in (thumbprints or ())
