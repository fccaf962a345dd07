"""Which computers to read: the configured ones plus what each VMM server says it manages.

FQDNs are compared case-insensitively (Windows names are), but the spelling first seen is
kept for labels. A VMM server whose discovery failed keeps its previous list: losing the
connection to VMM must not make its hosts vanish from /metrics and silently resolve alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property

from vmm_cert_exporter.config import Config, validate_fqdn
from vmm_cert_exporter.results import ManagedComputersResult

log = logging.getLogger(__name__)


def normalise_role(raw: str) -> str:
    """Map VMM's invariant ``Role`` (a flags enum as text, e.g. ``Library, VMMServerRole``)
    onto the four published roles, strongest flag first.

    Only the invariant enum names are read: ``RoleString`` is translated (``ホスト``) and is
    never a basis for a decision.
    """
    flags = {flag.strip().lower() for flag in raw.split(",")}
    if "vmmserverrole" in flags:
        return "vmm_server"
    if "host" in flags:
        return "hyperv_host"
    if "library" in flags:
        return "library_server"
    return "other"


def fqdn_key(fqdn: str) -> str:
    return fqdn.strip().rstrip(".").lower()


@dataclass(frozen=True)
class Computer:
    """One computer to read, with what VMM says about it (None for static-only entries).

    ``vmm_state`` is VMM's invariant ``State`` (``NotResponding``), which rules and decisions
    use; ``vmm_state_display`` is its translated ``StateString``, for people only.
    """

    fqdn: str
    role: str
    vmm_server: str | None = None  # the VMM server that manages it, if discovered
    vmm_state: str | None = None
    is_vmm_server: bool = False
    vmm_state_display: str | None = None

    @property
    def key(self) -> str:
        return fqdn_key(self.fqdn)

    @property
    def vmm_state_text(self) -> str:
        """VMM's state for a person: the display text in VMM's language, with the invariant
        name beside it when they differ (``応答なし (NotResponding)``); empty when unknown."""
        state = self.vmm_state or ""
        shown = self.vmm_state_display or ""
        if not shown or shown == state:
            return state
        return f"{shown} ({state})" if state else shown


@dataclass(frozen=True)
class VmmView:
    """What one VMM server told us at its last successful discovery.

    ``vmm_server`` is the configured name; ``reported_name`` is VMM's own ``FQDN`` (for a
    highly available VMM server, its clustered role name) and ``ha_nodes`` its cluster nodes.
    """

    vmm_server: str
    version: str
    high_availability: bool
    supports_update_certificate: bool | None
    managed: tuple[Computer, ...]
    reported_name: str = ""
    ha_nodes: tuple[str, ...] = ()

    @cached_property
    def _server_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """Every name of the VMM server: full names, and the bare names of nodes reported
        without a domain (matched against a computer's first label)."""
        names = {self.vmm_server, self.reported_name, *self.ha_nodes}
        names.update(c.fqdn for c in self.managed if c.role == "vmm_server")
        keys = {fqdn_key(n) for n in names if n.strip()}
        return frozenset(keys), frozenset(k for k in keys if "." not in k)

    def is_server_name(self, fqdn: str) -> bool:
        """Whether ``fqdn`` is one of the names the VMM server goes by.

        Renewal procedure 1 must never run on any of them, so a node VMM named without its
        domain counts for every computer of that short name (erring on the safe side).
        """
        full, bare = self._server_keys
        key = fqdn_key(fqdn)
        return key in full or key.split(".", 1)[0] in bare

    @property
    def is_highly_available(self) -> bool:
        return self.high_availability or bool(self.ha_nodes)


def view_from_result(vmm_server: str, result: ManagedComputersResult) -> VmmView:
    """What VMM reported, minus names that are not FQDNs.

    Discovered names go into the WinRM endpoint URL (``{host}``) exactly as configured names
    do, so they pass the same check: a name with ``:`` or ``/`` could otherwise choose the
    port or path a credentialed request is sent to. Cluster nodes of a highly available VMM
    server are read as VMM servers even when VMM does not list them as managed computers.
    """
    managed: list[Computer] = []
    for mc in result.managed_computers:
        if not _valid(vmm_server, mc.fqdn):
            continue
        managed.append(
            Computer(
                fqdn=mc.fqdn,
                role=normalise_role(mc.role),
                vmm_server=vmm_server,
                vmm_state=mc.state,
                vmm_state_display=mc.state_display or None,
            )
        )
    listed = {c.key for c in managed}
    for node in result.ha_nodes:
        if fqdn_key(node) not in listed and "." in node.strip(".") and _valid(vmm_server, node):
            managed.append(Computer(fqdn=node, role="vmm_server", vmm_server=vmm_server))
            listed.add(fqdn_key(node))
    view = VmmView(
        vmm_server=vmm_server,
        version=result.vmm_version,
        high_availability=result.high_availability,
        supports_update_certificate=result.supports_update_certificate,
        managed=tuple(managed),
        reported_name=result.vmm_server,
        ha_nodes=result.ha_nodes,
    )
    return replace(
        view,
        managed=tuple(
            replace(c, role="vmm_server", is_vmm_server=True) if view.is_server_name(c.fqdn) else c
            for c in managed
        ),
    )


def _valid(vmm_server: str, fqdn: str) -> bool:
    try:
        validate_fqdn(fqdn)
    except ValueError as exc:
        log.warning(
            "skipping a computer VMM reported",
            extra={"vmm_server": vmm_server, "reason": "parse", "detail": str(exc)},
        )
        return False
    return True


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
            # a computer two VMM servers list belongs to the one it is a name of, if any
            if computer.key not in discovered or (
                computer.is_vmm_server and not discovered[computer.key].is_vmm_server
            ):
                discovered[computer.key] = computer

    for server in config.vmm_servers:
        seen = discovered.get(fqdn_key(server.host))
        entries[fqdn_key(server.host)] = Computer(
            fqdn=server.host,
            role="vmm_server",
            vmm_server=server.host,
            vmm_state=seen.vmm_state if seen else None,
            is_vmm_server=True,
            vmm_state_display=seen.vmm_state_display if seen else None,
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
            # whatever role the user gave it, a name of a VMM server stays one
            is_vmm_server=host.role == "vmm_server" or (seen is not None and seen.is_vmm_server),
            vmm_state_display=seen.vmm_state_display if seen else None,
        )
    for key, computer in discovered.items():
        entries.setdefault(key, computer)
    ordered = tuple(sorted(entries.values(), key=lambda c: c.key))
    return Inventory(computers=ordered, vmm_views=view_map)
