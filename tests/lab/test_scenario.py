"""Scenario loading: the demo, YAML files, strict validation, generated fleets."""

from __future__ import annotations

import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from vmm_cert_lab.fleet.scenario import (
    ScenarioError,
    build_fleet,
    built_in_scenario_text,
    demo_scenario_text,
    load_fleet,
    load_scenario_file,
)

VMM = "vmm01.lab.example"
VMM03 = "vmm03.lab.example"


def minimal(**extra: object) -> dict[str, object]:
    return {
        "vmm_server": {"fqdn": VMM, "version": "2019 UR2", "added_years_ago": 1},
        "computers": [{"fqdn": "hv01.lab.example", "role": "hyperv_host", "added_year": 2024}],
        **extra,
    }


def not_after(fleet_describe: dict[str, object]) -> datetime:
    value = fleet_describe["not_after"]
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


def test_demo_scenario_shape() -> None:
    fleet = load_fleet()
    listing = fleet.list_computers()
    roles = Counter(c["role"] for c in listing)
    assert roles == {"vmm_server": 1, "hyperv_host": 41, "library_server": 1}
    assert all(c["fqdn"].endswith(".lab.example") for c in listing)
    assert fleet.vmm_server_fqdns() == [VMM]
    assert yaml.safe_load(demo_scenario_text())["name"] == "demo"


def test_scenario_file_and_absolute_years(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    fleet = load_fleet(str(path))
    assert not_after(fleet.describe("hv01.lab.example")) == datetime(2029, 1, 1, tzinfo=UTC)
    certs = fleet.describe("hv01.lab.example")["certificates"]
    scvmm = [c for c in certs if c["scvmm"]]
    assert [c["not_before"] for c in scvmm] == ["2024-01-01T00:00:00Z"]
    assert len(certs) > len(scvmm)  # noise in My


def test_listener_auth_policy_per_computer(tmp_path: Path) -> None:
    faults_spec = {"auth": ["negotiate", "kerberos"], "cbt_hardening": "strict"}
    data = minimal(
        computers=[{"fqdn": "hv01.lab.example", "role": "hyperv_host", "faults": faults_spec}]
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    faults = load_fleet(str(path)).faults("hv01.lab.example")
    assert faults.accepts("kerberos") and not faults.accepts("ntlm")
    assert faults.cbt_hardening == "strict"


def test_validity_per_version_and_clock_offset() -> None:
    fleet = build_fleet(
        {
            "clock_offset": "366d",
            "validity_years": 5,
            "validity_years_by_version": {2025: 10},
            "vmm_server": {"fqdn": VMM, "version": 2025, "added_years_ago": 0},
            "computers": [{"fqdn": "hv01.lab.example", "role": "hyperv_host"}],
        }
    )
    assert fleet.clock_info()["offset_seconds"] == 366 * 86400
    lab_year = fleet.now().year
    assert lab_year > datetime.now(UTC).year
    for fqdn in (VMM, "hv01.lab.example"):
        assert not_after(fleet.describe(fqdn)) == datetime(lab_year + 10, 1, 1, tzinfo=UTC)
    exact = build_fleet(minimal(validity_years_by_version={"2019 UR1": 10}))
    assert not_after(exact.describe("hv01.lab.example")).year == 2029  # UR2 is not UR1


def test_expires_in_is_midnight_utc_relative_to_the_lab_clock() -> None:
    data = minimal(clock_offset=-86400 * 3)
    data["computers"] = [{"fqdn": "hv01.lab.example", "role": "hyperv_host", "expires_in": "20d"}]
    fleet = build_fleet(data)
    expiry = not_after(fleet.describe("hv01.lab.example"))
    assert (expiry - fleet.now()).total_seconds() / 86400 == pytest.approx(19.5, abs=0.5)
    assert expiry.time().isoformat() == "00:00:00"


def test_accounts_and_run_as_accounts() -> None:
    fleet = build_fleet(
        minimal(
            accounts=[{"domain": "CORP", "username": "svc", "password": "pw"}],
            run_as_accounts=["RA1", "RA2"],
        )
    )
    assert [a.username for a in fleet.accounts()] == ["svc"]
    assert fleet.run_as_accounts() == ["RA1", "RA2"]


def _bad(**changes: object) -> dict[str, object]:
    data = minimal()
    for dotted, value in changes.items():
        target: dict[str, object] = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = target[key]
            if isinstance(node, list):
                node = node[0]
            assert isinstance(node, dict)
            target = node
        if value is DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        ([1, 2], "(top level)", "a mapping"),
        (_bad(colour="red"), "colour", "unknown field"),
        (_bad(vmm_server=DELETE), "vmm_server", "required"),
        (_bad(vmm_server__version="2012 R2"), "vmm_server.version", "a VMM version"),
        (_bad(vmm_server__version=DELETE), "vmm_server.version", "required"),
        (_bad(vmm_server__high_availability="yes"), "vmm_server.high_availability", "true or"),
        (_bad(vmm_server__role="hyperv_host"), "vmm_server.role", "unknown field"),
        (_bad(computers={"a": 1}), "computers", "a list"),
        (_bad(computers__fqdn="hv01"), "computers[0].fqdn", "fully qualified"),
        (_bad(computers__fqdn=DELETE), "computers[0].fqdn", "required"),
        (_bad(computers__role="toaster"), "computers[0].role", "hyperv_host, library_server"),
        (_bad(computers__role="vmm_server"), "computers[0].role", "hyperv_host"),
        (_bad(computers__role=DELETE), "computers[0].role", "required"),
        (_bad(computers__added_year="2023"), "computers[0].added_year", "an integer"),
        (_bad(computers__expires_in="20d"), "computers[0].expires_in", "only one of"),
        (
            _bad(computers__added_year=DELETE, computers__expires_in="soon"),
            "computers[0].expires_in",
            "a duration",
        ),
        (_bad(computers__certificate="lost"), "computers[0].certificate", "present, missing"),
        (_bad(computers__trusted=True), "computers[0].trusted", "match, mismatch"),
        (_bad(computers__faults={"on_fire": True}), "computers[0].faults.on_fire", "unknown fault"),
        (_bad(computers__faults={"latency": -1}), "computers[0].faults.latency", "seconds >= 0"),
        (
            _bad(computers__faults={"auth": ["kerberos", "digest"]}),
            "computers[0].faults.auth",
            "a list of basic, ntlm, kerberos, negotiate",
        ),
        (
            _bad(computers__faults={"cbt_hardening": "high"}),
            "computers[0].faults.cbt_hardening",
            "none, relaxed, strict",
        ),
        (_bad(computers__state=""), "computers[0].state", "one of Responding, NotResponding"),
        (_bad(computers__state="Not Responding"), "computers[0].state", "AccessDenied"),
        (_bad(computers__noise=1), "computers[0].noise", "true or false"),
        (_bad(validity_years=0), "validity_years", "an integer from 1"),
        (_bad(validity_years_by_version={"2030": 10}), "validity_years_by_version.2030", "VMM"),
        (_bad(accounts=[]), "accounts", "non-empty list"),
        (_bad(accounts=[{"domain": "LAB", "username": "u"}]), "accounts[0].password", "required"),
        (_bad(run_as_accounts="VMM Host Admins"), "run_as_accounts", "non-empty list"),
        (_bad(clock_offset="later"), "clock_offset", "a duration"),
        (
            _bad(computers=[{"fqdn": VMM.upper(), "role": "hyperv_host"}]),
            "computers[0].fqdn",
            "unique FQDN",
        ),
    ],
)
def test_bad_scenarios_name_file_path_and_expectation(
    tmp_path: Path, data: object, path: str, expected: str
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {path}: expected"), message
    assert expected in message


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_fleet(str(tmp_path / "absent.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text(textwrap.dedent("a: [1,\n"), encoding="utf-8")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_fleet(str(broken))
    with pytest.raises(ScenarioError, match="--hosts"):
        load_fleet(str(broken), hosts=3)


def test_generated_fleet_mix_and_determinism() -> None:
    fleet = load_fleet(hosts=5000, seed=7)
    listing = fleet.list_computers()
    roles = Counter(c["role"] for c in listing)
    assert roles["vmm_server"] == 1
    assert roles["library_server"] == 150
    assert roles["hyperv_host"] == 4850
    assert sum(1 for c in listing if c["scvmm_certificates"] == 0) == 50  # missing
    assert sum(1 for c in listing if c["scvmm_certificates"] == 2) == 50  # duplicate
    states = Counter(c["state"] for c in listing)
    assert states["AccessDenied"] == 100  # missing + mismatch
    expiry_years = Counter(c["not_after"][:4] for c in listing if c["not_after"])
    assert len(expiry_years) >= 5  # cohorts: one expiry day per year added

    again = load_fleet(hosts=5000, seed=7).list_computers()
    assert [(c["fqdn"], c["not_after"]) for c in again] == [
        (c["fqdn"], c["not_after"]) for c in listing
    ]
    other = load_fleet(hosts=5000, seed=8).list_computers()
    assert [c["not_after"] for c in other] != [c["not_after"] for c in listing]


def test_generated_fleet_small_sizes() -> None:
    assert len(load_fleet(hosts=0).list_computers()) == 1
    assert Counter(c["role"] for c in load_fleet(hosts=3).list_computers())["hyperv_host"] == 3
    with pytest.raises(ValueError):
        load_fleet(hosts=-1)


def test_ha_scenario_shape() -> None:
    fleet = load_fleet("ha")
    roles = Counter(c["role"] for c in fleet.list_computers())
    assert roles == {"vmm_server": 5, "hyperv_host": 8, "library_server": 1}
    assert fleet.vmm_server_fqdns() == ["vmm-ha.lab.example", "vmm-old.lab.example", VMM03]
    assert fleet.vmm_config_names() == [
        "vmm-ha.lab.example",
        "vmm-old.lab.example",
        "scvmm.lab.example",
    ]
    assert fleet.has_computer("VMM-HA.lab.example") and fleet.has_computer("scvmm.lab.example")
    assert fleet.locale == "en-US"
    assert yaml.safe_load(built_in_scenario_text("ha"))["name"] == "ha"


def several(**changes: object) -> dict[str, object]:
    """Two VMM servers in the ``vmm_servers`` form: an HA one and an aliased one."""
    ha: dict[str, object] = {
        "fqdn": "vmm-ha.lab.example",
        "version": "2022",
        "nodes": [{"fqdn": "n1.lab.example"}, {"fqdn": "n2.lab.example", "expires_in": "9d"}],
        "computers": [{"fqdn": "hv01.lab.example", "role": "hyperv_host"}],
    }
    aliased: dict[str, object] = {
        "fqdn": VMM03,
        "version": "2019 UR2",
        "aliases": ["scvmm.lab.example"],
        "config_name": "scvmm.lab.example",
    }
    servers = [ha, aliased]
    for dotted, value in changes.items():
        index, key = dotted.split("__")
        target = servers[int(index[1:])]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return {"vmm_servers": servers}


def test_several_vmm_servers(tmp_path: Path) -> None:
    path = tmp_path / "several.yaml"
    path.write_text(yaml.safe_dump(several()), encoding="utf-8")
    fleet = load_fleet(str(path))
    listing = {c["fqdn"]: c for c in fleet.list_computers()}
    assert [c["managed_by"] for c in listing.values()] == [
        "vmm-ha.lab.example", "vmm-ha.lab.example", "vmm-ha.lab.example", VMM03,
    ]  # fmt: skip
    assert not_after(listing["n2.lab.example"]) < not_after(listing["n1.lab.example"])
    assert fleet.describe("vmm-ha.lab.example")["fqdn"] == "n1.lab.example"  # the active node
    assert fleet.vmm_config_names() == ["vmm-ha.lab.example", "scvmm.lab.example"]
    added = fleet.add_computer({"fqdn": "hv02.lab.example", "role": "hyperv_host",
                                "vmm_server": "scvmm.lab.example"})  # fmt: skip
    assert added["managed_by"] == VMM03
    with pytest.raises(ValueError, match="not a VMM server"):
        fleet.add_computer({"fqdn": "hv03.lab.example", "role": "hyperv_host",
                            "vmm_server": "hv01.lab.example"})  # fmt: skip
    with pytest.raises(ValueError, match="duplicate"):
        fleet.add_computer({"fqdn": "SCVMM.lab.example", "role": "hyperv_host"})


def test_old_single_vmm_server_form_with_high_availability() -> None:
    fleet = build_fleet(minimal(vmm_server={"fqdn": VMM, "version": "2019",
                                            "high_availability": True}))  # fmt: skip
    assert fleet.describe(VMM)["vmm"]["nodes"] == [VMM]
    assert fleet.vmm_config_names() == [VMM]


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        ({**several(), "vmm_server": {}}, "vmm_servers", "either vmm_server or vmm_servers"),
        ({**several(), "computers": []}, "computers", "vmm_servers[i].computers"),
        ({"vmm_servers": []}, "vmm_servers", "a non-empty list"),
        (several(v0__nodes=[{"fqdn": "n1.lab.example"}]), "vmm_servers[0].nodes", "two"),
        (several(v0__nodes="n1"), "vmm_servers[0].nodes", "at least two cluster nodes"),
        (several(v0__expires_in="3d"), "vmm_servers[0].expires_in", "on a node"),
        (several(v0__high_availability=False), "vmm_servers[0].high_availability", "true"),
        (
            several(
                v0__nodes=[
                    {"fqdn": "n1.lab.example", "role": "hyperv_host"},
                    {"fqdn": "n2.lab.example"},
                ]
            ),
            "vmm_servers[0].nodes[0].role",
            "unknown field",
        ),
        (several(v0__version=DELETE), "vmm_servers[0].version", "required"),
        (several(v0__fqdn=DELETE), "vmm_servers[0].fqdn", "required"),
        (several(v1__aliases="scvmm"), "vmm_servers[1].aliases", "a list of DNS names"),
        (several(v1__aliases=["scvmm"]), "vmm_servers[1].aliases[0]", "fully qualified"),
        (several(v1__config_name="other.lab.example"), "vmm_servers[1].config_name", "names"),
        (
            several(v1__aliases=["N1.lab.example"], v1__config_name=DELETE),
            "vmm_servers[1].aliases[0]",
            "unique FQDN",
        ),
        (
            several(v1__computers=[{"fqdn": "vmm-ha.lab.example", "role": "hyperv_host"}]),
            "vmm_servers[1].computers[0].fqdn",
            "role name or alias",
        ),
        (several(v1__computers={"a": 1}), "vmm_servers[1].computers", "a list of computers"),
        (several(v1__colour="red"), "vmm_servers[1].colour", "unknown field"),
        ({**several(), "locale": "de-DE"}, "locale", "en-US, ja-JP"),
    ],
)
def test_bad_several_vmm_servers(tmp_path: Path, data: object, path: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario_file(file)
    message = str(caught.value)
    assert message.startswith(f"{file}: {path}: expected"), message
    assert expected in message
