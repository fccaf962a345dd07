"""The lab's Windows + VMM model, driven only through the script contract (``run_powershell``)
and the control API, with real contract scripts built here: header + base64 JSON parameters."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import winrm
from cryptography import x509
from cryptography.x509.oid import NameOID

from vmm_cert_lab.fleet.interfaces import Execution, Faults
from vmm_cert_lab.fleet.model import Fleet, VmmVersion
from vmm_cert_lab.fleet.powershell import contract_script
from vmm_cert_lab.fleet.scenario import build_fleet, load_fleet

PREFIX = "SCVMM_CERTIFICATE_KEY_CONTAINER"
VMM = "vmm01.lab.example"
DAY = 86400.0


def run(fleet: Fleet, fqdn: str, operation: str, params: Any = None) -> tuple[Execution, Any]:
    execution = fleet.run_powershell(fqdn, contract_script(operation, params))
    assert execution.stdout.endswith(b"\r\n") or not execution.stdout
    doc = json.loads(execution.stdout.decode("utf-8")) if execution.stdout else None
    return execution, doc


def ok(fleet: Fleet, fqdn: str, operation: str, params: Any = None) -> Any:
    execution, doc = run(fleet, fqdn, operation, params)
    assert execution.exit_code == 0, execution.stderr
    assert execution.stderr == b""
    assert doc["schema"] == 1
    return doc


def pywinrm_error_text(stderr: bytes) -> str:
    """What pywinrm's run_ps makes of stderr (its own CLIXML decoder)."""
    session = winrm.Session("http://127.0.0.1:1/wsman", auth=("u", "p"))
    return str(session._clean_error_msg(stderr).decode("utf-8"))


def assert_clixml_error(execution: Execution, *needles: str) -> str:
    assert execution.exit_code == 1
    assert execution.stdout == b""
    assert execution.stderr.startswith(b"#< CLIXML\r\n")
    root = ET.fromstring(execution.stderr[len(b"#< CLIXML\r\n") :])
    assert root.tag == "{http://schemas.microsoft.com/powershell/2004/04}Objs"
    assert root.get("Version") == "1.1.0.1"
    errors = root.findall("{http://schemas.microsoft.com/powershell/2004/04}S")
    assert errors and all(e.get("S") == "Error" for e in errors)
    assert all((e.text or "").endswith("_x000D__x000A_") for e in errors)
    text = pywinrm_error_text(execution.stderr)
    assert "_x000D_" not in text and "<S" not in text
    for needle in needles:
        assert needle in text
    return text


def parse(entry: dict[str, Any]) -> x509.Certificate:
    der = base64.b64decode(entry["der_base64"], validate=True)
    assert entry["thumbprint"] == hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()
    return x509.load_der_x509_certificate(der)


def assert_scvmm_cert(cert: x509.Certificate, fqdn: str) -> None:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == fqdn
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # really self-signed: the signature verifies
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [fqdn]


def jan1(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=UTC)


def states(fleet: Fleet) -> dict[str, str]:
    doc = ok(fleet, VMM, "list-managed-computers")
    return {m["fqdn"]: m["state"] for m in doc["managed_computers"]}


def my_certs(fleet: Fleet, fqdn: str) -> list[dict[str, Any]]:
    certs: list[dict[str, Any]] = ok(fleet, fqdn, "collect-certificates")["certificates"]
    return certs


def trusted_copy(fleet: Fleet, fqdn: str) -> dict[str, Any] | None:
    entries = ok(fleet, VMM, "list-trusted-certificates")["certificates"]
    found = [e for e in entries if e["dns_names"] == [fqdn]]
    assert len(found) <= 1
    return found[0] if found else None


@pytest.fixture
def demo() -> Fleet:
    return load_fleet("demo")


def small(**vmm: Any) -> Fleet:
    """A two-computer fleet for the VMM-server variations."""
    server = {"fqdn": VMM, "version": "2019 UR2", "added_years_ago": 1, **vmm}
    return build_fleet(
        {"vmm_server": server, "computers": [
            {"fqdn": "hv01.lab.example", "role": "hyperv_host", "added_years_ago": 1}]},
        where="test",
    )  # fmt: skip


# --- collect-certificates ------------------------------------------------------------------


def test_healthy_host_has_one_real_self_signed_certificate(demo: Fleet) -> None:
    doc = ok(demo, "hv01.lab.example", "collect-certificates")
    assert doc["computer"] == "hv01.lab.example"
    [entry] = doc["certificates"]  # the noise in My (listener cert, WMSvc) is filtered out
    assert entry["store"] == "My"
    assert entry["friendly_name"] == PREFIX + "hv01.lab.example"
    assert entry["has_private_key"] is True
    cert = parse(entry)
    assert_scvmm_cert(cert, "hv01.lab.example")
    year = demo.now().year - 3  # added_years_ago: 3
    assert cert.not_valid_before_utc == jan1(year)
    assert cert.not_valid_after_utc == jan1(year + 5)


def test_fqdn_lookup_is_case_insensitive_and_keeps_case(demo: Fleet) -> None:
    doc = ok(demo, "HV02.Lab.Example", "collect-certificates")
    assert doc["computer"] == "hv02.lab.example"
    assert demo.has_computer("HV02.LAB.EXAMPLE")
    with pytest.raises(KeyError):
        demo.run_powershell("nope.lab.example", contract_script("collect-certificates"))


def days_left(entry: dict[str, Any], now: datetime) -> float:
    return (parse(entry).not_valid_after_utc - now).total_seconds() / DAY


@pytest.mark.parametrize(
    ("fqdn", "low", "high"),
    [
        (VMM, 24, 25),  # expires_in: 25d -> 00:00 UTC of that day
        ("hv31.lab.example", 19, 20),
        ("hv35.lab.example", 19, 20),
        ("hv36.lab.example", 4, 5),
        ("hv37.lab.example", -11, -10),
    ],
)
def test_expiries_are_placed_relative_to_the_lab_clock(
    demo: Fleet, fqdn: str, low: float, high: float
) -> None:
    [entry] = my_certs(demo, fqdn)
    cert = parse(entry)
    assert_scvmm_cert(cert, fqdn)
    assert low <= days_left(entry, demo.now()) <= high
    not_after = cert.not_valid_after_utc
    assert (not_after.hour, not_after.minute, not_after.second) == (0, 0, 0)
    assert cert.not_valid_before_utc == not_after.replace(year=not_after.year - 5)


def test_cohort_expires_on_the_same_day(demo: Fleet) -> None:
    days = {
        parse(my_certs(demo, f"hv{n}.lab.example")[0]).not_valid_after_utc for n in range(31, 36)
    }
    assert len(days) == 1


def test_every_demo_case(demo: Fleet) -> None:
    now = demo.now()
    expected = {
        VMM: "Responding",
        "hv01.lab.example": "Responding",
        "hv31.lab.example": "Responding",
        "hv36.lab.example": "Responding",
        "hv37.lab.example": "NotResponding",  # expired
        "hv38.lab.example": "AccessDenied",  # certificate deleted
        "hv39.lab.example": "AccessDenied",  # TrustedPeople mismatch
        "hv40.lab.example": "NotResponding",  # connection refused
        "hv41.lab.example": "Responding",  # duplicate: the newest is trusted
        "lib01.lab.example": "Responding",
    }
    seen = states(demo)
    assert len(seen) == 43  # the VMM server, hv01-hv41, lib01
    for fqdn, state in expected.items():
        assert seen[fqdn] == state, fqdn
    healthy = [f"hv{n:02d}.lab.example" for n in range(1, 31)]
    assert all(seen[f] == "Responding" for f in healthy)
    for fqdn in healthy:
        assert days_left(my_certs(demo, fqdn)[0], now) > 365
    assert my_certs(demo, "hv38.lab.example") == []
    assert len(my_certs(demo, "hv41.lab.example")) == 2
    # the unreachable host's fault is the transport's business: the model still answers
    assert demo.faults("hv40.lab.example").connection_refused is True
    assert len(my_certs(demo, "hv40.lab.example")) == 1


def test_duplicate_host_has_two_distinct_scvmm_certificates(demo: Fleet) -> None:
    entries = my_certs(demo, "hv41.lab.example")
    certs = [parse(e) for e in entries]
    assert len({e["thumbprint"] for e in entries}) == 2
    assert {e["friendly_name"] for e in entries} == {PREFIX + "hv41.lab.example"}
    for cert in certs:
        assert_scvmm_cert(cert, "hv41.lab.example")
    newest = max(entries, key=lambda e: parse(e).not_valid_after_utc)
    copy = trusted_copy(demo, "hv41.lab.example")
    assert copy is not None and copy["thumbprint"] == newest["thumbprint"]


# --- list-managed-computers / list-trusted-certificates ------------------------------------


def test_list_managed_computers(demo: Fleet) -> None:
    doc = ok(demo, VMM, "list-managed-computers")
    assert doc["vmm_server"] == VMM
    assert doc["vmm_version"] == "10.19.2591.0"
    assert doc["vmm_release"] == "2019 UR2"
    assert doc["high_availability"] is False
    assert doc["supports_update_certificate"] is True
    assert doc["ha_nodes"] == []
    assert doc["computer"] == VMM
    by_fqdn = {m["fqdn"]: m for m in doc["managed_computers"]}
    # the VMM server lists itself, with the library role VMM gives it by default
    assert by_fqdn[VMM] == {
        "fqdn": VMM,
        "role": "Library, VMMServerRole",
        "state": "Responding",
        "role_display": "Library, VMM Server",
        "state_display": "Responding",
        "agent_version": "10.19.2591.0",
    }
    assert (by_fqdn["hv01.lab.example"]["role"], by_fqdn["hv01.lab.example"]["role_display"]) == (
        "Host",
        "Host",
    )
    assert by_fqdn["lib01.lab.example"]["role"] == "Library"
    assert by_fqdn["lib01.lab.example"]["role_display"] == "Library"
    displays = {m["state"]: m["state_display"] for m in doc["managed_computers"]}
    assert displays == {
        "Responding": "Responding",
        "NotResponding": "Not Responding",
        "AccessDenied": "Access Denied",
    }
    assert {m["agent_version"] for m in doc["managed_computers"]} == {"10.19.2591.0"}


def test_trusted_people_copies_and_noise(demo: Fleet) -> None:
    doc = ok(demo, VMM, "list-trusted-certificates")
    assert doc["vmm_server"] == VMM
    entries = doc["certificates"]
    assert {e["store"] for e in entries} == {"TrustedPeople"}
    assert all(e["has_private_key"] is False for e in entries)
    names = [e["dns_names"][0] for e in entries]
    assert "VMMWinPEAgentOSDBootstrap" in names
    assert any(n.startswith("10.") for n in names)
    assert VMM not in names  # no self-copy by default (unverified whether VMM keeps one)
    assert "hv38.lab.example" in names  # the copy of the deleted certificate is still there
    for entry in entries:
        parse(entry)  # every entry, noise included, is a real certificate
    host = my_certs(demo, "hv01.lab.example")[0]
    copy = trusted_copy(demo, "hv01.lab.example")
    assert copy is not None and copy["der_base64"] == host["der_base64"]
    mismatch = trusted_copy(demo, "hv39.lab.example")
    assert mismatch is not None
    assert mismatch["thumbprint"] != my_certs(demo, "hv39.lab.example")[0]["thumbprint"]
    assert_scvmm_cert(parse(mismatch), "hv39.lab.example")


@pytest.mark.parametrize(
    "operation",
    ["list-managed-computers", "list-trusted-certificates", "register-managed-computer"],
)
def test_vmm_operations_on_a_plain_host_fail_like_windows(demo: Fleet, operation: str) -> None:
    execution, _ = run(
        demo, "hv01.lab.example", operation, {"computer": "x", "run_as_account": "y"}
    )
    assert_clixml_error(
        execution,
        "The term 'Get-SCVMMManagedComputer' is not recognized as the name of a cmdlet",
        "CommandNotFoundException",
    )


# --- renewal: remove + register, update ----------------------------------------------------


def test_remove_then_register_gives_a_new_certificate_and_trusted_people_follows(
    demo: Fleet,
) -> None:
    host = "hv31.lab.example"
    [old] = my_certs(demo, host)
    doc = ok(demo, host, "remove-certificates", {"thumbprints": [old["thumbprint"].lower()]})
    assert doc == {"schema": 1, "computer": host, "removed": [old["thumbprint"]]}
    assert my_certs(demo, host) == []
    assert states(demo)[host] == "AccessDenied"

    params = {"computer": host, "run_as_account": "VMM Host Admins"}
    result = ok(demo, VMM, "register-managed-computer", params)
    assert result == {"schema": 1, "status": "Completed", "error": None}
    [new] = my_certs(demo, host)
    cert = parse(new)
    assert_scvmm_cert(cert, host)
    year = demo.now().year
    assert cert.not_valid_before_utc == jan1(year)
    assert cert.not_valid_after_utc == jan1(year + 5)
    assert new["thumbprint"] != old["thumbprint"]
    copy = trusted_copy(demo, host)
    assert copy is not None and copy["thumbprint"] == new["thumbprint"]
    assert states(demo)[host] == "Responding"


def test_register_reuses_a_valid_certificate_and_repairs_trust(demo: Fleet) -> None:
    host = "hv39.lab.example"
    [before] = my_certs(demo, host)
    params = {"computer": host.upper(), "run_as_account": "vmm host admins"}
    assert ok(demo, VMM, "register-managed-computer", params)["status"] == "Completed"
    assert my_certs(demo, host) == [before]
    copy = trusted_copy(demo, host)
    assert copy is not None and copy["thumbprint"] == before["thumbprint"]
    assert states(demo)[host] == "Responding"


def test_register_after_expiry_without_remove_leaves_the_expired_one(demo: Fleet) -> None:
    host = "hv37.lab.example"
    params = {"computer": host, "run_as_account": "VMM Host Admins"}
    assert ok(demo, VMM, "register-managed-computer", params)["status"] == "Completed"
    certs = my_certs(demo, host)
    assert len(certs) == 2  # the runbook removes first; verification would catch this
    assert states(demo)[host] == "Responding"


@pytest.mark.parametrize(
    ("computer", "run_as", "needle"),
    [
        ("hv40.lab.example", "VMM Host Admins", "cannot contact"),  # connection refused
        ("hv01.lab.example", "Domain Admins", "one Run As account named 'Domain Admins', found 0"),
        ("hv99.lab.example", "VMM Host Admins", "Unable to find the managed computer"),
    ],
)
def test_register_failures(demo: Fleet, computer: str, run_as: str, needle: str) -> None:
    before = states(demo)
    execution, doc = run(
        demo, VMM, "register-managed-computer", {"computer": computer, "run_as_account": run_as}
    )
    assert execution.exit_code == 1
    assert doc["status"] == "Failed" and needle in doc["error"]
    assert states(demo) == before


@pytest.mark.parametrize("fault", ["black_hole", "tls_error", "http_401", "receive_timeout"])
def test_register_fails_on_any_unreachable_fault(demo: Fleet, fault: str) -> None:
    demo.set_faults("hv01.lab.example", Faults.from_dict({fault: True}))
    params = {"computer": "hv01.lab.example", "run_as_account": "VMM Host Admins"}
    execution, doc = run(demo, VMM, "register-managed-computer", params)
    assert (execution.exit_code, doc["status"]) == (1, "Failed")


def test_register_of_a_ha_vmm_server_itself_fails_but_update_works() -> None:
    fleet = small(high_availability=True)
    params = {"computer": VMM, "run_as_account": "VMM Host Admins"}
    execution, doc = run(fleet, VMM, "register-managed-computer", params)
    assert execution.exit_code == 1 and "highly available" in doc["error"]
    assert ok(fleet, VMM, "update-vmm-certificate", {"vmm_server": VMM})["status"] == "Completed"
    hosts = {"computer": "hv01.lab.example", "run_as_account": "VMM Host Admins"}
    assert ok(fleet, VMM, "register-managed-computer", hosts)["status"] == "Completed"


def test_register_of_a_non_ha_vmm_server_itself_works(demo: Fleet) -> None:
    [old] = my_certs(demo, VMM)
    ok(demo, VMM, "remove-certificates", {"thumbprints": [old["thumbprint"]]})
    params = {"computer": VMM, "run_as_account": "VMM Host Admins"}
    assert ok(demo, VMM, "register-managed-computer", params)["status"] == "Completed"
    [new] = my_certs(demo, VMM)
    assert parse(new).not_valid_after_utc == jan1(demo.now().year + 5)
    assert trusted_copy(demo, VMM) is None  # no self-copy in this scenario


def test_update_vmm_certificate_renews_only_the_vmm_server(demo: Fleet) -> None:
    [old] = my_certs(demo, VMM)
    hosts_before = my_certs(demo, "hv01.lab.example")
    assert ok(demo, VMM, "update-vmm-certificate", {"vmm_server": VMM.upper()}) == {
        "schema": 1,
        "status": "Completed",
        "error": None,
    }
    [new] = my_certs(demo, VMM)
    assert new["thumbprint"] != old["thumbprint"]
    cert = parse(new)
    assert_scvmm_cert(cert, VMM)
    assert cert.not_valid_after_utc == jan1(demo.now().year + 5)
    assert my_certs(demo, "hv01.lab.example") == hosts_before
    execution, doc = run(demo, VMM, "update-vmm-certificate", {"vmm_server": "vmm02.lab.example"})
    assert execution.exit_code == 1 and doc["status"] == "Failed"


def test_update_vmm_certificate_follows_the_trusted_self_copy() -> None:
    fleet = small(trusted_self_copy=True)
    assert trusted_copy(fleet, VMM) is not None
    ok(fleet, VMM, "update-vmm-certificate", {"vmm_server": VMM})
    [new] = my_certs(fleet, VMM)
    copy = trusted_copy(fleet, VMM)
    assert copy is not None and copy["thumbprint"] == new["thumbprint"]
    assert states(fleet)[VMM] == "Responding"


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("2016 UR9", False),
        ("2016 UR10", True),
        ("2019", False),
        ("2019 UR1", False),
        ("2019 UR2", True),
        ("2019 UR6", True),
        ("2022", True),
        ("2025", True),
    ],
)
def test_update_vmm_certificate_only_where_it_exists(version: str, supported: bool) -> None:
    assert VmmVersion.parse(version).supports_update_certificate is supported
    fleet = small(version=version)
    listed = ok(fleet, VMM, "list-managed-computers")
    assert listed["supports_update_certificate"] is supported
    assert listed["vmm_release"] == version
    execution, doc = run(fleet, VMM, "update-vmm-certificate", {"vmm_server": VMM})
    if supported:
        assert execution.exit_code == 0 and doc["status"] == "Completed"
    else:
        assert_clixml_error(
            execution, "The term 'Update-SCVMMCertificate' is not recognized", "CommandNotFound"
        )


def test_remove_certificates_removes_exactly_the_named_ones(demo: Fleet) -> None:
    host = "hv41.lab.example"
    first, second = my_certs(demo, host)
    doc = ok(demo, host, "remove-certificates", {"thumbprints": [first["thumbprint"], "AB" * 20]})
    assert doc["removed"] == [first["thumbprint"]]
    assert my_certs(demo, host) == [second]
    assert ok(demo, host, "remove-certificates", {"thumbprints": []})["removed"] == []


# --- the contract's error paths ------------------------------------------------------------


def with_params_line(line: str) -> str:
    return f"# vmm-cert-exporter:collect-certificates/1\r\n{line}\r\nConvertFrom-Json\r\n"


@pytest.mark.parametrize(
    ("script", "needles"),
    [
        ("Get-ChildItem Cert:\\LocalMachine\\My\r\n", ["The term 'Get-ChildItem' is not"]),
        ("", ["ParserError"]),
        ("@@@ nonsense", ["Unexpected token '@@@'", "ParserError"]),
        ("#vmm-cert-exporter:collect-certificates/1\r\nfoo", ["The term 'foo' is not"]),
        (" # vmm-cert-exporter:collect-certificates/1\r\n", ["ParserError"]),
        (contract_script("collect-certificate"), ["unsupported operation 'collect-certificate/1'"]),
        (contract_script("collect-certificates", schema=2), ["unsupported operation"]),
        (with_params_line("$Params = 'not base64!'"), ["FromBase64String", "Base-64"]),
        (with_params_line("$Params = 'e30'"), ["FormatException"]),
        (with_params_line('$Params = "e30="'), ["Value cannot be null"]),
        (with_params_line("$Parameters = 'e30='"), ["Value cannot be null"]),
        ("# vmm-cert-exporter:collect-certificates/1", ["Value cannot be null"]),
        (with_params_line("$Params = 'bm90IGpzb24='"), ["ConvertFrom-Json : Invalid JSON"]),
        (with_params_line("$Params = '//79'"), ["Invalid JSON"]),  # not UTF-8
        (with_params_line("$Params = 'WzEsMl0='"), ["parameters must be a JSON object"]),
    ],
)
def test_scripts_outside_the_contract_fail_like_powershell(
    demo: Fleet, script: str, needles: list[str]
) -> None:
    assert_clixml_error(demo.run_powershell("hv01.lab.example", script), *needles)


@pytest.mark.parametrize(
    ("fqdn", "operation", "params"),
    [
        ("hv01.lab.example", "remove-certificates", {}),
        ("hv01.lab.example", "remove-certificates", {"thumbprints": "AB"}),
        (VMM, "register-managed-computer", {"computer": "hv01.lab.example"}),
        (VMM, "register-managed-computer", {"computer": 5, "run_as_account": "x"}),
        (VMM, "update-vmm-certificate", {}),
    ],
)
def test_bad_parameters_are_script_errors(
    demo: Fleet, fqdn: str, operation: str, params: dict[str, Any]
) -> None:
    execution, _ = run(demo, fqdn, operation, params)
    assert_clixml_error(execution, "RuntimeException")


def test_clixml_escapes_what_windows_escapes() -> None:
    from vmm_cert_lab.fleet.powershell import clixml_errors

    raw = clixml_errors(["a <b> & c_x0041_\tz"])
    assert b"&lt;b&gt; &amp;" in raw and b"_x005F_x0041_" in raw and b"_x0009_" in raw
    assert pywinrm_error_text(raw) == "a <b> & c_x005F_x0041__x0009_z"


# --- command faults ------------------------------------------------------------------------


def test_garbage_stdout_fault(demo: Fleet) -> None:
    demo.set_faults("hv01.lab.example", Faults(garbage_stdout=True))
    execution = demo.run_powershell("hv01.lab.example", contract_script("collect-certificates"))
    assert execution.exit_code == 0
    with pytest.raises(ValueError):
        json.loads(execution.stdout.decode("utf-8"))


def test_progress_only_stderr_fault(demo: Fleet) -> None:
    demo.set_faults("hv01.lab.example", Faults(progress_only_stderr=True))
    execution, doc = run(demo, "hv01.lab.example", "collect-certificates")
    assert execution.exit_code == 0
    assert len(doc["certificates"]) == 1
    assert execution.stderr.startswith(b"#< CLIXML\r\n")
    root = ET.fromstring(execution.stderr[11:])
    ns = "{http://schemas.microsoft.com/powershell/2004/04}"
    assert root.findall(f"{ns}S") == []
    assert [o.get("S") for o in root.findall(f"{ns}Obj")] == ["progress", "progress"]
    # pywinrm finds no error text in it and hands back the raw document
    assert pywinrm_error_text(execution.stderr).startswith("#< CLIXML")


def test_script_error_fault_fails_and_changes_nothing(demo: Fleet) -> None:
    host = "hv01.lab.example"
    [cert] = my_certs(demo, host)
    demo.set_faults(host, Faults(script_error=True))
    execution, _ = run(demo, host, "remove-certificates", {"thumbprints": [cert["thumbprint"]]})
    assert_clixml_error(execution, "Cannot find drive", "DriveNotFoundException")
    demo.set_faults(host, Faults())
    assert my_certs(demo, host) == [cert]


# --- clock ---------------------------------------------------------------------------------


def test_clock_offset_and_advance_change_states(demo: Fleet) -> None:
    info = demo.clock_info()
    assert info["offset_seconds"] == 0.0
    datetime.fromisoformat(info["now"])
    assert states(demo)["hv31.lab.example"] == "Responding"
    demo.set_clock(offset_seconds=None, advance_seconds=21 * DAY)
    assert demo.clock_info()["offset_seconds"] == 21 * DAY
    after = states(demo)
    assert {after[f"hv{n}.lab.example"] for n in range(31, 36)} == {"NotResponding"}
    assert after["hv36.lab.example"] == "NotResponding"
    assert after["hv01.lab.example"] == "Responding"
    demo.set_clock(offset_seconds=0, advance_seconds=None)
    assert states(demo)["hv31.lab.example"] == "Responding"
    demo.set_clock(offset_seconds=-30 * DAY, advance_seconds=18 * DAY)
    assert demo.clock_info()["offset_seconds"] == -12 * DAY
    assert states(demo)["hv37.lab.example"] == "Responding"  # before its expiry again
    with pytest.raises(ValueError):
        demo.set_clock(offset_seconds=float("nan"), advance_seconds=None)
    # a clock datetime could not hold is refused, not stored to fail every later read
    demo.set_clock(offset_seconds=0, advance_seconds=None)
    for offset, advance in ((1e15, None), (None, 3.2e10), (-3.2e10, None)):
        with pytest.raises(ValueError, match="1,000 years"):
            demo.set_clock(offset_seconds=offset, advance_seconds=advance)
    assert demo.clock_info()["offset_seconds"] == 0
    demo.list_computers()


def test_register_uses_the_lab_year(demo: Fleet) -> None:
    demo.set_clock(offset_seconds=400 * DAY, advance_seconds=None)
    host = "hv01.lab.example"
    [old] = my_certs(demo, host)
    ok(demo, host, "remove-certificates", {"thumbprints": [old["thumbprint"]]})
    ok(
        demo,
        VMM,
        "register-managed-computer",
        {"computer": host, "run_as_account": "VMM Host Admins"},
    )
    lab_year = (datetime.now(UTC) + timedelta(days=400)).year
    assert parse(my_certs(demo, host)[0]).not_valid_before_utc == jan1(lab_year)


# --- cmd.exe, control API, threads ---------------------------------------------------------


def test_run_command(demo: Fleet) -> None:
    assert demo.run_command("HV01.lab.example", "hostname", []).stdout == b"hv01\r\n"
    assert b"IPv4 Address" in demo.run_command("hv01.lab.example", "ipconfig", []).stdout
    unknown = demo.run_command("hv01.lab.example", "frobnicate", ["/x"])
    assert unknown.exit_code == 9009
    assert unknown.stderr.startswith(b"'frobnicate' is not recognized as an internal or external")
    encoded = base64.b64encode(contract_script("collect-certificates").encode("utf-16-le"))
    via_cmd = demo.run_command(
        "hv01.lab.example", "powershell", ["-encodedcommand", encoded.decode()]
    )
    assert json.loads(via_cmd.stdout)["computer"] == "hv01.lab.example"


def test_control_api(demo: Fleet) -> None:
    listing = {c["fqdn"]: c for c in demo.list_computers()}
    assert listing["hv38.lab.example"]["scvmm_certificates"] == 0
    assert listing["hv41.lab.example"]["scvmm_certificates"] == 2
    assert listing["hv37.lab.example"]["state"] == "NotResponding"
    assert demo.vmm_server_fqdns() == [VMM]
    assert demo.run_as_accounts() == ["VMM Host Admins"]
    account = demo.accounts()[0]
    assert (account.domain, account.username, account.password) == (
        "LAB", "svc-vmmcert", "lab-password"
    )  # fmt: skip

    described = demo.describe("hv39.lab.example")
    assert described["trusted"]["matches"] is False
    assert demo.describe(VMM)["vmm"]["release"] == "2019 UR2"

    added = demo.add_computer({"fqdn": "HV77.lab.example", "role": "hyperv_host"})
    assert added["state"] == "Responding"
    assert "HV77.lab.example" in states(demo)
    with pytest.raises(ValueError, match="duplicate"):
        demo.add_computer({"fqdn": "hv77.LAB.example", "role": "hyperv_host"})
    with pytest.raises(ValueError, match=r"computer\.role"):
        demo.add_computer({"fqdn": "hv78.lab.example", "role": "toaster"})
    demo.remove_computer("hv77.lab.example")
    assert "HV77.lab.example" not in states(demo)
    assert not demo.has_computer("hv77.lab.example")
    with pytest.raises(ValueError):
        demo.remove_computer(VMM)
    with pytest.raises(KeyError):
        demo.describe("hv77.lab.example")

    [cert] = my_certs(demo, "hv02.lab.example")
    assert demo.delete_certificates("hv02.lab.example") == [cert["thumbprint"]]
    assert states(demo)["hv02.lab.example"] == "AccessDenied"
    renewed = demo.renew("hv02.lab.example")
    assert (renewed["procedure"], renewed["status"]) == (1, "Completed")
    assert states(demo)["hv02.lab.example"] == "Responding"
    assert demo.renew(VMM)["procedure"] == 2
    assert demo.renew("hv40.lab.example")["status"] == "Failed"  # unreachable

    demo.set_trusted_mismatch("hv03.lab.example")
    assert states(demo)["hv03.lab.example"] == "AccessDenied"


def test_concurrent_calls_are_safe(demo: Fleet) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(1, 31):
                host = f"hv{i:02d}.lab.example"
                if (i + n) % 3 == 0:
                    demo.renew(host)
                my_certs(demo, host)
                states(demo)
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(states(demo)[f"hv{i:02d}.lab.example"] == "Responding" for i in range(1, 31))


def test_the_lists_of_one_computer(demo: Fleet) -> None:
    """``{"computer": FQDN}``: VMM's entry of that computer (any case, a final dot) beside
    the VMM server's own, and the TrustedPeople entries that name it; the rest unchanged."""
    whole = ok(demo, VMM, "list-managed-computers")
    one = ok(demo, VMM, "list-managed-computers", {"computer": "HV39.Lab.Example."})
    assert [m["fqdn"] for m in one["managed_computers"]] == [
        m["fqdn"]
        for m in whole["managed_computers"]
        if m["fqdn"] == "hv39.lab.example" or "VMMServerRole" in m["role"]
    ]
    assert len(one["managed_computers"]) == 2 < len(whole["managed_computers"])
    assert {k: v for k, v in one.items() if k != "managed_computers"} == {
        k: v for k, v in whole.items() if k != "managed_computers"
    }
    copies = ok(demo, VMM, "list-trusted-certificates", {"computer": "hv39.lab.example"})
    assert [c["thumbprint"] for c in copies["certificates"]] == [
        trusted_copy(demo, "hv39.lab.example")["thumbprint"]  # type: ignore[index]
    ]
    # a substring keeps more (a superset): the exporter decides on the whole rule
    many = ok(demo, VMM, "list-trusted-certificates", {"computer": "hv3"})["certificates"]
    assert len(many) > 1
    nothing = ok(demo, VMM, "list-trusted-certificates", {"computer": "nowhere.example"})
    assert nothing["certificates"] == []
