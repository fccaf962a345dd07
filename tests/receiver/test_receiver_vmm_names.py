"""Every name of a VMM server, against the ``ha`` lab over real pywinrm: the clustered role
name, the active and the passive node, the FQDN of a server configured by an alias. Each
gets procedure 2, never procedure 1; a highly available VMM without Update-SCVMMCertificate
is refused with the update rollup reason, at intake, at preflight and in ``renew``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.cli import main
from vmm_cert_exporter.receiver import planner
from vmm_cert_exporter.receiver.journal import Job
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.receiver_testing import (
    Harness,
    make_harness,
    receiver_config,
    scvmm_certs,
)

ROLLUP = "apply the update rollup (VMM 2016 UR10, 2019 UR2, 2022 RTM or later)"
HA = lab_host("vmm-ha")  # the clustered role name, as the written configuration names it
HA_NAMES = (HA, lab_host("vmmha-n1"), lab_host("vmmha-n2"))  # role name, active node, passive node
OLD = lab_host("vmm-old")  # highly available VMM 2019 UR1: no Update-SCVMMCertificate
OLD_NAMES = (OLD, lab_host("vmmold-n1"), lab_host("vmmold-n2"))
ALIAS = lab_host("scvmm")  # configured name of vmm03, which VMM reports as its FQDN
ALIAS_NAMES = (ALIAS, lab_host("vmm03"))
NODES = (*HA_NAMES[1:], *OLD_NAMES[1:], lab_host("vmm03"))


def operations(harness: Harness, operation: str) -> list[str]:
    """The computers that received ``operation``, in order."""
    return [host for host, op in harness.runner.calls if op == operation]


def job_of(harness: Harness, host: str) -> Job:
    decision = harness.submit(host)
    assert decision.outcome == "created", decision
    return harness.job(decision.job_id)


def renewed_in(lab: RunningLab, description: dict[str, Any]) -> bool:
    """One SCVMM certificate, valid until 1 January of (lab year + 5)."""
    year = int(lab.model.clock_info()["now"][:4])
    certs = scvmm_certs(description)
    return len(certs) == 1 and certs[0]["not_after"].startswith(f"{year + 5}-01-01")


def test_every_name_of_the_ha_vmm_server_gets_procedure_2(ha_harness: Harness) -> None:
    jobs = {name: job_of(ha_harness, name) for name in HA_NAMES}
    for name, job in jobs.items():
        assert (job.procedure, job.vmm_server, job.is_vmm_server) == (
            planner.UPDATE_CERTIFICATE,
            HA,
            True,
        ), name
    ha_harness.settle()
    for name, job in jobs.items():
        job = ha_harness.job(job.id)
        assert job.status in ("succeeded", "already-fresh"), (name, job.reason)
        assert job.procedure == planner.UPDATE_CERTIFICATE
    # the update ran on the configured VMM server (the lab's role name reaches the active
    # node), naming it as configured; nothing was ever removed or re-registered
    assert set(operations(ha_harness, "update-vmm-certificate")) == {HA}
    steps = [s for j in jobs.values() for s in ha_harness.journal.steps(j.id)]
    updates = [s.params for s in steps if s.name == "update-vmm-certificate"]
    assert updates and all(params == {"vmm_server": HA} for params in updates)
    assert operations(ha_harness, "remove-certificates") == []
    assert operations(ha_harness, "register-managed-computer") == []
    assert operations(ha_harness, "find-run-as-account") == []
    for node in HA_NAMES[1:]:
        assert renewed_in(ha_harness.lab, ha_harness.describe(node)), node


def test_the_names_of_one_vmm_server_renew_its_certificate_one_at_a_time(
    ha_harness: Harness,
) -> None:
    """The role name and both nodes alert at once (one certificate, three names): one
    pass starts one of their jobs and the others wait for it, though the limits would allow
    two at once; once it has renewed, the next finds the certificate fresh. So
    Update-SCVMMCertificate never runs twice at once against one VMM server."""
    jobs = [job_of(ha_harness, name) for name in HA_NAMES]
    started = ha_harness.engine.tick(wait=True)
    assert len(started) == 1
    waiting = [ha_harness.job(j.id) for j in jobs if ha_harness.job(j.id).status != "succeeded"]
    assert len(waiting) == 2
    for job in waiting:
        assert job.status == "waiting", job
        assert job.reason is not None and "one renewal at a time" in job.reason, job.reason
    ha_harness.settle()
    statuses = sorted(ha_harness.job(j.id).status for j in jobs)
    assert statuses == ["already-fresh", "already-fresh", "succeeded"]
    assert operations(ha_harness, "update-vmm-certificate") == [HA]


def test_ha_vmm_server_without_the_cmdlet_is_refused_with_the_rollup(
    ha_harness: Harness,
) -> None:
    for name in OLD_NAMES:
        decision = ha_harness.submit(name)
        assert decision.outcome == "rejected", (name, decision)
        assert ROLLUP in decision.reason and "highly available" in decision.reason
    # its hosts are renewed as usual: procedure 1 on the host, register on the VMM server
    job = job_of(ha_harness, lab_host("hv-old02"))
    ha_harness.tick()
    job = ha_harness.job(job.id)
    assert job.status == "succeeded", job.reason
    assert operations(ha_harness, "register-managed-computer") == [OLD]
    assert operations(ha_harness, "remove-certificates") == [lab_host("hv-old02")]


def test_a_dry_run_receiver_explains_the_same_refusal(ha_lab: RunningLab, tmp_path: Path) -> None:
    harness = make_harness(ha_lab, tmp_path / "dry", mode="dry-run")
    try:
        for name in OLD_NAMES:
            decision = harness.submit(name)
            assert decision.outcome == "rejected" and ROLLUP in decision.reason, name
        # a dry-run job that reaches preflight anyway (journaled before VMM said otherwise)
        job = harness.journal.create_job(
            host=lab_host("vmmold-n1"),
            role="vmm_server",
            vmm_server=OLD,
            is_vmm_server=True,
            procedure=planner.UPDATE_CERTIFICATE,
            mode="dry-run",
            source="alertmanager",
        )
        harness.tick()
        job = harness.job(job.id)
        assert job.status == "failed" and job.failed_step == "preflight"
        assert job.reason is not None and ROLLUP in job.reason
        assert job.plan is not None and job.plan["procedure"] is None
        assert ROLLUP in job.plan["why"] and job.plan["steps"] == []
        for operation in ("remove-certificates", "register-managed-computer"):
            assert operations(harness, operation) == []
    finally:
        harness.close()


@pytest.mark.parametrize(
    ("host", "vmm_server", "status"),
    [
        (lab_host("vmmold-n2"), OLD, "failed"),  # refused: no procedure at all
        (lab_host("vmmha-n2"), HA, "succeeded"),  # procedure 2 instead
        (lab_host("vmm03"), ALIAS, "succeeded"),
    ],
)
def test_preflight_re_decides_a_job_planned_as_procedure_1(
    ha_harness: Harness, host: str, vmm_server: str, status: str
) -> None:
    """A job journaled for procedure 1 (an inventory that did not know the name, a version
    changed since): preflight reads VMM again and never runs procedure 1 on the name."""
    before = ha_harness.describe(host)
    job = ha_harness.journal.create_job(
        host=host,
        role="hyperv_host",
        vmm_server=vmm_server,
        is_vmm_server=False,
        procedure=planner.REMOVE_REGISTER,
        mode="execute",
        source="alertmanager",
    )
    ha_harness.tick()
    job = ha_harness.job(job.id)
    assert job.status == status, job.reason
    assert operations(ha_harness, "remove-certificates") == []
    assert operations(ha_harness, "register-managed-computer") == []
    if status == "failed":
        assert job.failed_step == "preflight" and not job.active
        assert job.reason is not None and ROLLUP in job.reason
        assert job.plan is not None and job.plan["procedure"] is None
        assert ha_harness.describe(host) == before
    else:
        assert job.procedure == planner.UPDATE_CERTIFICATE
        assert operations(ha_harness, "update-vmm-certificate") == [vmm_server]
        assert renewed_in(ha_harness.lab, ha_harness.describe(host))


def test_the_fqdn_of_a_vmm_server_configured_by_an_alias_gets_procedure_2(
    ha_harness: Harness,
) -> None:
    jobs = [job_of(ha_harness, name) for name in ALIAS_NAMES]
    assert [(j.procedure, j.vmm_server) for j in jobs] == [
        (planner.UPDATE_CERTIFICATE, ALIAS),
        (planner.UPDATE_CERTIFICATE, ALIAS),
    ]
    ha_harness.settle()
    assert {ha_harness.job(j.id).status for j in jobs} <= {"succeeded", "already-fresh"}
    assert operations(ha_harness, "remove-certificates") == []
    assert renewed_in(ha_harness.lab, ha_harness.describe(lab_host("vmm03")))


def test_renew_explains_the_same_decisions(
    ha_lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = receiver_config(ha_lab, tmp_path)
    for name in OLD_NAMES:
        assert main(["renew", "--config", config.path, "--host", name]) == 1, name
        out = capsys.readouterr().out
        assert f"VMM server {OLD}" in out
        refusal = next(line for line in out.splitlines() if line.startswith("cannot renew: "))
        assert ROLLUP in refusal and "highly available" in refusal
    for name in (*HA_NAMES, *ALIAS_NAMES):
        assert main(["renew", "--config", config.path, "--host", name]) == 0, name
        out = capsys.readouterr().out
        assert "procedure: update-vmm-certificate (" in out, out
        assert "----- PowerShell sent (exactly) -----" in out
        assert "remove-certificates" not in out
    # nothing was changed: renew without --execute only reads
    for node in NODES:
        assert not renewed_in(ha_lab, ha_lab.model.describe(node)), node
