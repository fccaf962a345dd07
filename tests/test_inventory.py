"""Inventory rules that no lab scenario exercises: hostile names from discovery, roles."""

from __future__ import annotations

import pytest

from vmm_cert_exporter.inventory import normalise_role, view_from_result
from vmm_cert_exporter.results import ManagedComputer, ManagedComputersResult


def _result(*names: str) -> ManagedComputersResult:
    return ManagedComputersResult(
        vmm_server="vmm01.corp.example",
        vmm_version="10.19.2591.0",
        high_availability=False,
        supports_update_certificate=True,
        managed_computers=tuple(ManagedComputer(n, "Host", "Responding", "1.0") for n in names),
    )


def test_names_that_are_not_fqdns_never_reach_the_inventory() -> None:
    hostile = [
        "evil.example:8443",  # would choose the port of a credentialed request
        "evil.example/other/path",
        "evil.example@attacker.example",
        "hv01.corp.example?x=1",
        "10.0.0.1",
        "hv01",
        "hv01.corp.example\r\nHost: x",
    ]
    view = view_from_result("vmm01.corp.example", _result("hv01.corp.example", *hostile))
    assert [c.fqdn for c in view.managed] == ["hv01.corp.example"]


@pytest.mark.parametrize(
    ("raw", "role"),
    [
        ("VMM Server", "vmm_server"),
        ("VMMServer", "vmm_server"),
        ("Host", "hyperv_host"),
        ("Hyper-V Host", "hyperv_host"),
        ("Library Server", "library_server"),
        ("library_server", "library_server"),
        ("PXE Server", "other"),
        ("", "other"),
    ],
)
def test_roles_are_normalised(raw: str, role: str) -> None:
    assert normalise_role(raw) == role
