"""The product's own scripts against the lab, over real pywinrm: the contract end to end.

The lab parses the contract with its own code, so these tests catch a disagreement between
the two sides (and the renewal procedure the receiver relies on works on the wire).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from vmm_cert_exporter.certificate import parse_certificate
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_exporter.results import (
    parse_collect_certificates,
    parse_job_result,
    parse_managed_computers,
    parse_remove_result,
    parse_trusted_certificates,
)
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host

VMM = lab_host("vmm01")


@pytest.fixture()
def runner(lab: RunningLab, tmp_path: Path) -> WinRMRunner:
    return WinRMRunner(load_config(lab.write_config(tmp_path / "exporter.yml")).winrm)


def _certs(runner: WinRMRunner, host: str) -> list[tuple[str, dt.datetime, dt.datetime]]:
    out = runner.run(host, render_script("collect-certificates"))
    assert out.exit_code == 0, out.stderr
    result = parse_collect_certificates(out.stdout)
    assert result.computer.lower() == host.lower()
    infos = [parse_certificate(c.der) for c in result.certificates]
    return [(i.thumbprint, i.not_before, i.not_after) for i in infos]


def _trusted_thumbprints(runner: WinRMRunner, host: str) -> set[str]:
    out = runner.run(VMM, render_script("list-trusted-certificates"))
    assert out.exit_code == 0, out.stderr
    result = parse_trusted_certificates(out.stdout)
    return {
        c.thumbprint
        for c in result.certificates
        if host.lower() in (n.lower() for n in c.dns_names)
    }


def test_remove_and_register_gives_a_new_certificate_and_trustedpeople_follows(
    lab: RunningLab, runner: WinRMRunner
) -> None:
    host = lab_host("hv36")
    before = _certs(runner, host)
    assert len(before) == 1
    old_thumbprint = before[0][0]
    assert _trusted_thumbprints(runner, host) == {old_thumbprint}

    out = runner.run(host, render_script("remove-certificates", {"thumbprints": [old_thumbprint]}))
    assert out.exit_code == 0, out.stderr
    assert parse_remove_result(out.stdout).removed == (old_thumbprint,)
    assert _certs(runner, host) == []

    out = runner.run(
        VMM,
        render_script(
            "register-managed-computer", {"computer": host, "run_as_account": "VMM Host Admins"}
        ),
    )
    job = parse_job_result(out.stdout)
    assert (out.exit_code, job.status, job.error) == (0, "Completed", None)

    after = _certs(runner, host)
    assert len(after) == 1
    thumbprint, not_before, not_after = after[0]
    year = lab.model.now().year  # type: ignore[attr-defined]
    assert not_before == dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    assert not_after == dt.datetime(year + 5, 1, 1, tzinfo=dt.UTC)
    assert thumbprint != old_thumbprint
    assert _trusted_thumbprints(runner, host) == {thumbprint}


def test_register_fails_for_an_unknown_run_as_account(runner: WinRMRunner) -> None:
    out = runner.run(
        VMM,
        render_script(
            "register-managed-computer", {"computer": lab_host("hv36"), "run_as_account": "Nobody"}
        ),
    )
    job = parse_job_result(out.stdout)
    assert out.exit_code == 1 and job.status == "Failed" and job.error


def test_update_vmm_certificate_renews_the_server_itself(
    lab: RunningLab, runner: WinRMRunner
) -> None:
    before = _certs(runner, VMM)
    out = runner.run(VMM, render_script("update-vmm-certificate", {"vmm_server": VMM}))
    assert parse_job_result(out.stdout).status == "Completed", out.stderr
    after = _certs(runner, VMM)
    assert len(after) == 1 and after[0][0] != before[0][0]
    assert after[0][2].year == lab.model.now().year + 5  # type: ignore[attr-defined]


def test_list_managed_computers_matches_the_scenario(runner: WinRMRunner) -> None:
    out = runner.run(VMM, render_script("list-managed-computers"))
    result = parse_managed_computers(out.stdout)
    assert result.vmm_server.lower() == VMM
    assert result.supports_update_certificate is True
    assert result.high_availability is False
    names = {m.fqdn.lower() for m in result.managed_computers}
    assert len(names) == 43 and VMM in names and lab_host("lib01") in names


def test_a_vmm_operation_on_a_plain_host_is_a_script_error(runner: WinRMRunner) -> None:
    out = runner.run(lab_host("hv01"), render_script("list-managed-computers"))
    assert out.exit_code != 0
    assert "Get-SCVMMManagedComputer" in out.stderr or "not recognized" in out.stderr


def test_unreachable_host_raises_a_classified_error(runner: WinRMRunner) -> None:
    with pytest.raises(CollectError) as exc:
        runner.run(lab_host("hv40"), render_script("collect-certificates"))
    assert exc.value.reason == "connect"
