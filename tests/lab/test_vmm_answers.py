"""The lab answers as recorded VMM servers do (../shared/domain/vmm-as-it-answers.md):
invariant Role/State with translated displays (en-US, ja-JP), every name a VMM server goes by
(HA role name, nodes, aliases), ConstrainedLanguage hosts, and exact Run As selection.

Driven through the script contract on the model, and once through real pywinrm."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import winrm
from cryptography import x509
from cryptography.x509.oid import NameOID

from vmm_cert_lab.fleet.interfaces import Execution, Faults
from vmm_cert_lab.fleet.model import Fleet
from vmm_cert_lab.fleet.powershell import contract_script
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.fleet.scenario import ScenarioError, build_fleet, lab_host, load_fleet

PREFIX = "SCVMM_CERTIFICATE_KEY_CONTAINER"
HA, HA_ACTIVE, HA_PASSIVE = lab_host("vmm-ha"), lab_host("vmmha-n1"), lab_host("vmmha-n2")
OLD, OLD_ACTIVE, OLD_PASSIVE = lab_host("vmm-old"), lab_host("vmmold-n1"), lab_host("vmmold-n2")
ALIASED, ALIAS = lab_host("vmm03"), lab_host("scvmm")
MIXED = lab_host("HV-Mixed01")
CLM = lab_host("hv-clm01")
RUN_AS = "VMM Host Admins"
VMM_OPERATIONS = [
    ("list-managed-computers", {}),
    ("list-trusted-certificates", {}),
    ("find-run-as-account", {"run_as_account": RUN_AS}),
    ("register-managed-computer", {"computer": lab_host("hv-ha01"), "run_as_account": RUN_AS}),
    ("update-vmm-certificate", {"vmm_server": HA}),
]
EVERY_OPERATION = [
    *VMM_OPERATIONS,
    ("collect-certificates", {}),
    ("remove-certificates", {"thumbprints": ["AB" * 20]}),
]
LANGUAGE_MODE_ANSWER = (
    b'{"schema":1,"status":"LanguageMode","language_mode":"ConstrainedLanguage"}\r\n'
)


def run(fleet: Fleet, name: str, operation: str, params: Any = None) -> tuple[Execution, Any]:
    execution = fleet.run_powershell(name, contract_script(operation, params))
    doc = json.loads(execution.stdout.decode("utf-8")) if execution.stdout else None
    return execution, doc


def ok(fleet: Fleet, name: str, operation: str, params: Any = None) -> Any:
    execution, doc = run(fleet, name, operation, params)
    assert (execution.exit_code, execution.stderr) == (0, b""), execution.stderr
    return doc


def managed(fleet: Fleet, name: str) -> dict[str, dict[str, Any]]:
    doc = ok(fleet, name, "list-managed-computers")
    return {m["fqdn"]: m for m in doc["managed_computers"]}


def scvmm_cert(fleet: Fleet, name: str) -> tuple[dict[str, Any], x509.Certificate]:
    [entry] = ok(fleet, name, "collect-certificates")["certificates"]
    return entry, x509.load_der_x509_certificate(base64.b64decode(entry["der_base64"]))


def days_left(fleet: Fleet, name: str) -> float:
    _, cert = scvmm_cert(fleet, name)
    return (cert.not_valid_after_utc - fleet.now()).total_seconds() / 86400


def stderr_text(execution: Execution) -> str:
    session = winrm.Session("http://127.0.0.1:1/wsman", auth=("u", "p"))
    return str(session._clean_error_msg(execution.stderr).decode("utf-8"))


@pytest.fixture
def ha() -> Fleet:
    return load_fleet("ha")


# --- roles, states and their display strings -----------------------------------------------


def test_japanese_vmm_translates_display_strings_only() -> None:
    fleet = load_fleet("demo", locale="ja-JP")
    listed = managed(fleet, lab_host("vmm01"))
    pairs = {(m["role"], m["role_display"]) for m in listed.values()}
    assert pairs == {
        ("Library, VMMServerRole", "ライブラリ, VMM サーバー"),
        ("Host", "ホスト"),
        ("Library", "ライブラリ"),
    }
    states = {(m["state"], m["state_display"]) for m in listed.values()}
    assert states == {
        ("Responding", "稼働中"),
        ("NotResponding", "応答なし"),
        ("AccessDenied", "アクセス拒否"),  # no recording shows this one (unverified)
    }
    assert listed[lab_host("vmm01")]["role_display"] == "ライブラリ, VMM サーバー"
    ha_nodes = managed(load_fleet("ha", locale="ja-JP"), HA)
    assert (ha_nodes[HA_ACTIVE]["role"], ha_nodes[HA_ACTIVE]["role_display"]) == (
        "VMMServerRole",
        "VMM サーバー",
    )


@pytest.mark.parametrize("scenario", ["demo", "ha"])
def test_invariant_fields_do_not_change_with_the_locale(scenario: str) -> None:
    names = {"demo": [lab_host("vmm01")], "ha": [HA, OLD, ALIAS]}[scenario]
    for name in names:
        english = ok(load_fleet(scenario), name, "list-managed-computers")
        japanese = ok(load_fleet(scenario, locale="ja-JP"), name, "list-managed-computers")

        def invariant(doc: dict[str, Any]) -> dict[str, Any]:
            computers = [
                {k: v for k, v in m.items() if not k.endswith("_display")}
                for m in doc["managed_computers"]
            ]
            return {**doc, "managed_computers": computers}

        assert invariant(english) == invariant(japanese)
        assert english != japanese  # the display strings did change


def test_locale_from_the_scenario_the_argument_wins_and_bad_ones_are_refused() -> None:
    data = {
        "locale": "ja-JP",
        "vmm_server": {"fqdn": lab_host("vmm01"), "version": "2022"},
        "computers": [{"fqdn": lab_host("hv01"), "role": "hyperv_host"}],
    }
    japanese = build_fleet(data)
    assert japanese.locale == "ja-JP"
    assert managed(japanese, lab_host("vmm01"))[lab_host("hv01")]["state_display"] == "稼働中"
    english = build_fleet(data, locale="en-US")
    assert managed(english, lab_host("vmm01"))[lab_host("hv01")]["state_display"] == "Responding"
    assert load_fleet("demo", locale="JA-jp").locale == "ja-JP"  # culture names ignore case
    assert load_fleet("demo").locale == "en-US"
    with pytest.raises(ScenarioError, match=r"scenario: locale: expected one of en-US, ja-JP"):
        build_fleet({**data, "locale": "fr-FR"})
    with pytest.raises(ScenarioError, match=r"--locale: expected a locale"):
        load_fleet("demo", locale="fr-FR")
    japanese.set_locale("en-US")
    assert managed(japanese, lab_host("vmm01"))[lab_host("hv01")]["role_display"] == "Host"


def test_control_api_speaks_the_same_roles_and_states(ha: Fleet) -> None:
    ha.set_locale("ja-JP")
    listed = managed(ha, HA)
    for summary in ha.list_computers():
        if summary["managed_by"] != HA:
            continue
        vmm_view = listed[summary["fqdn"]]
        assert (summary["vmm_role"], summary["role_display"]) == (
            vmm_view["role"],
            vmm_view["role_display"],
        )
        assert (summary["state"], summary["state_display"]) == (
            vmm_view["state"],
            vmm_view["state_display"],
        )
    described = ha.describe(HA)  # the role name reaches the active node
    assert described["fqdn"] == HA_ACTIVE
    assert described["vmm"]["nodes"] == [HA_ACTIVE, HA_PASSIVE]
    assert described["vmm"]["active_node"] == HA_ACTIVE
    assert ha.describe(ALIAS)["vmm"]["aliases"] == [ALIAS]


# --- the ha scenario: every name a VMM server goes by --------------------------------------


def test_ha_role_name_reaches_the_active_node(ha: Fleet) -> None:
    doc = ok(ha, HA, "list-managed-computers")
    assert doc["vmm_server"] == HA
    assert doc["computer"] == HA_ACTIVE
    assert doc["high_availability"] is True
    assert doc["ha_nodes"] == [HA_ACTIVE, HA_PASSIVE]
    nodes = [m for m in doc["managed_computers"] if "VMMServerRole" in m["role"]]
    assert [m["fqdn"] for m in nodes] == [HA_ACTIVE, HA_PASSIVE]
    assert ok(ha, HA, "collect-certificates")["computer"] == HA_ACTIVE
    assert ok(ha, HA, "list-trusted-certificates")["vmm_server"] == HA_ACTIVE
    assert ok(ha, HA_ACTIVE, "list-managed-computers") == doc


@pytest.mark.parametrize(("operation", "params"), VMM_OPERATIONS)
@pytest.mark.parametrize("passive", [HA_PASSIVE, OLD_PASSIVE.upper()])
def test_passive_node_refuses_vmm_operations(
    ha: Fleet, passive: str, operation: str, params: dict[str, Any]
) -> None:
    before = ha.list_computers()
    execution, _ = run(ha, passive, operation, params)
    assert (execution.exit_code, execution.stdout) == (1, b"")
    text = stderr_text(execution)
    if operation == "update-vmm-certificate" and passive.lower() == OLD_PASSIVE:
        assert "The term 'Update-SCVMMCertificate' is not recognized" in text
    else:
        assert "Virtual Machine Manager service (SCVMMService) is not running" in text
        cmdlet = "Update-SCVMMCertificate" if operation == "update-vmm-certificate" else "Get-"
        assert text.startswith(cmdlet)
    assert ha.list_computers() == before


def test_collect_certificates_answers_on_every_name(ha: Fleet) -> None:
    names = [c["fqdn"] for c in ha.list_computers()] + [HA, OLD, ALIAS]
    for name in names:
        if name == CLM:
            continue  # it answers its language mode (below)
        doc = ok(ha, name, "collect-certificates")
        assert doc["certificates"], name
        assert doc["computer"] == ha.describe(name)["fqdn"]


@pytest.mark.parametrize("vmm_server", [HA, HA_ACTIVE, HA_PASSIVE.upper(), "localhost"])
@pytest.mark.parametrize("sent_to", [HA, HA_ACTIVE])
def test_update_on_an_ha_vmm_renews_every_node(ha: Fleet, sent_to: str, vmm_server: str) -> None:
    hosts_before = ok(ha, lab_host("hv-ha01"), "collect-certificates")
    old = {node: scvmm_cert(ha, node)[0]["thumbprint"] for node in (HA_ACTIVE, HA_PASSIVE)}
    result = ok(ha, sent_to, "update-vmm-certificate", {"vmm_server": vmm_server})
    assert result == {"schema": 1, "status": "Completed", "error": None}
    year = ha.now().year
    for node in (HA_ACTIVE, HA_PASSIVE):
        entry, cert = scvmm_cert(ha, node)
        assert entry["thumbprint"] != old[node]
        assert cert.not_valid_after_utc == datetime(year + 5, 1, 1, tzinfo=UTC)
        assert entry["friendly_name"] == PREFIX + node
    assert ok(ha, lab_host("hv-ha01"), "collect-certificates") == hosts_before
    assert scvmm_cert(ha, OLD_ACTIVE)[0]["thumbprint"]  # the other HA VMM is untouched
    assert days_left(ha, OLD_ACTIVE) < 30


def test_update_with_another_vmm_s_name_fails(ha: Fleet) -> None:
    execution, doc = run(ha, HA, "update-vmm-certificate", {"vmm_server": ALIASED})
    assert (execution.exit_code, doc["status"]) == (1, "Failed")
    assert ALIASED in doc["error"]


def test_ha_update_follows_the_trusted_people_copies() -> None:
    fleet = build_fleet(
        {
            "vmm_server": {
                "fqdn": HA,
                "version": "2022",
                "trusted_self_copy": True,
                "nodes": [{"fqdn": HA_ACTIVE}, {"fqdn": HA_PASSIVE}],
            }
        }
    )
    ok(fleet, HA, "update-vmm-certificate", {"vmm_server": HA})
    copies = ok(fleet, HA, "list-trusted-certificates")["certificates"]
    for node in (HA_ACTIVE, HA_PASSIVE):
        [copy] = [c for c in copies if c["dns_names"] == [node]]
        assert copy["thumbprint"] == scvmm_cert(fleet, node)[0]["thumbprint"]
        assert copy["friendly_name"] == PREFIX + node
    assert {m["state"] for m in managed(fleet, HA).values()} == {"Responding"}


@pytest.mark.parametrize(
    ("vmm", "node"),
    [(HA, HA_ACTIVE), (HA, HA_PASSIVE.upper()), (OLD, OLD_ACTIVE), (OLD, OLD_PASSIVE)],
)
def test_procedure_1_is_refused_for_every_node(ha: Fleet, vmm: str, node: str) -> None:
    before = scvmm_cert(ha, node)[0]
    params = {"computer": node, "run_as_account": RUN_AS}
    execution, doc = run(ha, vmm, "register-managed-computer", params)
    assert (execution.exit_code, doc["status"]) == (1, "Failed")
    assert "highly available VMM management server" in doc["error"]
    assert scvmm_cert(ha, node)[0] == before


def test_a_role_name_or_alias_is_no_managed_computer(ha: Fleet) -> None:
    for vmm, name in ((HA, HA), (ALIAS, ALIAS)):
        params = {"computer": name, "run_as_account": RUN_AS}
        execution, doc = run(ha, vmm, "register-managed-computer", params)
        assert execution.exit_code == 1
        assert doc["error"].startswith(f"Unable to find the managed computer {name}")


def test_old_ha_vmm_has_no_update_cmdlet_and_renewal_is_refused(ha: Fleet) -> None:
    doc = ok(ha, OLD, "list-managed-computers")
    assert (doc["vmm_release"], doc["supports_update_certificate"]) == ("2019 UR1", False)
    assert doc["ha_nodes"] == [OLD_ACTIVE, OLD_PASSIVE]
    execution, _ = run(ha, OLD, "update-vmm-certificate", {"vmm_server": OLD})
    assert execution.exit_code == 1
    assert "The term 'Update-SCVMMCertificate' is not recognized" in stderr_text(execution)
    before = scvmm_cert(ha, OLD_ACTIVE)[0]
    renewed = ha.renew(OLD_ACTIVE)  # the control API's runbook
    assert (renewed["procedure"], renewed["status"], renewed["removed"]) == (1, "Failed", [])
    assert scvmm_cert(ha, OLD_ACTIVE)[0] == before
    host = ha.renew(lab_host("hv-old02"))  # its hosts renew as usual
    assert (host["procedure"], host["status"]) == (1, "Completed")


def test_aliased_vmm_answers_with_its_real_fqdn(ha: Fleet) -> None:
    doc = ok(ha, ALIAS, "list-managed-computers")
    assert (doc["vmm_server"], doc["computer"], doc["ha_nodes"]) == (ALIASED, ALIASED, [])
    assert doc["high_availability"] is False
    itself = {m["fqdn"]: m for m in doc["managed_computers"]}[ALIASED]
    assert itself["role"] == "Library, VMMServerRole"
    assert ok(ha, ALIAS, "collect-certificates")["computer"] == ALIASED
    old = scvmm_cert(ha, ALIASED)[0]["thumbprint"]
    assert ok(ha, ALIAS, "update-vmm-certificate", {"vmm_server": ALIAS})["status"] == "Completed"
    assert scvmm_cert(ha, ALIASED)[0]["thumbprint"] != old
    assert ha.vmm_server_fqdns() == [HA, OLD, ALIASED]
    assert ha.vmm_config_names() == [HA, OLD, ALIAS]


def test_fqdn_case_is_kept_as_registered(ha: Fleet) -> None:
    assert MIXED in managed(ha, HA)
    entry, cert = scvmm_cert(ha, MIXED.lower())
    assert ok(ha, MIXED.lower(), "collect-certificates")["computer"] == MIXED
    assert entry["friendly_name"] == PREFIX + MIXED
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == MIXED
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [MIXED]
    copies = ok(ha, HA, "list-trusted-certificates")["certificates"]
    [copy] = [c for c in copies if c["dns_names"] == [MIXED]]
    assert copy["friendly_name"] == PREFIX + MIXED
    # renewed by procedure 1 under a lower-case name, it keeps VMM's spelling
    ok(ha, MIXED.lower(), "remove-certificates", {"thumbprints": [entry["thumbprint"]]})
    params = {"computer": MIXED.lower(), "run_as_account": RUN_AS}
    assert ok(ha, HA, "register-managed-computer", params)["status"] == "Completed"
    renewed, cert = scvmm_cert(ha, MIXED)
    assert renewed["friendly_name"] == PREFIX + MIXED
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == MIXED
    assert managed(ha, HA)[MIXED]["state"] == "Responding"


def test_what_expires_in_the_ha_scenario(ha: Fleet) -> None:
    soon = {
        HA_ACTIVE: 20, HA_PASSIVE: 24, OLD_ACTIVE: 10, OLD_PASSIVE: 12, ALIASED: 26,
        MIXED: 15, lab_host("hv-old02"): 22, lab_host("hv-a02"): 9,
    }  # fmt: skip
    for computer in ha.list_computers():
        not_after = datetime.fromisoformat(computer["not_after"])
        left = (not_after - ha.now()).total_seconds() / 86400
        if computer["fqdn"] in soon:
            assert soon[computer["fqdn"]] - 1 <= left <= soon[computer["fqdn"]], computer
        else:
            assert left > 365, computer
        assert computer["state"] == "Responding"
    assert len(ha.list_computers()) == 14


# --- language mode -------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "params"), EVERY_OPERATION)
def test_constrained_language_host_answers_its_language_mode(
    ha: Fleet, operation: str, params: dict[str, Any]
) -> None:
    execution = ha.run_powershell(CLM, contract_script(operation, params))
    assert execution == Execution(stdout=LANGUAGE_MODE_ANSWER, stderr=b"", exit_code=3)


def test_language_mode_comes_before_everything_else(ha: Fleet) -> None:
    bad_params = contract_script("remove-certificates", {"thumbprints": "AB"})
    assert ha.run_powershell(CLM, bad_params).stdout == LANGUAGE_MODE_ANSWER
    ha.set_faults(CLM, Faults(language_mode="RestrictedLanguage", script_error=True))
    execution = ha.run_powershell(CLM, contract_script("collect-certificates"))
    assert execution.stdout == (
        b'{"schema":1,"status":"LanguageMode","language_mode":"RestrictedLanguage"}\r\n'
    )
    assert execution.exit_code == 3
    # a script that is not the product's fails as PowerShell fails it, whatever the mode
    other = ha.run_powershell(CLM, "Get-Date\r\n")
    assert other.exit_code == 1 and b"CommandNotFoundException" in other.stderr
    ha.set_faults(CLM, Faults())
    assert ok(ha, CLM, "collect-certificates")["computer"] == CLM
    # VMM's agent does not run PowerShell: the host stays Responding
    assert managed(ha, HA)[CLM]["state"] == "Responding"


def test_language_mode_fault_values_are_checked() -> None:
    assert Faults.from_dict({"language_mode": "ConstrainedLanguage"}).language_mode == (
        "ConstrainedLanguage"
    )
    with pytest.raises(ValueError, match="FullLanguage, ConstrainedLanguage"):
        Faults.from_dict({"language_mode": "Constrained"})
    with pytest.raises(ScenarioError, match=r"computers\[0\]\.faults\.language_mode: expected"):
        build_fleet(
            {
                "vmm_server": {"fqdn": lab_host("vmm01"), "version": "2022"},
                "computers": [
                    {
                        "fqdn": lab_host("hv01"),
                        "role": "hyperv_host",
                        "faults": {"language_mode": 3},
                    }
                ],
            }
        )


# --- Run As accounts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        (RUN_AS, 1),
        (RUN_AS.upper(), 1),  # -eq ignores case
        ("VMM Host Admins*", 0),  # no wildcards
        ("VMM Host", 0),
        ("VMM Host Admins (old)", 1),
        ("Twin", 2),
    ],
)
def test_find_run_as_account_counts_exact_names(name: str, matches: int) -> None:
    fleet = load_fleet("ha")
    accounts = [*fleet.run_as_accounts(), "Twin", "TWIN"]
    fleet = build_fleet(
        {"run_as_accounts": accounts, "vmm_server": {"fqdn": lab_host("vmm01"), "version": "2022"}}
    )
    assert ok(fleet, lab_host("vmm01"), "find-run-as-account", {"run_as_account": name}) == {
        "schema": 1,
        "run_as_account": name,
        "matches": matches,
    }


def test_ha_scenario_run_as_accounts_are_near_duplicates(ha: Fleet) -> None:
    names = ha.run_as_accounts()
    assert names[0] == RUN_AS
    assert sum(1 for n in names if n.startswith(RUN_AS)) >= 2  # a wildcard would be ambiguous
    assert ok(ha, HA, "find-run-as-account", {"run_as_account": RUN_AS})["matches"] == 1


@pytest.mark.parametrize(
    ("run_as", "found"), [("VMM Host Admins*", 0), ("VMM Host", 0), ("Twin", 2)]
)
def test_register_needs_exactly_one_run_as_account(run_as: str, found: int) -> None:
    fleet = build_fleet(
        {
            "run_as_accounts": [RUN_AS, "VMM Host Admins (old)", "Twin", "twin"],
            "vmm_server": {"fqdn": lab_host("vmm01"), "version": "2022"},
            "computers": [{"fqdn": lab_host("hv01"), "role": "hyperv_host", "trusted": "mismatch"}],
        }
    )
    params = {"computer": lab_host("hv01"), "run_as_account": run_as}
    execution, doc = run(fleet, lab_host("vmm01"), "register-managed-computer", params)
    assert execution.exit_code == 1
    assert doc == {
        "schema": 1,
        "status": "Failed",
        "error": f"expected exactly one Run As account named '{run_as}', found {found}",
    }
    assert (
        managed(fleet, lab_host("vmm01"))[lab_host("hv01")]["state"] == "AccessDenied"
    )  # untouched
    params["run_as_account"] = "vmm host admins"
    assert (
        ok(fleet, lab_host("vmm01"), "register-managed-computer", params)["status"] == "Completed"
    )
    assert managed(fleet, lab_host("vmm01"))[lab_host("hv01")]["state"] == "Responding"


@pytest.mark.parametrize("params", [{}, {"run_as_account": ""}, {"run_as_account": 5}])
def test_find_run_as_account_parameter_is_checked(ha: Fleet, params: dict[str, Any]) -> None:
    execution, _ = run(ha, HA, "find-run-as-account", params)
    assert execution.exit_code == 1 and b"RuntimeException" in execution.stderr


def test_find_run_as_account_on_a_plain_host_is_command_not_found(ha: Fleet) -> None:
    execution, _ = run(ha, lab_host("hv-ha01"), "find-run-as-account", {"run_as_account": RUN_AS})
    assert "The term 'Get-SCRunAsAccount' is not recognized" in stderr_text(execution)


# --- TrustedPeople -------------------------------------------------------------------------


def test_trusted_people_copies_carry_their_friendly_names() -> None:
    fleet = load_fleet("demo")
    entries = ok(fleet, lab_host("vmm01"), "list-trusted-certificates")["certificates"]
    copies = [e for e in entries if e["friendly_name"]]
    assert copies and all(e["friendly_name"] == PREFIX + e["dns_names"][0] for e in copies)
    assert all(e["has_private_key"] is False for e in entries)
    noise = sorted(e["dns_names"][0] for e in entries if not e["friendly_name"])
    assert noise == ["10.20.0.101", "10.20.0.102", "VMMWinPEAgentOSDBootstrap"]


# --- through pywinrm -----------------------------------------------------------------------


def test_ha_in_japanese_through_pywinrm(tmp_path: Path) -> None:
    with start_lab(scenario="ha", locale="ja-JP", state_dir=tmp_path) as lab:
        user, password = lab.username, lab.account.password

        def run_ps(name: str, operation: str, params: Any = None) -> winrm.Response:
            session = winrm.Session("127.0.0.1", auth=(user, password))
            session.protocol = winrm.protocol.Protocol(
                lab.endpoint(name), transport="ntlm", username=user, password=password
            )
            return session.run_ps(contract_script(operation, params))

        answer = run_ps(HA, "list-managed-computers")
        assert answer.status_code == 0, answer.std_err
        doc = json.loads(answer.std_out.decode("utf-8"))
        assert (doc["vmm_server"], doc["computer"]) == (HA, HA_ACTIVE)
        by_fqdn = {m["fqdn"]: m for m in doc["managed_computers"]}
        assert (by_fqdn[MIXED]["role"], by_fqdn[MIXED]["role_display"]) == ("Host", "ホスト")
        assert by_fqdn[MIXED]["state_display"] == "稼働中"
        passive = run_ps(HA_PASSIVE, "find-run-as-account", {"run_as_account": RUN_AS})
        assert passive.status_code == 1
        assert b"SCVMMService) is not running" in passive.std_err
        collected = run_ps(HA_PASSIVE, "collect-certificates")
        assert json.loads(collected.std_out)["computer"] == HA_PASSIVE
        clm = run_ps(CLM, "collect-certificates")
        assert (clm.status_code, clm.std_out, clm.std_err) == (3, LANGUAGE_MODE_ANSWER, b"")
        aliased = run_ps(ALIAS, "list-managed-computers")
        assert json.loads(aliased.std_out)["vmm_server"] == ALIASED
        assert lab.vmm_servers == [HA, OLD, ALIAS]
