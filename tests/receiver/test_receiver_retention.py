"""Journal retention (``receiver.journal_retention``): what pruning deletes, what it never
touches, that the guards reading history decide the same, and the counter it publishes.

Real SQLite files throughout; time is a FakeClock the tests move.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from vmm_cert_exporter.receiver.intake import Decision, intake
from vmm_cert_exporter.receiver.journal import Journal, iso
from vmm_cert_exporter.receiver.metrics import ReceiverCollector, WebhookCounter
from vmm_cert_exporter.receiver.service import start_receiver
from vmm_cert_exporter.receiver.webhook import parse_webhook
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.receiver_testing import (
    FakeClock,
    Harness,
    alert,
    http,
    new_job,
    payload,
    receiver_config,
)

T0 = 1_900_000_000.0
HOUR = 3600.0
DAY = 86400.0
CHILD_TABLES = ("attempts", "steps", "alerts", "events")


# --------------------------------------------------------------------------------------------
# Helpers: jobs in every status, written through the journal's own API


def _alert(journal: Journal, job_id: int | None, fingerprint: str, outcome: str) -> None:
    webhook = journal.record_webhook(
        outcome="accepted" if job_id else "no_action",
        reason=None,
        receiver="vmm-cert-renewal",
        group_key="g",
        alerts=1,
        remote="127.0.0.1",
    )
    journal.record_alert(
        webhook_id=webhook,
        alertname="VMMCertificateExpiringCritical",
        host="hv.lab.example",
        status="firing",
        fingerprint=fingerprint,
        starts_at="2030-01-01T00:00:00Z",
        mode="execute",
        outcome=outcome,
        reason=None if job_id else "resolved",
        job_id=job_id,
    )


def finished(
    journal: Journal, host: str, status: str, *, mode: str = "execute", fingerprint: str = ""
) -> int:
    """A job that ran one attempt (a step and an alert) and ended ``status``."""
    job_id = new_job(journal, host, mode)
    _alert(journal, job_id, fingerprint or f"{job_id:016x}", "created")
    if status == "cancelled":
        journal.cancel(job_id, "test")
        return job_id
    attempt = journal.claim(job_id, expected=("planned",), owner="test-owner").attempt
    assert attempt is not None
    step = journal.step_started(job_id, attempt, "preflight", host)
    journal.step_finished(step, "succeeded")
    result = {"planned": "planned", "failed": "failed"}.get(status, status)
    journal.finish_attempt(
        job_id, attempt, result=result, status=status, count_failure=status == "failed"
    )
    return job_id


def active(journal: Journal, host: str, status: str) -> int:
    """A job that is still active in ``status`` (planned, waiting, running, interrupted,
    failed with a retry pending)."""
    job_id = new_job(journal, host)
    if status == "waiting":
        journal.set_waiting(job_id, "outside the maintenance windows")
    if status in ("running", "interrupted", "failed"):
        owner = "gone-owner" if status == "interrupted" else "test-owner"
        attempt = journal.claim(job_id, expected=("planned",), owner=owner).attempt
        assert attempt is not None
        journal.step_started(job_id, attempt, "remove-certificates", host, {"thumbprints": []})
        if status == "failed":
            journal.finish_attempt(
                job_id,
                attempt,
                result="failed",
                status="failed",
                terminal=False,
                next_attempt_at=journal.now() + HOUR,
                count_failure=True,
            )
    if status == "interrupted":
        assert journal.recover(lambda owner: owner != "gone-owner") == [job_id]
    job = journal.must_get(job_id)
    assert job.active and job.status == status
    return job_id


def rows(journal: Journal, table: str, job_id: int) -> int:
    assert table in CHILD_TABLES
    db = sqlite3.connect(journal.path)
    try:
        sql = f"SELECT COUNT(*) FROM {table} WHERE job_id = ?"  # noqa: S608 - fixed names
        return int(db.execute(sql, (job_id,)).fetchone()[0])
    finally:
        db.close()


def integrity(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    try:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def journal(tmp_path: Path, clock: FakeClock) -> Journal:
    return Journal(tmp_path / "j.sqlite", clock=clock)


# --------------------------------------------------------------------------------------------
# Journal.prune


def test_prune_deletes_only_old_finished_jobs_with_their_rows(
    journal: Journal, clock: FakeClock
) -> None:
    # old and finished, in every terminal status; each host's latest outcome comes after
    old_success = finished(journal, lab_host("hv01"), "succeeded")
    kept_success = finished(journal, lab_host("hv01"), "succeeded")  # hv01's latest (and success)
    old_cancelled = finished(journal, lab_host("hv02"), "cancelled")
    old_failed = finished(journal, lab_host("hv02"), "failed")  # gave up (terminal)
    old_plan = finished(journal, lab_host("hv02"), "planned", mode="dry-run")
    old_dry_fresh = finished(journal, lab_host("hv02"), "already-fresh", mode="dry-run")
    kept_fresh = finished(journal, lab_host("hv02"), "already-fresh")  # hv02's latest execute job
    # as old, but active: whatever their age, a resume or a retry needs them
    still_active = {
        status: active(journal, lab_host(f"hv1{n}"), status)
        for n, status in enumerate(("planned", "waiting", "running", "interrupted", "failed"))
    }
    clock.advance(10 * DAY)
    recent_old_host = finished(journal, lab_host("hv01"), "cancelled")
    recent = finished(journal, lab_host("hv20"), "failed")
    gone = [old_success, old_cancelled, old_failed, old_plan, old_dry_fresh]
    kept = [kept_success, kept_fresh, *still_active.values(), recent_old_host, recent]
    before = {(job, table): rows(journal, table, job) for job in kept for table in CHILD_TABLES}
    assert all(rows(journal, "steps", job) for job in gone if job != old_cancelled)
    active_before = journal.active_jobs()

    pruned = journal.prune(T0 + 5 * DAY)

    assert pruned.jobs == len(gone) == 5
    assert pruned.steps == 4 and pruned.alerts == 5  # no step for the cancelled job
    for job in gone:
        assert journal.get(job) is None
        assert all(rows(journal, table, job) == 0 for table in CHILD_TABLES), job
    for job in kept:
        assert journal.get(job) is not None
    assert {k: rows(journal, k[1], k[0]) for k in before} == before
    # the active jobs are untouched, down to the step whose outcome is unknown
    assert journal.active_jobs() == active_before
    interrupted = still_active["interrupted"]
    assert [s.status for s in journal.steps(interrupted)] == ["unknown"]
    integrity(journal)
    assert journal.pruned_jobs_total() == 5

    # again, and far into the future: active jobs and each host's latest outcome stay
    assert journal.prune(T0 + 5 * DAY).jobs == 0
    assert journal.prune(T0 + 1000 * DAY).jobs == 0
    assert journal.active_jobs() == active_before
    assert journal.pruned_jobs_total() == 5


def test_prune_keeps_what_metrics_read_and_counts_stay_monotonic(
    journal: Journal, clock: FakeClock
) -> None:
    last_success = finished(journal, lab_host("hv01"), "succeeded")
    finished(journal, lab_host("hv01"), "already-fresh")
    failed = finished(journal, lab_host("hv01"), "failed")  # hv01's latest: still failing
    finished(journal, lab_host("hv02"), "succeeded")
    finished(journal, lab_host("hv02"), "succeeded")
    clock.advance(30 * DAY)
    counts = journal.attempt_counts()
    successes = journal.last_success_by_host()
    assert [j.id for j in journal.failed_hosts()] == [failed]

    assert journal.prune(T0 + 20 * DAY).jobs == 2  # hv01's already-fresh, hv02's first

    # vmm_renewal_host_failed (VMMCertificateRenewalFailed) and the last success are intact
    assert [j.id for j in journal.failed_hosts()] == [failed]
    assert journal.last_success_by_host() == successes
    assert journal.get(last_success) is not None
    # vmm_renewal_jobs_total never goes down: the pruned attempts are still counted
    assert journal.attempt_counts() == counts
    path = journal.path
    journal.close()
    again = Journal(path)
    assert again.attempt_counts() == counts and again.pruned_jobs_total() == 2
    again.close()


def test_a_repeated_alert_keeps_its_job(journal: Journal, clock: FakeClock) -> None:
    """Alertmanager repeats a firing alert every repeat_interval; each repeat joins the job
    it led to, and keeps that job (and so the repeat's idempotency) past the retention."""
    job = finished(journal, lab_host("hv01"), "already-fresh", fingerprint="00000000000000aa")
    finished(journal, lab_host("hv01"), "already-fresh")  # the host's latest: job is prunable
    for _ in range(72):
        clock.advance(HOUR)
        _alert(journal, job, "00000000000000aa", "joined")
    assert journal.prune(T0 + 2 * DAY).jobs == 0
    assert journal.job_for_alert("00000000000000aa", "2030-01-01T00:00:00Z", "execute") == job
    # the repeats stopped (the alert resolved): once the last is older, the job goes
    assert journal.prune(T0 + 73 * HOUR).jobs == 1
    assert journal.job_for_alert("00000000000000aa", "2030-01-01T00:00:00Z", "execute") is None


def test_prune_removes_old_rows_of_no_job(journal: Journal, clock: FakeClock) -> None:
    _alert(journal, None, "00000000000000r1", "rejected")  # old webhook + rejected alert
    job = active(journal, lab_host("hv01"), "waiting")
    _alert(journal, job, "00000000000000j1", "created")  # old, but its job is active
    journal.set_paused(True, "bearer")  # an event of no job
    clock.advance(10 * DAY)
    _alert(journal, None, "00000000000000r2", "rejected")
    journal.set_paused(False, "bearer")

    pruned = journal.prune(T0 + 5 * DAY)

    assert (pruned.jobs, pruned.alerts, pruned.webhooks, pruned.events) == (0, 1, 1, 1)
    assert [a["fingerprint"] for a in journal.rejected_alerts()] == ["00000000000000r2"]
    assert rows(journal, "alerts", job) == 1
    assert [e["kind"] for e in journal.events() if e["job_id"] is None] == ["resumed"]
    assert journal.pause_state().paused is False  # settings are not history
    integrity(journal)


def test_cooldown_lookback_survives_the_minimum_retention(
    journal: Journal, clock: FakeClock
) -> None:
    """With retention = cooldown (the least the configuration allows), what the cooldown
    and the dry run's "planned recently" read is never pruned while they still matter."""
    cooldown = DAY
    fresh = finished(journal, lab_host("hv01"), "already-fresh")
    finished(journal, lab_host("hv01"), "already-fresh")
    fresh_at = journal.must_get(fresh).finished_at
    plan = finished(journal, lab_host("hv02"), "planned", mode="dry-run")
    finished(journal, lab_host("hv02"), "planned", mode="dry-run")
    created = journal.must_get(plan).created_at
    for _ in range(23):
        clock.advance(HOUR)
        journal.prune(clock() - cooldown)
        assert journal.get(fresh) is not None and journal.get(plan) is not None
        assert journal.recent_job(lab_host("hv02"), "dry-run", clock() - cooldown) is not None
    assert fresh_at is not None and clock() - fresh_at < cooldown
    clock.advance(HOUR + 1)
    assert clock() - created > cooldown  # no longer recent: only now may it go
    # hv01's first; both dry runs (no metric reads a dry run: the latest plan goes too)
    assert journal.prune(clock() - cooldown).jobs == 3
    assert journal.recent_job(lab_host("hv02"), "dry-run", clock() - cooldown) is None


# --------------------------------------------------------------------------------------------
# The metric


def test_pruned_jobs_counter(journal: Journal, clock: FakeClock) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReceiverCollector(journal, WebhookCounter(), "execute", lambda: False))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("vmm_renewal_journal_pruned_jobs_total") == 0  # published from the start
    for _ in range(3):
        finished(journal, lab_host("hv01"), "failed")
    finished(journal, lab_host("hv01"), "succeeded")
    jobs_total = {"procedure": "remove-register", "result": "failed"}
    assert value("vmm_renewal_jobs_total", **jobs_total) == 3
    clock.advance(10 * DAY)
    journal.prune(clock() - DAY)
    assert value("vmm_renewal_journal_pruned_jobs_total") == 3
    assert value("vmm_renewal_jobs_total", **jobs_total) == 3
    finished(journal, lab_host("hv01"), "cancelled")
    finished(journal, lab_host("hv01"), "cancelled")
    clock.advance(10 * DAY)
    journal.prune(clock() - DAY)
    # the first cancelled job; the success stays (hv01's latest), the second is the latest
    assert value("vmm_renewal_journal_pruned_jobs_total") == 4


# --------------------------------------------------------------------------------------------
# The engine: when it prunes, and the guards against a lab, with and without retention


def send(harness: Harness, host: str, fingerprint: str) -> Decision:
    """One webhook with one firing alert, through intake (the alert is journaled)."""
    assert harness.config.receiver is not None
    body = parse_webhook(json.dumps(payload(alert(host, fingerprint=fingerprint))).encode())
    webhook_id = harness.journal.record_webhook(
        outcome="received", reason=None, receiver=None, group_key=None, alerts=1, remote=None
    )
    [decision] = intake(
        body,
        config=harness.config.receiver,
        inventory=harness.inventory.inventory,
        journal=harness.journal,
        webhook_id=webhook_id,
        now=harness.clock(),
    )
    return decision


@pytest.mark.parametrize("retention", [None, "1d"])
def test_guards_decide_the_same_with_the_minimum_retention(
    harness_factory: Callable[..., Harness], retention: str | None
) -> None:
    """The same alerts over two days, without retention and with the least allowed (equal to
    the cooldown), pruning on every pass: every decision is the same."""
    extra = {} if retention is None else {"journal_retention": retention}
    harness = harness_factory(cooldown="1d", **extra)
    start = harness.clock()
    j1 = send(harness, lab_host("hv01"), "00000000000000a1")
    j2 = send(harness, lab_host("hv36"), "00000000000000b1")
    assert (j1.outcome, j2.outcome) == ("created", "created")
    harness.settle()
    assert harness.job(j1.job_id).status == "already-fresh"
    assert harness.job(j2.job_id).status == "succeeded"

    harness.clock.advance(2 * HOUR)
    j3 = send(harness, lab_host("hv36"), "00000000000000c1")
    harness.tick()
    renewed = harness.job(j2.job_id).finished_at
    assert renewed is not None
    assert harness.job(j3.job_id).reason == (
        f"cooldown: hv36.{LAB_DOMAIN} was last renewed or found fresh at {iso(renewed)}; "
        f"no new renewal before {iso(renewed + DAY)} (cooldown 1d)"
    )
    repeat = send(harness, lab_host("hv36"), "00000000000000b1")  # Alertmanager's repeat
    assert (repeat.outcome, repeat.job_id) == ("joined", j2.job_id)

    harness.clock.advance(DAY - HOUR)  # start + 1d + 1h
    harness.tick()
    assert harness.job(j3.job_id).status == "already-fresh"
    j4 = send(harness, lab_host("hv01"), "00000000000000d1")
    harness.tick()
    assert harness.job(j4.job_id).status == "already-fresh"

    harness.clock.advance(HOUR)
    j5 = send(harness, lab_host("hv01"), "00000000000000e1")
    harness.tick()
    assert (harness.job(j5.job_id).reason or "").startswith(
        f"cooldown: hv01.{LAB_DOMAIN} was last renewed or found fresh at "
        f"{iso(harness.job(j4.job_id).finished_at)}"
    )

    harness.clock.advance(DAY)  # start + 2d + 2h: j1 is a day past the retention
    harness.tick()
    assert harness.job(j5.job_id).status == "already-fresh"
    assert harness.fleet.count("remove-certificates", lab_host("hv36")) == 1
    assert harness.clock() - start > 2 * DAY
    for kept in (j2, j3, j4, j5):  # hv36's last success and every host's latest outcome
        assert harness.journal.get(kept.job_id or 0) is not None
    if retention is None:  # unset: everything is kept, however old
        assert harness.journal.get(j1.job_id or 0) is not None
        assert harness.journal.pruned_jobs_total() == 0
    else:
        assert harness.journal.get(j1.job_id or 0) is None
        assert harness.journal.pruned_jobs_total() == 1


def test_engine_prunes_on_its_first_pass_then_hourly(
    harness_factory: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    harness = harness_factory(journal_retention="1d")
    old = finished(harness.journal, lab_host("hv90"), "cancelled")
    finished(harness.journal, lab_host("hv90"), "cancelled")
    caplog.set_level(logging.DEBUG, logger="vmm_cert_exporter.receiver.engine")

    harness.clock.advance(DAY - 10 * 60)
    harness.tick()  # the first pass prunes (nothing is a day old yet) and says so
    assert harness.journal.get(old) is not None
    first = [r for r in caplog.records if r.getMessage() == "journal pruned"]
    assert [(r.levelno, getattr(r, "jobs", None)) for r in first] == [(logging.INFO, 0)]
    assert getattr(first[0], "retention", None) == "1d"

    harness.clock.advance(20 * 60)
    harness.tick()  # old is prunable now, but the last prune was 20 minutes ago
    assert harness.journal.get(old) is not None

    harness.clock.advance(41 * 60)
    harness.tick()
    assert harness.journal.get(old) is None
    last = [r for r in caplog.records if r.getMessage() == "journal pruned"][-1]
    assert (last.levelno, getattr(last, "jobs", None)) == (logging.INFO, 1)
    assert harness.journal.pruned_jobs_total() == 1


def test_unset_retention_never_prunes(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory()
    jobs = [finished(harness.journal, lab_host("hv90"), "cancelled") for _ in range(3)]
    for _ in range(3):
        harness.clock.advance(400 * DAY)
        harness.tick()
    assert harness.engine.prune_journal() == 0
    assert all(harness.journal.get(job) is not None for job in jobs)


def test_receiver_prunes_at_start_and_publishes_the_counter(
    lab: RunningLab, tmp_path: Path
) -> None:
    config = receiver_config(lab, tmp_path, interval="1h", journal_retention="1d")
    assert config.receiver is not None
    old = Journal(config.receiver.journal, clock=FakeClock(time.time() - 30 * DAY))
    pruned = finished(old, lab_host("hv90"), "cancelled")
    finished(old, lab_host("hv90"), "cancelled")
    old.close()
    receiver = start_receiver(config, poll_interval=0.05)
    try:
        deadline = time.monotonic() + 30
        while receiver.journal.get(pruned) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.journal.get(pruned) is None
        status, text = http("GET", receiver.url + "/metrics")
        assert status == 200 and isinstance(text, str)
        assert "# TYPE vmm_renewal_journal_pruned_jobs_total counter" in text
        assert "vmm_renewal_journal_pruned_jobs_total 1.0" in text
    finally:
        receiver.stop()
