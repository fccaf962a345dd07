"""Where a computer's certificate facts come from: WinRM (the default) or its TLS listener.

``method: winrm`` reads the ``LocalMachine\\My`` store through the script contract
(``collection.py`` + ``remoting.py``). ``method: tls`` (``sources/tls.py``) needs no
credentials: it reads the certificate the computer presents in a TLS handshake, which tells
less (no store count, no trust verdict; see docs/metrics.md).
"""

from __future__ import annotations

from typing import Final

from vmm_cert_exporter.config import Config
from vmm_cert_exporter.inventory import Computer, fqdn_key

WINRM: Final = "winrm"
TLS: Final = "tls"  # the values of config.METHODS


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
