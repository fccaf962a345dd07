"""Where a computer's certificate facts come from: WinRM (the default) or its TLS listener.

Each source reads one computer at a time behind ``Source``. ``method: winrm``
(``sources/winrm.py``) reads the ``LocalMachine\\My`` store through the script contract, and
is also how the VMM server is asked what it manages and what its TrustedPeople holds.
``method: tls`` (``sources/tls_probe.py``) needs no credentials: it reads the certificate the
computer presents in a TLS handshake, which tells less (no store count, no trust verdict;
see docs/metrics.md).
"""

from __future__ import annotations

from typing import Final, Protocol

from vmm_cert_exporter.config import Config
from vmm_cert_exporter.inventory import Computer, fqdn_key
from vmm_cert_exporter.snapshot import StoredCertificate

WINRM: Final = "winrm"
TLS: Final = "tls"  # the values of config.METHODS


class Source(Protocol):
    """Reads the SCVMM certificates of one computer; thread-safe, one call per computer."""

    @property
    def operation(self) -> str:
        """What a read is called in failure logs (``collect-certificates``, ``tls-handshake``)."""
        ...

    def read(self, fqdn: str) -> tuple[StoredCertificate, ...]:
        """The computer's SCVMM certificates (``()`` when it has none); raises
        ``CollectError`` with the failure reason when it cannot tell."""
        ...


class MethodTable:
    """Which method reads which computer, from the configuration.

    In order: a configured VMM server is always read over WinRM (discovery and TrustedPeople
    need it); a static ``hosts[]`` entry uses its ``method``; a computer a VMM server reported
    uses that server's ``discovered_method``; anything else WinRM.
    """

    def __init__(self, config: Config) -> None:
        self._servers = {fqdn_key(s.host) for s in config.vmm_servers}
        self._static = {fqdn_key(h.host): h.method for h in config.hosts}
        self._discovered = {fqdn_key(s.host): s.discovered_method for s in config.vmm_servers}

    def of(self, computer: Computer) -> str:
        key = computer.key
        if key in self._servers:
            return WINRM
        if key in self._static:
            return self._static[key]
        if computer.vmm_server is not None:
            return self._discovered.get(fqdn_key(computer.vmm_server), WINRM)
        return WINRM

    @property
    def uses_tls(self) -> bool:
        return TLS in self._static.values() or TLS in self._discovered.values()
