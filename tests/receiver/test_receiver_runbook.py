"""The runbooks against the demo lab over real pywinrm: execute, dry run, each procedure,
and a failure at each step with its journal entry and its retry on the backoff schedule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.receiver import planner, runbook
from vmm_cert_exporter.receiver.journal import Job
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host, load_fleet
from vmm_cert_lab.receiver_testing import CountingFleet, Harness, make_harness

HOUR = 3600.0
ROLLUP = "apply the update rollup (VMM 2016 UR10, 2019 UR2, 2022 RTM or later)"


def scvmm(description: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in description["certificates"] if c["scvmm"]]


def lab_year(harness: Harness) -> int:
    return int(harness.lab.model.clock_info()["now"][:4])


def steps(harness: Harness, job: Job) -> list[tuple[int, str, str]]:
    return [(s.attempt, s.name, s.status) for s in harness.journal.steps(job.id)]


def run(harness: Harness, host: str) -> Job:
    decision = harness.submit(host)
    assert decision.outcome == "created", decision
    harness.tick()
    return harness.job(decision.job_id)


def assert_renewed(harness: Harness, host: str, old: str | None) -> str:
    """One SCVMM certificate until 1 January of (lab year + 5), and VMM trusts it."""
    described = harness.describe(host)
    certs = scvmm(described)
    assert len(certs) == 1
    assert certs[0]["not_after"].startswith(f"{lab_year(harness) + 5}-01-01T00:00:00")
    assert certs[0]["thumbprint"] != old
    if not host.startswith("vmm01"):
        assert described["trusted"]["thumbprint"] == certs[0]["thumbprint"]
        assert described["trusted"]["matches"] is True
        assert described["state"] == "Responding"
    return str(certs[0]["thumbprint"])


def test_execute_renews_hv36_and_journals_everything(harness: Harness) -> None:
    host = lab_host("hv36")
    old = scvmm(harness.describe(host))[0]
    job = run(harness, host)
    assert job.status == "succeeded", job.reason
    assert job.procedure == planner.REMOVE_REGISTER
    new = assert_renewed(harness, host, old["thumbprint"])
    assert steps(harness, job) == [
        (1, "preflight", "succeeded"),
        (1, "remove-certificates", "succeeded"),
        (1, "register-managed-computer", "succeeded"),
        (1, "verify", "succeeded"),
    ]
    journal_steps = harness.journal.steps(job.id)
    assert journal_steps[1].params == {"thumbprints": [old["thumbprint"]]}
    assert journal_steps[1].result == {"removed": [old["thumbprint"]]}
    assert journal_steps[2].params == {
        "computer": host,
        "run_as_account": "VMM Host Admins",
    }
    assert job.certificates_before is not None and job.certificates_after is not None
    assert [c["thumbprint"] for c in job.certificates_before] == [old["thumbprint"]]
    assert job.certificates_before[0]["not_after"][:10] == old["not_after"][:10]
    assert [c["thumbprint"] for c in job.certificates_after] == [new]
    assert job.finished_at is not None and job.attempt == 1 and job.failures == 0
    # the plan keeps the exact scripts that were sent
    assert job.plan is not None
    sent = [s["script"] for s in job.plan["steps"]]
    assert sent[0] == render_script("remove-certificates", {"thumbprints": [old["thumbprint"]]})
    assert harness.fleet.count("remove-certificates", host) == 1
    assert harness.fleet.count("register-managed-computer", lab_host("vmm01")) == 1
    # exactly one Run As account of that name: checked once, before anything was deleted
    operations = [op for _, op in harness.runner.calls]
    assert operations.count("find-run-as-account") == 1
    assert operations.index("find-run-as-account") < operations.index("remove-certificates")
    counts = harness.journal.attempt_counts()
    assert counts == {(planner.REMOVE_REGISTER, "succeeded"): 1}


def test_dry_run_plans_and_changes_nothing(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(mode="dry-run")
    hosts = [
        lab_host("hv36"),
        lab_host("hv38"),
        lab_host("hv41"),
        lab_host("vmm01"),
        lab_host("hv01"),
        lab_host("hv40"),
    ]
    before = {c["fqdn"]: harness.describe(c["fqdn"]) for c in harness.lab.model.list_computers()}
    jobs = {h: harness.submit(h).job_id for h in hosts}
    harness.settle()
    after = {c["fqdn"]: harness.describe(c["fqdn"]) for c in harness.lab.model.list_computers()}
    assert after == before
    for operation in ("remove-certificates", "register-managed-computer", "update-vmm-certificate"):
        assert harness.fleet.count(operation) == 0
    statuses = {h: harness.job(j).status for h, j in jobs.items()}
    assert statuses == {
        lab_host("hv36"): "planned",
        lab_host("hv38"): "planned",
        lab_host("hv41"): "planned",
        lab_host("vmm01"): "planned",
        lab_host("hv01"): "already-fresh",
        lab_host("hv40"): "failed",
    }
    plan = harness.job(jobs[lab_host("hv36")]).plan
    assert plan is not None
    assert [s["name"] for s in plan["steps"]] == [
        "remove-certificates",
        "register-managed-computer",
    ]
    assert plan["steps"][1]["script"] == render_script(
        "register-managed-computer",
        {"computer": lab_host("hv36"), "run_as_account": "VMM Host Admins"},
    )
    assert plan["execute_mode_would"] == "start at once"
    vmm_plan = harness.job(jobs[lab_host("vmm01")]).plan
    assert vmm_plan is not None and vmm_plan["procedure"] == planner.UPDATE_CERTIFICATE
    # dry runs are final: nothing is active, a repeat in the cooldown joins the plan
    assert harness.journal.active_jobs() == []
    again = harness.submit(lab_host("hv36"))
    assert again.outcome == "joined" and again.job_id == jobs[lab_host("hv36")]


def test_each_demo_case_gets_its_procedure(harness: Harness) -> None:
    expired, deleted, mismatch, two = (
        lab_host("hv37"),
        lab_host("hv38"),
        lab_host("hv39"),
        lab_host("hv41"),
    )
    olds = {
        h: [c["thumbprint"] for c in scvmm(harness.describe(h))] for h in (expired, mismatch, two)
    }
    for host in (lab_host("vmm01"), expired, deleted, mismatch, two, lab_host("lib01")):
        assert harness.submit(host).outcome == "created"
    harness.settle()  # max_concurrent 2 (the lab config): several passes
    jobs = {j.host: j for j in harness.journal.list_jobs()}
    assert {h: j.status for h, j in jobs.items()} == {
        lab_host("vmm01"): "succeeded",
        expired: "succeeded",
        deleted: "succeeded",
        mismatch: "succeeded",
        two: "succeeded",
        lab_host("lib01"): "already-fresh",
    }
    assert jobs[lab_host("vmm01")].procedure == planner.UPDATE_CERTIFICATE
    assert [s.name for s in harness.journal.steps(jobs[lab_host("vmm01")].id)] == [
        "preflight",
        "update-vmm-certificate",
        "verify",
    ]
    assert_renewed(harness, lab_host("vmm01"), None)
    # deleted: nothing to remove, the step is journaled as skipped
    assert steps(harness, jobs[deleted])[1] == (1, "remove-certificates", "skipped")
    assert harness.fleet.count("remove-certificates", deleted) == 0
    # two certificates: both removed by thumbprint in one call
    remove = harness.journal.steps(jobs[two].id)[1]
    assert remove.params is not None
    assert sorted(remove.params["thumbprints"]) == sorted(olds[two])
    for host in (expired, deleted, mismatch, two):
        assert_renewed(harness, host, None)
    # lib01 was fresh: read only
    assert harness.fleet.count("remove-certificates", lab_host("lib01")) == 0
    # the Run As account is looked up for the four procedure-1 renewals, not for procedure 2
    assert harness.fleet.count("find-run-as-account") == 4


def _scenario(tmp_path: Path, version: str, ha: bool, extra: str = "") -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "name: ha\n" + extra + "vmm_server:\n"
        "  fqdn: vmm01.lab.example\n"
        f'  version: "{version}"\n'
        f"  high_availability: {str(ha).lower()}\n"
        "  expires_in: 20d\n"
        "computers:\n"
        "  - {fqdn: hv01.lab.example, role: hyperv_host, expires_in: 5d}\n"
    )
    return path


def test_ha_vmm_server_without_update_gets_nothing(tmp_path: Path) -> None:
    fleet = CountingFleet(load_fleet(str(_scenario(tmp_path, "2019", ha=True))))
    with start_lab(fleet=fleet, state_dir=tmp_path / "lab") as lab:
        harness = make_harness(lab, tmp_path / "r")
        try:
            decision = harness.submit(lab_host("vmm01"))
            assert decision.outcome == "rejected"
            assert "highly available" in decision.reason and ROLLUP in decision.reason
            # its hosts are renewed as usual (procedure 1 runs on the hosts, not on VMM)
            job = run(harness, lab_host("hv01"))
            assert job.status == "succeeded", job.reason
            assert fleet.count("remove-certificates", lab_host("vmm01")) == 0
        finally:
            harness.close()


def test_vmm_server_without_update_uses_procedure_1_on_itself(tmp_path: Path) -> None:
    fleet = CountingFleet(load_fleet(str(_scenario(tmp_path, "2016 UR9", ha=False))))
    with start_lab(fleet=fleet, state_dir=tmp_path / "lab") as lab:
        harness = make_harness(lab, tmp_path / "r")
        try:
            job = run(harness, lab_host("vmm01"))
            assert job.status == "succeeded", job.reason
            assert job.procedure == planner.REMOVE_REGISTER
            assert fleet.count("update-vmm-certificate") == 0
            assert fleet.count("remove-certificates", lab_host("vmm01")) == 1
            certs = scvmm(lab.model.describe(lab_host("vmm01")))
            assert len(certs) == 1 and certs[0]["not_after"].startswith(
                f"{int(lab.model.clock_info()['now'][:4]) + 5}-01-01"
            )
        finally:
            harness.close()


# --------------------------------------------------------------------------------------------
# A failure at each step: a clear journal entry, and a retry on the backoff schedule


def test_host_unreachable_after_the_delete(harness: Harness) -> None:
    host = lab_host("hv36")
    harness.runner.after[(host, "remove-certificates")] = lambda: harness.lab.model.set_faults(
        host, Faults(connection_refused=True)
    )
    t0 = harness.clock()
    job = run(harness, host)
    assert job.status == "failed" and job.active
    assert job.failed_step == "register-managed-computer"
    assert job.reason is not None and "cannot contact" in job.reason
    assert steps(harness, job) == [
        (1, "preflight", "succeeded"),
        (1, "remove-certificates", "succeeded"),
        (1, "register-managed-computer", "failed"),
    ]
    assert job.next_attempt_at == pytest.approx(t0 + HOUR)
    assert scvmm(harness.describe(host)) == []  # the delete happened: VMM cannot manage it
    # not before the backoff has passed
    harness.clock.advance(HOUR - 60)
    harness.tick()
    assert harness.job(job.id).attempt == 1
    # the host comes back; after the hour the retry registers it (nothing left to remove)
    harness.lab.model.set_faults(host, Faults())
    harness.clock.advance(61)
    harness.tick()
    job = harness.job(job.id)
    assert job.status == "succeeded", job.reason
    assert steps(harness, job)[3:] == [
        (2, "preflight", "succeeded"),
        (2, "remove-certificates", "skipped"),
        (2, "register-managed-computer", "succeeded"),
        (2, "verify", "succeeded"),
    ]
    assert harness.fleet.count("remove-certificates", host) == 1  # never a second delete
    assert_renewed(harness, host, None)


def test_failures_back_off_doubling_then_give_up(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(max_attempts=4)
    host = lab_host("hv40")  # connection refused: every preflight fails
    job = run(harness, host)
    delays = []
    for attempt in range(1, 5):
        job = harness.job(job.id)
        assert job.status == "failed" and job.attempt == attempt and job.failures == attempt
        assert job.failed_step == "preflight"
        assert job.reason is not None and "connect" in job.reason
        if attempt == 4:
            break
        assert job.next_attempt_at is not None
        delays.append(job.next_attempt_at - harness.clock())
        harness.clock.advance(job.next_attempt_at - harness.clock())
        harness.tick()
    assert delays == [HOUR, 2 * HOUR, 4 * HOUR]
    assert not job.active and job.next_attempt_at is None
    assert job.reason is not None and "gave up after 4 failed attempts" in job.reason
    assert harness.runner.calls.count((host, "collect-certificates")) == 4  # one per attempt
    assert harness.fleet.count("remove-certificates") == 0
    failed = harness.journal.failed_hosts()
    assert [(j.host, j.failed_step) for j in failed] == [(host, "preflight")]


def test_verification_fails_then_the_retry_fixes_it(harness: Harness) -> None:
    host = lab_host("hv36")
    # VMM's TrustedPeople copy is replaced right after the register: verification must see it
    harness.runner.after[(lab_host("vmm01"), "register-managed-computer")] = lambda: (
        harness.lab.model.set_trusted_mismatch(host)
    )
    job = run(harness, host)
    assert job.status == "failed" and job.failed_step == "verify"
    assert job.reason is not None and "TrustedPeople holds no copy" in job.reason
    assert steps(harness, job)[-1] == (1, "verify", "failed")
    assert job.certificates_after is not None and len(job.certificates_after) == 1
    assert job.next_attempt_at == pytest.approx(harness.clock() + HOUR)
    harness.clock.advance(HOUR)
    harness.tick()
    job = harness.job(job.id)
    assert job.status == "succeeded", job.reason
    assert [s for s in steps(harness, job) if s[0] == 2] == [
        (2, "preflight", "succeeded"),
        (2, "remove-certificates", "succeeded"),
        (2, "register-managed-computer", "succeeded"),
        (2, "verify", "succeeded"),
    ]
    assert_renewed(harness, host, None)
    assert harness.journal.failed_hosts() == []


def test_preflight_failure_changes_nothing(harness: Harness) -> None:
    job = run(harness, lab_host("hv40"))  # connection refused
    assert job.status == "failed" and job.failed_step == "preflight"
    assert job.reason is not None and "connect" in job.reason
    assert steps(harness, job) == [(1, "preflight", "failed")]
    assert harness.fleet.count("remove-certificates") == 0
    assert harness.fleet.count("register-managed-computer") == 0
    assert job.next_attempt_at == pytest.approx(harness.clock() + HOUR)


def test_verification_needs_min_validity(harness_factory: Callable[..., Harness]) -> None:
    # 20 years: no certificate the lab makes (5 years) is ever fresh enough
    harness = harness_factory(min_validity="7300d")
    job = run(harness, lab_host("hv01"))
    assert job.status == "failed" and job.failed_step == "verify"
    assert job.reason is not None and "at least 7300.0 days required" in job.reason


# --------------------------------------------------------------------------------------------
# The Run As account: exactly one match, checked in preflight, before anything is deleted


def assert_refused_before_anything_changed(
    harness: Harness, job: Job, picture: dict[str, Any], text: str
) -> None:
    assert job.status == "failed" and job.failed_step == "preflight"
    assert job.reason is not None and text in job.reason, job.reason
    assert not job.active and job.next_attempt_at is None  # permanent: no retry loop
    assert steps(harness, job) == [(1, "preflight", "failed")]
    assert harness.fleet.count("find-run-as-account", lab_host("vmm01")) == 1
    assert harness.fleet.count("remove-certificates") == 0
    assert harness.fleet.count("register-managed-computer") == 0
    assert harness.describe(job.host) == picture  # the store is untouched


@pytest.mark.parametrize("mode", ["execute", "dry-run"])
def test_a_run_as_name_matching_no_account_refuses_in_preflight(
    harness_factory: Callable[..., Harness], mode: str
) -> None:
    # a wildcard is a name like any other: -eq compares it whole, so nothing matches
    harness = harness_factory(run_as_account="VMM*", mode=mode)
    host = lab_host("hv36")
    picture = harness.describe(host)
    job = run(harness, host)
    assert_refused_before_anything_changed(
        harness,
        job,
        picture,
        "Run As account 'VMM*' not found: 0 accounts have exactly that name",
    )
    assert job.plan is not None and job.plan["procedure"] == planner.REMOVE_REGISTER


def test_an_ambiguous_run_as_name_refuses_in_preflight(tmp_path: Path) -> None:
    # VMM Host Admins twice, as PowerShell's -eq sees them (names compare in any case)
    extra = 'run_as_accounts: ["VMM Host Admins", "vmm host admins", "VMM Host Admins 2"]\n'
    fleet = CountingFleet(load_fleet(str(_scenario(tmp_path, "2022", ha=False, extra=extra))))
    with start_lab(fleet=fleet, state_dir=tmp_path / "lab") as lab:
        harness = make_harness(lab, tmp_path / "r", run_as_account="VMM Host Admins")
        try:
            host = lab_host("hv01")
            picture = harness.describe(host)
            job = run(harness, host)
            assert_refused_before_anything_changed(
                harness,
                job,
                picture,
                "Run As account 'VMM Host Admins' is ambiguous: 2 accounts have exactly that name",
            )
            # the unique name proceeds
            harness.close()
            harness = make_harness(lab, tmp_path / "r2", run_as_account="VMM Host Admins 2")
            job = run(harness, host)
            assert job.status == "succeeded", job.reason
        finally:
            harness.close()


def test_procedure_2_does_not_need_the_run_as_account(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(run_as_account="No Such Account")
    job = run(harness, lab_host("vmm01"))
    assert job.status == "succeeded", job.reason
    assert job.procedure == planner.UPDATE_CERTIFICATE
    assert harness.fleet.count("find-run-as-account") == 0


# --------------------------------------------------------------------------------------------
# A host in ConstrainedLanguage mode fails with that reason, not as a script error

CLM = "language_mode: PowerShell runs in ConstrainedLanguage mode, not FullLanguage"


def test_a_constrained_language_host_fails_preflight_with_the_reason(harness: Harness) -> None:
    host = lab_host("hv36")
    harness.lab.model.set_faults(host, Faults(language_mode="ConstrainedLanguage"))
    job = run(harness, host)
    assert job.status == "failed" and job.failed_step == "preflight"
    assert job.reason is not None
    assert job.reason.startswith(f"collect-certificates on {host}: {CLM}"), job.reason
    assert harness.fleet.count("remove-certificates") == 0


def test_a_constrained_language_host_at_a_change_step(harness: Harness) -> None:
    host = lab_host("hv36")
    picture = harness.describe(host)
    # hardened between the preflight's reads and the delete
    harness.runner.after[(lab_host("vmm01"), "find-run-as-account")] = lambda: (
        harness.lab.model.set_faults(host, Faults(language_mode="ConstrainedLanguage"))
    )
    job = run(harness, host)
    assert job.status == "failed" and job.failed_step == "remove-certificates"
    assert job.reason is not None and job.reason.startswith(f"on {host}: {CLM}"), job.reason
    # the script stopped at its language check: known not to have run, so "failed"
    assert steps(harness, job)[-1] == (1, "remove-certificates", "failed")
    assert harness.describe(host)["certificates"] == picture["certificates"]


def test_a_constrained_language_vmm_server_fails_preflight_with_the_reason(
    harness: Harness,
) -> None:
    harness.lab.model.set_faults(lab_host("vmm01"), Faults(language_mode="ConstrainedLanguage"))
    job = run(harness, lab_host("hv36"))
    assert job.failed_step == "preflight" and job.reason is not None
    assert job.reason.startswith(f"list-managed-computers on vmm01.{LAB_DOMAIN}: {CLM}"), job.reason


def _verdict(harness: Harness, host: str, vmm_server: str) -> tuple[object, ...]:
    """What the receiver decides from one read of ``host``: the same with or without the
    per-computer filter of the VMM server's lists."""
    try:
        state = runbook.read_state(harness.runner, host, vmm_server)
    except runbook.StepFailed as failed:
        # the call and the failure's class ("collect-certificates on X: connect"); the
        # exception text after it depends on how the dropped connection was noticed
        return ("failed", failed.step, failed.reason.split(": ")[:2], failed.permanent)
    view = state.view
    return (
        state.computer,
        state.certificates,
        state.trusted,
        state.trusted_thumbprints,
        planner.choose_procedure(state.computer, view),
        (view.vmm_server, view.version, view.high_availability, view.ha_nodes),
        view.reported_name,
        view.supports_update_certificate,
        sorted(c.key for c in view.managed if view.is_server_name(c.fqdn)),
    )


@pytest.mark.parametrize("which", ["harness", "ha_harness"])
def test_a_renewal_reads_only_its_computer_and_decides_as_on_the_whole_lists(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every computer of the demo lab (mismatched, deleted and missing TrustedPeople copies,
    unreachable hosts, the VMM server) and of the ha lab (highly available servers, an
    alias): the filtered reads reach the same verdicts as the whole lists, and carry only
    that computer and the VMM server's own entries."""
    harness: Harness = request.getfixturevalue(which)
    targets = [
        (c.fqdn, c.vmm_server)
        for c in harness.inventory.inventory.computers
        if c.vmm_server is not None
    ]
    assert len(targets) >= 3
    filtered: dict[str, tuple[object, ...]] = {}
    sizes: list[int] = []
    for host, server in targets:
        filtered[host] = _verdict(harness, host, server)
        try:
            sizes.append(len(runbook.read_state(harness.runner, host, server).view.managed))
        except runbook.StepFailed:
            pass
    whole_lists = len(harness.lab.model.list_computers())
    assert sizes and max(sizes) < min(whole_lists, 8)
    monkeypatch.setattr(runbook, "_only", lambda name: {})
    for host, server in targets:
        assert _verdict(harness, host, server) == filtered[host], host


def test_the_filter_is_a_parameter_never_code() -> None:
    hostile = "hv01.corp'; Remove-Item C:\\ -Recurse #"
    with pytest.raises(ValueError, match="not a valid FQDN"):
        render_script("list-trusted-certificates", {"computer": hostile})
    assert runbook._only(hostile) == {}  # such a name reads the whole lists instead
    assert runbook._only("HV01.Corp.Example.") == {"computer": "hv01.corp.example"}
