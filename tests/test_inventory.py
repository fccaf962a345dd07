"""Inventory rules that no lab scenario exercises: hostile names, roles, the server's names."""

from __future__ import annotations

import pytest

from vmm_cert_exporter.config import loads_config
from vmm_cert_exporter.inventory import (
    Computer,
    build_inventory,
    normalise_role,
    view_from_result,
)
from vmm_cert_exporter.results import ManagedComputer, ManagedComputersResult

VMM = "vmm01.corp.example"


def _result(
    *computers: ManagedComputer,
    reported: str = VMM,
    ha_nodes: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
) -> ManagedComputersResult:
    return ManagedComputersResult(
        vmm_server=reported,
        vmm_version="10.19.2591.0",
        high_availability=bool(ha_nodes),
        supports_update_certificate=True,
        managed_computers=computers
        + tuple(ManagedComputer(n, "Host", "Responding", "1.0") for n in names),
        ha_nodes=ha_nodes,
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
    view = view_from_result(VMM, _result(names=("hv01.corp.example", *hostile)))
    assert [c.fqdn for c in view.managed] == ["hv01.corp.example"]


@pytest.mark.parametrize(
    ("raw", "role"),
    [
        # [string]$_.Role as real VMM servers print it (vmm-as-it-answers.md)
        ("Library, VMMServerRole", "vmm_server"),
        ("VMMServerRole", "vmm_server"),
        ("VMMServerRole, Library", "vmm_server"),
        ("Host", "hyperv_host"),
        ("Host, Library", "hyperv_host"),
        ("Library", "library_server"),
        (" library ", "library_server"),
        ("PXEServer", "other"),
        ("None", "other"),
        ("", "other"),
        # display strings are translated and never decide: not even the English ones
        ("Library, VMM Server", "library_server"),
        ("VMM Server", "other"),
        ("ホスト", "other"),
        ("ライブラリ, VMM サーバー", "other"),
        # a flag's name is matched whole, never inside another word
        ("VMHostGroup", "other"),
    ],
)
def test_roles_are_read_as_flags_of_the_invariant_enum(raw: str, role: str) -> None:
    assert normalise_role(raw) == role


def test_a_vmm_server_listing_itself_with_its_library_role_is_the_vmm_server() -> None:
    server = ManagedComputer("VMM01.corp.example", "Library, VMMServerRole", "Responding", "")
    lib = ManagedComputer("lib01.corp.example", "Library", "Responding", "")
    view = view_from_result(
        "vmm-alias.corp.example", _result(server, lib, names=("hv01.corp.example",))
    )
    by_name = {c.fqdn: c for c in view.managed}
    # VMM's spelling is kept for display; decisions compare case-insensitively
    assert by_name["VMM01.corp.example"].role == "vmm_server"
    assert by_name["VMM01.corp.example"].is_vmm_server
    assert by_name["lib01.corp.example"].role == "library_server"
    assert not by_name["lib01.corp.example"].is_vmm_server
    assert not by_name["hv01.corp.example"].is_vmm_server
    # the configured alias, VMM's own FQDN and the self-listed computer are all the server
    for name in ("vmm-alias.corp.example", "vmm01.corp.example", "VMM01.CORP.EXAMPLE."):
        assert view.is_server_name(name), name
    assert not view.is_server_name("vmm011.corp.example")
    assert not view.is_server_name("lib01.corp.example")


def test_every_ha_node_and_the_role_name_are_the_vmm_server() -> None:
    # the passive node is not in VMM's list at all; the active one is, without its VMM role
    active = ManagedComputer("vmmnode01.corp.example", "Host", "Responding", "")
    view = view_from_result(
        "vmm-ha.corp.example",
        _result(
            active,
            reported="vmm-ha.corp.example",
            ha_nodes=("vmmnode01.corp.example", "VMMNODE02.corp.example"),
            names=("hv01.corp.example",),
        ),
    )
    assert view.is_highly_available
    by_name = {c.fqdn: c for c in view.managed}
    assert set(by_name) == {
        "vmmnode01.corp.example",
        "VMMNODE02.corp.example",
        "hv01.corp.example",
    }
    for node in ("vmmnode01.corp.example", "VMMNODE02.corp.example"):
        assert by_name[node].is_vmm_server and by_name[node].role == "vmm_server", node
    assert view.is_server_name("vmm-ha.corp.example")
    assert not view.is_server_name("hv01.corp.example")


def test_a_node_named_without_its_domain_errs_on_the_safe_side() -> None:
    view = view_from_result(VMM, _result(ha_nodes=("VMMNODE03",), names=("hv01.corp.example",)))
    # a bare name never becomes a computer to read (it is not an FQDN) ...
    assert [c.fqdn for c in view.managed] == ["hv01.corp.example"]
    # ... but any computer of that name is treated as the VMM server
    assert view.is_server_name("vmmnode03.corp.example")
    assert view.is_server_name("vmmnode03.other.example")
    assert not view.is_server_name("vmmnode033.corp.example")


def test_state_and_role_decide_on_invariant_values_and_keep_the_display_text() -> None:
    host = ManagedComputer("hv01.corp.example", "Host", "NotResponding", "", "ホスト", "応答なし")
    (computer,) = view_from_result(VMM, _result(host)).managed
    assert (computer.role, computer.vmm_state, computer.vmm_state_display) == (
        "hyperv_host",
        "NotResponding",
        "応答なし",
    )


def test_a_static_host_that_vmm_names_as_its_server_stays_the_server() -> None:
    config = loads_config(
        "vmm_servers:\n  - host: vmm-alias.corp.example\n"
        "hosts:\n  - host: vmm01.corp.example\n    role: hyperv_host\n"
        "winrm:\n  username: svc\n  password_env: VMMCERT_TEST_PW\n",
        environ={"VMMCERT_TEST_PW": "x"},
    )
    server = ManagedComputer("vmm01.corp.example", "Library, VMMServerRole", "Responding", "")
    view = view_from_result("vmm-alias.corp.example", _result(server))
    inventory = build_inventory(config, [view])
    computer = inventory.find("VMM01.corp.example")
    assert computer is not None
    assert computer.role == "hyperv_host"  # the user's label stays
    assert computer.is_vmm_server  # but renewal treats it as the VMM server
    alias = inventory.find("vmm-alias.corp.example")
    assert alias is not None and alias.is_vmm_server


@pytest.mark.parametrize(
    ("state", "display", "text"),
    [
        ("NotResponding", "応答なし", "応答なし (NotResponding)"),
        ("Responding", "Responding", "Responding"),
        ("NotResponding", None, "NotResponding"),
        (None, None, ""),
    ],
)
def test_people_read_the_display_text_beside_the_invariant_state(
    state: str | None, display: str | None, text: str
) -> None:
    computer = Computer("hv01.corp.example", "hyperv_host", VMM, state, False, display)
    assert computer.vmm_state_text == text


def test_a_vmm_server_another_vmm_lists_as_a_host_stays_a_vmm_server() -> None:
    config = loads_config(
        "vmm_servers:\n  - host: vmm01.corp.example\n  - host: vmm02.corp.example\n"
        "winrm:\n  username: svc\n  password_env: VMMCERT_TEST_PW\n",
        environ={"VMMCERT_TEST_PW": "x"},
    )
    # vmm02 manages vmm01 as a host; vmm01 lists itself with its VMM role
    other = view_from_result("vmm02.corp.example", _result(names=("vmmnode9.corp.example",)))
    own = view_from_result(
        VMM, _result(ManagedComputer("vmmnode9.corp.example", "VMMServerRole", "Responding", ""))
    )
    for views in ([other, own], [own, other]):
        computer = build_inventory(config, views).find("vmmnode9.corp.example")
        assert computer is not None
        assert (computer.role, computer.is_vmm_server, computer.vmm_server) == (
            "vmm_server",
            True,
            VMM,
        )
