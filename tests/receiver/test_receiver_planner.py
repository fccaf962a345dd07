"""The procedure decision, pure: every name of the VMM server, highly available or not, with
and without Update-SCVMMCertificate; the Run As verdict; intake on an inventory built by the
exporter's own code (no WinRM here: the lab tests are in test_receiver_runbook.py and
test_receiver_ha.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmm_cert_exporter.config import Config, loads_config
from vmm_cert_exporter.inventory import Computer, Inventory, VmmView, build_inventory, fqdn_key
from vmm_cert_exporter.inventory import view_from_result as view_of
from vmm_cert_exporter.receiver import planner, runbook
from vmm_cert_exporter.receiver.intake import Decision, decide
from vmm_cert_exporter.receiver.journal import Journal
from vmm_cert_exporter.receiver.runbook import HostState, StepFailed
from vmm_cert_exporter.results import ManagedComputer, ManagedComputersResult
from vmm_cert_lab.receiver_testing import alert, webhook_alert

C = ".corp.example"
ROLLUP = "apply the update rollup (VMM 2016 UR10, 2019 UR2, 2022 RTM or later)"

# A single VMM server configured under an alias: VMM calls itself VMM01 (the case it was
# registered with) and lists itself with its default library role.
SINGLE_CONFIGURED = f"vmm-alias{C}"
SINGLE_NAMES = (SINGLE_CONFIGURED, f"VMM01{C}", f"vmm01{C}")
# A highly available one, configured by its clustered role name; VMM lists the active node
# and not the passive one, which only ha_nodes names.
HA_CONFIGURED = f"vmmha{C}"
HA_NAMES = (HA_CONFIGURED, f"node1{C}", f"NODE2{C}")


def mc(fqdn: str, role: str, state: str = "Responding", display: str = "") -> ManagedComputer:
    return ManagedComputer(
        fqdn=fqdn,
        role=role,
        state=state,
        agent_version="10.22.1287.0",
        role_display="",
        state_display=display or state,
    )


def single(supports: bool | None) -> VmmView:
    return view_of(
        SINGLE_CONFIGURED,
        ManagedComputersResult(
            vmm_server=f"VMM01{C}",
            vmm_version="10.19.2591.0",
            high_availability=False,
            supports_update_certificate=supports,
            managed_computers=(
                mc(f"VMM01{C}", "Library, VMMServerRole"),
                mc(f"hv01{C}", "Host"),
                mc(f"lib01{C}", "Library"),
            ),
        ),
    )


def highly_available(supports: bool | None) -> VmmView:
    return view_of(
        HA_CONFIGURED,
        ManagedComputersResult(
            vmm_server=HA_CONFIGURED,
            vmm_version="10.19.2391.0",
            high_availability=True,
            supports_update_certificate=supports,
            managed_computers=(mc(f"node1{C}", "VMMServerRole"), mc(f"hv02{C}", "Host")),
            ha_nodes=(f"node1{C}", f"node2{C}"),
        ),
    )


def as_a_host(fqdn: str, vmm_server: str) -> Computer:
    """What a stale or mistaken inventory could say: the name is a plain host."""
    return Computer(fqdn=fqdn, role="hyperv_host", vmm_server=vmm_server)


# --------------------------------------------------------------------------------------------
# choose_procedure: the view decides, whatever the computer entry claims


@pytest.mark.parametrize("name", SINGLE_NAMES)
def test_every_name_of_a_single_vmm_server_gets_procedure_2(name: str) -> None:
    view = single(True)
    procedure, why = planner.choose_procedure(as_a_host(name, SINGLE_CONFIGURED), view)
    assert procedure == planner.UPDATE_CERTIFICATE, why
    assert "procedure 2" in why


@pytest.mark.parametrize("name", HA_NAMES)
def test_every_name_of_an_ha_vmm_server_gets_procedure_2(name: str) -> None:
    view = highly_available(True)
    procedure, why = planner.choose_procedure(as_a_host(name, HA_CONFIGURED), view)
    assert procedure == planner.UPDATE_CERTIFICATE, why


@pytest.mark.parametrize("supports", [False, None])
@pytest.mark.parametrize("name", HA_NAMES)
def test_ha_vmm_server_without_the_cmdlet_is_refused(name: str, supports: bool | None) -> None:
    view = highly_available(supports)
    for computer in (as_a_host(name, HA_CONFIGURED), _listed(view, name)):
        procedure, why = planner.choose_procedure(computer, view)
        assert procedure is None
        assert ROLLUP in why and planner.NO_PROCEDURE_HA in why
        assert HA_CONFIGURED in why


@pytest.mark.parametrize("supports", [False, None])
@pytest.mark.parametrize("name", SINGLE_NAMES)
def test_single_vmm_server_without_the_cmdlet_uses_procedure_1_on_itself(
    name: str, supports: bool | None
) -> None:
    procedure, why = planner.choose_procedure(as_a_host(name, SINGLE_CONFIGURED), single(supports))
    assert procedure == planner.REMOVE_REGISTER
    assert "procedure 1 on itself" in why


@pytest.mark.parametrize("view", [single(True), single(False), highly_available(False)])
def test_hosts_and_library_servers_get_procedure_1(view: VmmView) -> None:
    for computer in view.managed:
        if not computer.is_vmm_server:
            assert planner.choose_procedure(computer, view)[0] == planner.REMOVE_REGISTER


def test_without_a_view_a_vmm_server_is_never_planned_procedure_1() -> None:
    computer = Computer(f"vmm01{C}", "vmm_server", f"vmm01{C}", is_vmm_server=True)
    procedure, why = planner.choose_procedure(computer, None)
    assert procedure == planner.UPDATE_CERTIFICATE
    assert "decided again at preflight" in why


def test_a_passive_node_vmm_does_not_list_is_still_the_vmm_server() -> None:
    view = highly_available(False)
    node = _listed(view, f"node2{C}")
    assert node.is_vmm_server and node.role == "vmm_server"
    assert planner.choose_procedure(node, view)[0] is None


def _listed(view: VmmView, name: str) -> Computer:
    return next(
        (c for c in view.managed if c.key == fqdn_key(name)),
        Computer(name, "vmm_server", view.vmm_server, is_vmm_server=True),
    )


# --------------------------------------------------------------------------------------------
# renewal_target: the view of the VMM server a name belongs to, and its role for policy


def test_a_vmm_server_managed_by_another_is_renewed_through_its_own() -> None:
    # VMM "other" manages the VMM01 computer as a Hyper-V host: it is still VMM01's server
    other = view_of(
        f"other{C}",
        ManagedComputersResult(
            vmm_server=f"other{C}",
            vmm_version="10.22.1287.0",
            high_availability=False,
            supports_update_certificate=True,
            managed_computers=(mc(f"other{C}", "VMMServerRole"), mc(f"vmm01{C}", "Host")),
        ),
    )
    views = {fqdn_key(v.vmm_server): v for v in (other, single(False))}
    listed_by_other = next(c for c in other.managed if c.key == f"vmm01{C}")
    assert not listed_by_other.is_vmm_server
    target = planner.renewal_target(listed_by_other, views)
    assert target.vmm_server == SINGLE_CONFIGURED
    assert target.computer.role == "vmm_server" and target.computer.is_vmm_server
    assert target.procedure == planner.REMOVE_REGISTER  # VMM01's own: single, no cmdlet
    assert "procedure 1 on itself" in target.why


# --------------------------------------------------------------------------------------------
# intake on an inventory built by the exporter's code


CONFIG = f"""\
winrm:
  transport: basic
  username: svc
  password_file: pw
  allow_unencrypted_basic: true
vmm_servers:
  - host: {SINGLE_CONFIGURED}
  - host: {HA_CONFIGURED}
hosts:
  - host: node1{C}
    role: hyperv_host
receiver:
  run_as_account: VMM Host Admins
  bearer_token_file: token
  journal: renewals.sqlite
  allow_roles: [vmm_server, hyperv_host, library_server]
"""


_FINGERPRINTS = itertools.count(1)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    for name, value in (("pw", "p"), ("token", "t0ken-for-tests")):
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o600)
    return loads_config(CONFIG, file="r.yml", base_dir=tmp_path, environ={})


@pytest.fixture
def journal(config: Config) -> Iterator[Journal]:
    assert config.receiver is not None
    journal = Journal(config.receiver.journal)
    yield journal
    journal.close()


def intake_one(config: Config, journal: Journal, inventory: Inventory, host: str) -> Decision:
    """A new firing alert for ``host`` (a fingerprint of its own)."""
    assert config.receiver is not None
    return decide(
        webhook_alert(alert(host, fingerprint=f"{next(_FINGERPRINTS):016x}")),
        config=config.receiver,
        inventory=inventory,
        journal=journal,
        now=0.0,
    )


@pytest.mark.parametrize("supports", [True, False, None])
def test_intake_decides_for_every_name_of_the_vmm_servers(
    config: Config, journal: Journal, supports: bool | None
) -> None:
    inventory = build_inventory(config, (single(supports), highly_available(supports)))
    # node1 is configured as a Hyper-V host by mistake: it is a VMM node all the same
    for name in (*SINGLE_NAMES[:2], *HA_NAMES):
        decision = intake_one(config, journal, inventory, name)
        job = journal.get(decision.job_id) if decision.job_id else None
        if name in HA_NAMES and not supports:
            assert decision.outcome == "rejected", (name, decision)
            assert ROLLUP in decision.reason
            continue
        assert decision.outcome == "created", (name, decision)
        assert job is not None and job.is_vmm_server and job.role == "vmm_server"
        expected = SINGLE_CONFIGURED if name in SINGLE_NAMES else HA_CONFIGURED
        assert job.vmm_server == expected
        if supports:
            assert job.procedure == planner.UPDATE_CERTIFICATE, (name, decision)
        else:
            assert job.procedure == planner.REMOVE_REGISTER, (name, decision)
            assert "on itself" in decision.reason
    # hosts of both get procedure 1
    for host in (f"hv01{C}", f"hv02{C}"):
        decision = intake_one(config, journal, inventory, host)
        assert decision.outcome == "created"
        job = journal.get(decision.job_id) if decision.job_id else None
        assert job is not None and job.procedure == planner.REMOVE_REGISTER


def test_allow_roles_sees_every_name_of_the_vmm_server_as_the_vmm_server(
    config: Config, journal: Journal, tmp_path: Path
) -> None:
    narrowed = loads_config(
        CONFIG.replace(
            "allow_roles: [vmm_server, hyperv_host, library_server]", "allow_roles: [hyperv_host]"
        ),
        file="r.yml",
        base_dir=tmp_path,
        environ={},
    )
    inventory = build_inventory(narrowed, (single(True), highly_available(True)))
    decision = intake_one(narrowed, journal, inventory, f"node1{C}")  # configured hyperv_host
    assert decision.outcome == "rejected"
    assert "role vmm_server is not in allow_roles" in decision.reason
    assert intake_one(narrowed, journal, inventory, f"hv02{C}").outcome == "created"


# --------------------------------------------------------------------------------------------
# The Run As verdict, the last guard before a script, the state shown to people


def test_run_as_problem_names_the_count() -> None:
    assert planner.run_as_problem("VMM Host Admins", 1) is None
    missing = planner.run_as_problem("VMM*", 0)
    assert missing is not None
    assert missing.startswith("Run As account 'VMM*' not found: 0 accounts have exactly")
    ambiguous = planner.run_as_problem("VMM Host Admins", 2)
    assert ambiguous is not None
    assert ambiguous.startswith(
        "Run As account 'VMM Host Admins' is ambiguous: 2 accounts have exactly that name"
    )


def test_plan_steps_never_renders_procedure_1_for_an_ha_vmm_server() -> None:
    view = highly_available(False)
    state = HostState(
        host=f"node2{C}",
        computer=_listed(view, f"node2{C}"),
        view=view,
        certificates=(),
        trusted=None,
        trusted_thumbprints=(),
    )
    with pytest.raises(StepFailed) as raised:
        runbook.plan_steps(state, planner.REMOVE_REGISTER, "VMM Host Admins")
    assert raised.value.permanent and ROLLUP in raised.value.reason
    assert [s.name for s in runbook.plan_steps(state, planner.UPDATE_CERTIFICATE, "x")] == [
        planner.STEP_UPDATE
    ]


def test_vmm_state_shows_the_invariant_name_and_vmm_text_beside_it() -> None:
    computer = Computer(f"hv01{C}", "hyperv_host", vmm_state="NotResponding")
    assert runbook.vmm_state_text(computer) == "NotResponding"
    japanese = Computer(
        f"hv01{C}", "hyperv_host", vmm_state="NotResponding", vmm_state_display="応答なし"
    )
    assert runbook.vmm_state_text(japanese) == "NotResponding (応答なし)"
    assert runbook.vmm_state_text(Computer(f"hv01{C}", "hyperv_host")) == "unknown"
