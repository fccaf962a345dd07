"""The immutable result of a refresh: what /metrics, /, `check` and the receiver read.

A snapshot is built once per refresh and swapped in whole, so a scrape never sees half a
refresh. Certificate facts are the last ones successfully read: a computer that stops
answering keeps its expiry (it is still going to expire) and is flagged by its collection
metrics instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vmm_cert_exporter.certificate import CertificateInfo
from vmm_cert_exporter.inventory import Computer

SCVMM_FRIENDLY_PREFIX = "SCVMM_CERTIFICATE_KEY_CONTAINER"


def scvmm_friendly_host(friendly_name: str) -> str | None:
    """The computer name an SCVMM friendly name carries, or None when it is not one.

    The prefix is matched as PowerShell's ``-like`` does, ignoring case; the name after it
    may be empty (a copy whose name VMM did not append).
    """
    if friendly_name[: len(SCVMM_FRIENDLY_PREFIX)].upper() != SCVMM_FRIENDLY_PREFIX:
        return None
    return friendly_name[len(SCVMM_FRIENDLY_PREFIX) :].strip()


@dataclass(frozen=True)
class StoredCertificate:
    """One SCVMM certificate as read from a store, parsed once."""

    info: CertificateInfo
    friendly_name: str
    has_private_key: bool


@dataclass(frozen=True)
class HostSnapshot:
    computer: Computer
    # None: the store was never read; () : read, and it holds no SCVMM certificate
    certificates: tuple[StoredCertificate, ...] | None
    trusted: bool | None  # None: not known or not applicable (see trust.trust_of)
    last_success: float | None  # unix time of the last refresh where every call succeeded
    last_ok: bool  # whether the last refresh's calls all succeeded
    last_duration: float | None
    last_error: str | None  # "<reason>: <detail>" of the last failure, for humans
    last_error_reason: str | None
    errors_total: Mapping[str, int] = field(default_factory=dict)
    # how it was read: "winrm" (its store) or "tls" (the certificate it presents, which
    # tells no store count and no trust verdict; see sources/tls_probe.py)
    method: str = "winrm"

    @property
    def current(self) -> StoredCertificate | None:
        """The certificate VMM would use: the one with the latest NotAfter."""
        if not self.certificates:
            return None
        return max(self.certificates, key=lambda c: c.info.not_after)

    @property
    def present(self) -> bool | None:
        return None if self.certificates is None else bool(self.certificates)


@dataclass(frozen=True)
class Snapshot:
    hosts: tuple[HostSnapshot, ...]
    completed_at: float  # unix time the refresh finished (0 before the first one)
    duration: float
    interval: float
    complete: bool  # False only for the empty placeholder served before the first refresh

    @staticmethod
    def empty(interval: float) -> Snapshot:
        return Snapshot(hosts=(), completed_at=0.0, duration=0.0, interval=interval, complete=False)
