"""Which computers to read: the configured ones plus what each VMM server says it manages.

FQDNs are compared case-insensitively (Windows names are), but the spelling first seen is
kept for labels. A VMM server whose discovery failed keeps its previous list: losing the
connection to VMM must not make its hosts vanish from /metrics and silently resolve alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from vmm_cert_exporter.config import Config, validate_fqdn
from vmm_cert_exporter.results import ManagedComputersResult

log = logging.getLogger(__name__)

ROLES = ("vmm_server", "hyperv_host", "library_server", "other")


def normalise_role(raw: str) -> str:
    """Map VMM's role strings (and our own names) onto the four published roles."""
    key = "".join(ch for ch in raw.lower() if ch.isalnum())
    if key in ("vmmserver", "managementserver", "vmmmanagementserver"):
        return "vmm_server"
    if "library" in key:
        return "library_server"
    if key in ("host", "hyperv", "hypervhost", "vmhost") or key.endswith("host"):
        return "hyperv_host"
    return "other"


def fqdn_key(fqdn: str) -> str:
    return fqdn.strip().rstrip(".").lower()


@dataclass(frozen=True)
class Computer:
    """One computer to read, with what VMM says about it (None for static-only entries)."""

    fqdn: str
    role: str
    vmm_server: str | None = None  # the VMM server that manages it, if discovered
    vmm_state: str | None = None
    is_vmm_server: bool = False

    @property
    def key(self) -> str:
        return fqdn_key(self.fqdn)


@dataclass(frozen=True)
class VmmView:
    """What one VMM server told us at its last successful discovery."""

    vmm_server: str
    version: str
    high_availability: bool
    supports_update_certificate: bool | None
    managed: tuple[Computer, ...]


def view_from_result(vmm_server: str, result: ManagedComputersResult) -> VmmView:
    """What VMM reported, minus names that are not FQDNs.

    Discovered names go into the WinRM endpoint URL (``{host}``) exactly as configured names
    do, so they pass the same check: a name with ``:`` or ``/`` could otherwise choose the
    port or path a credentialed request is sent to.
    """
    managed: list[Computer] = []
    for mc in result.managed_computers:
        try:
            validate_fqdn(mc.fqdn)
        except ValueError as exc:
            log.warning(
                "skipping a computer VMM reported",
                extra={"vmm_server": vmm_server, "reason": "parse", "detail": str(exc)},
            )
            continue
        managed.append(
            Computer(
                fqdn=mc.fqdn,
                role=normalise_role(mc.role),
                vmm_server=vmm_server,
                vmm_state=mc.state,
                is_vmm_server=fqdn_key(mc.fqdn) == fqdn_key(vmm_server),
            )
        )
    return VmmView(
        vmm_server=vmm_server,
        version=result.vmm_version,
        high_availability=result.high_availability,
        supports_update_certificate=result.supports_update_certificate,
        managed=tuple(managed),
    )


@dataclass(frozen=True)
class Inventory:
    computers: tuple[Computer, ...]
    vmm_views: Mapping[str, VmmView]  # by fqdn_key of the VMM server

    @cached_property
    def _by_key(self) -> dict[str, Computer]:
        return {c.key: c for c in self.computers}

    def find(self, fqdn: str) -> Computer | None:
        """Exact (case-insensitive) lookup; look-alike names never match."""
        return self._by_key.get(fqdn_key(fqdn))


def build_inventory(config: Config, views: Iterable[VmmView]) -> Inventory:
    """Merge, in order of authority: VMM servers, static hosts, then discovered computers.

    A static host's configured role wins over VMM's (the user said so); VMM contributes
    its state and the association used to check TrustedPeople.
    """
    entries: dict[str, Computer] = {}
    view_map = {fqdn_key(v.vmm_server): v for v in views}
    discovered: dict[str, Computer] = {}
    for view in view_map.values():
        for computer in view.managed:
            discovered.setdefault(computer.key, computer)

    for server in config.vmm_servers:
        seen = discovered.get(fqdn_key(server.host))
        entries[fqdn_key(server.host)] = Computer(
            fqdn=server.host,
            role="vmm_server",
            vmm_server=server.host,
            vmm_state=seen.vmm_state if seen else None,
            is_vmm_server=True,
        )
    for host in config.hosts:
        key = fqdn_key(host.host)
        if key in entries:
            continue
        seen = discovered.get(key)
        entries[key] = Computer(
            fqdn=host.host,
            role=host.role,
            vmm_server=seen.vmm_server if seen else None,
            vmm_state=seen.vmm_state if seen else None,
            is_vmm_server=host.role == "vmm_server",
        )
    for key, computer in discovered.items():
        entries.setdefault(key, computer)
    ordered = tuple(sorted(entries.values(), key=lambda c: c.key))
    return Inventory(computers=ordered, vmm_views=view_map)
