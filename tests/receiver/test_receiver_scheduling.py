"""One scheduling pass: it reads the active jobs once, writes only the reasons that changed,
and starts a VMM server's cohort job only after the cohort's other computers it manages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vmm_cert_exporter.receiver import guards
from vmm_cert_exporter.receiver.config import ReceiverConfig
from vmm_cert_exporter.receiver.journal import CohortJob, Journal, PauseState
from vmm_cert_exporter.receiver.passes import Pass
from vmm_cert_exporter.receiver.planner import REMOVE_REGISTER, UPDATE_CERTIFICATE
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.receiver_testing import FakeClock, Harness

COHORT = "2027-01-01"
T0 = 1_900_000_000.0


def cohort_job(
    host: str,
    vmm_server: str = "vmm01.lab.example",
    *,
    is_vmm_server: bool = False,
    cohort: str = COHORT,
) -> CohortJob:
    return CohortJob(
        host=host,
        role="vmm_server" if is_vmm_server else "hyperv_host",
        vmm_server=vmm_server,
        is_vmm_server=is_vmm_server,
        procedure=UPDATE_CERTIFICATE if is_vmm_server else REMOVE_REGISTER,
        reason=f"cohort {cohort}",
        cohort=cohort,
        planned_start_at=T0,
    )


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "j.sqlite", clock=FakeClock(T0))


# --------------------------------------------------------------------------------------------
# The VMM server last


def test_a_vmm_servers_cohort_job_counts_its_cohorts_other_active_computers(
    journal: Journal,
) -> None:
    ids = journal.create_cohort_jobs(
        [
            cohort_job("hv01.lab.example"),
            cohort_job("hv02.lab.example", "VMM01.Lab.Example"),  # any case
            cohort_job("hv03.lab.example"),
            cohort_job("hv04.lab.example"),
            cohort_job("hv09.lab.example", "vmm02.lab.example"),  # another VMM server's
            cohort_job("hv10.lab.example", cohort="2028-01-01"),  # another cohort
            # another name of the same VMM server: never waited for, so never a deadlock
            cohort_job("vmm01-node2.lab.example", is_vmm_server=True),
            cohort_job("vmm01.lab.example", is_vmm_server=True),
        ],
        "execute",
    )
    hv01, hv02, hv03, hv04 = ids[:4]
    server = journal.must_get(ids[-1])
    other_name = journal.must_get(ids[-2])
    assert journal.cohort_left(server) == journal.cohort_left(other_name) == 4
    assert journal.cohort_left(journal.must_get(hv01)) == 0  # not a VMM server
    assert Pass(journal, journal.active_jobs()).cohort_left(server) == 4

    # cancelled: no longer waited for; running, or failed with a retry due: still active
    journal.cancel(hv01, "test")
    assert journal.claim(hv02, expected=("planned",), owner="test").attempt == 1
    assert journal.claim(hv03, expected=("planned",), owner="test").attempt == 1
    journal.finish_attempt(
        hv03, 1, result="failed", status="failed", next_attempt_at=T0 + 3600, terminal=False
    )
    assert journal.cohort_left(server) == 3
    journal.finish_attempt(hv02, 1, result="succeeded", status="succeeded")
    journal.cancel(hv03, "test")
    assert journal.cohort_left(server) == 1
    journal.cancel(hv04, "test")
    assert journal.cohort_left(server) == 0
    assert Pass(journal, journal.active_jobs()).cohort_left(server) == 0


def test_the_cohort_order_reason_comes_after_every_other_guard(journal: Journal) -> None:
    (server_id,) = journal.create_cohort_jobs(
        [cohort_job("vmm01.lab.example", is_vmm_server=True)], "execute"
    )
    server = journal.must_get(server_id)
    config = ReceiverConfig(run_as_account="VMM Host Admins")
    open_, paused = PauseState(False), PauseState(True, by="ops")

    def reason(left: int, pause: PauseState = open_) -> str | None:
        return guards.blocked_reason(
            server, config, now=T0, pause=pause, last_fresh_at=None, cohort_left=left
        )

    assert reason(2) == (
        "the VMM server goes last: waiting for the cohort's 2 other computers of "
        "vmm01.lab.example to finish first (cohort 2027-01-01)"
    )
    assert reason(1) is not None and "cohort's 1 other computer of" in reason(1)  # type: ignore[operator]
    assert reason(0) is None
    assert (reason(2, paused) or "").startswith("paused by ops")
    # an alert's job for the VMM server is not a cohort's: nothing to wait for
    assert journal.cancel(server_id, "test")
    alert_job = journal.create_job(
        host="vmm01.lab.example",
        role="vmm_server",
        vmm_server="vmm01.lab.example",
        is_vmm_server=True,
        procedure=UPDATE_CERTIFICATE,
        mode="execute",
        source="alertmanager",
    )
    assert guards.cohort_order_reason(alert_job, 5) is None


def test_the_vmm_server_starts_after_the_last_of_its_cohort_not_beside_it(
    harness_factory: Callable[..., Harness],
) -> None:
    """Real renewals on the demo lab, with room for three at once: the two hosts start,
    the VMM server's job says what it waits for, and starts in the next pass only."""
    harness = harness_factory(max_concurrent=3, max_concurrent_per_vmm_server=3)
    vmm = lab_host("vmm01")
    hosts = [lab_host("hv31"), lab_host("hv32")]
    *host_ids, server_id = harness.journal.create_cohort_jobs(
        [*(cohort_job(h, vmm) for h in hosts), cohort_job(vmm, vmm, is_vmm_server=True)],
        "execute",
    )
    started = harness.engine.tick()
    assert len(started) == 2
    server = harness.job(server_id)
    assert (server.status, server.reason) == (
        "waiting",
        f"the VMM server goes last: waiting for the cohort's 2 other computers of {vmm} to "
        f"finish first (cohort {COHORT})",
    )
    for future in started:
        future.result()
    assert {harness.job(i).status for i in host_ids} == {"succeeded"}
    assert harness.fleet.count("update-vmm-certificate") == 0
    harness.clock.advance(60)
    harness.tick()
    server = harness.job(server_id)
    assert (server.status, server.procedure) == ("succeeded", UPDATE_CERTIFICATE), server.reason
    (server_attempt,) = harness.journal.attempts(server_id)
    last_host = max(a.finished_at or 0.0 for i in host_ids for a in harness.journal.attempts(i))
    assert server_attempt.started_at > last_host


# --------------------------------------------------------------------------------------------
# What a pass writes


def _events(journal: Journal) -> int:
    return len(journal.events(limit=100_000))


def test_a_pass_writes_only_the_reasons_that_changed(
    harness_factory: Callable[..., Harness],
) -> None:
    """Five jobs behind max_concurrent: 1 with one running. The first pass says why each
    waits; the next ones change nothing (no event, no update); a pause changes every reason
    in one pass, and resuming puts them back."""
    clock = FakeClock()
    harness = harness_factory(clock=clock, max_concurrent=1, max_concurrent_per_vmm_server=1)
    journal = harness.journal
    ids = journal.create_cohort_jobs(
        [cohort_job(lab_host(f"hv{n}")) for n in (31, 32, 33, 34, 35)], "execute"
    )
    running = ids[0]
    assert journal.claim(running, expected=("planned",), owner=harness.owner.id).attempt == 1
    harness.tick()
    waiting = [harness.job(i) for i in ids[1:]]
    assert {(j.status, j.reason) for j in waiting} == {
        ("waiting", "max_concurrent reached (1 running)")
    }
    events = _events(journal)
    # what SQLite is asked: per pass a few reads whatever the number of jobs waiting, and
    # no write transaction (not a claim and a set_waiting per waiting job)
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    for _ in range(3):
        clock.advance(60)
        assert harness.engine.tick() == []
    journal._db.set_trace_callback(None)
    assert not [s for s in statements if not s.startswith("SELECT")], statements
    assert len(statements) <= 3 * 5, statements
    assert _events(journal) == events
    assert [harness.job(i) for i in ids[1:]] == waiting  # updated_at included

    journal.set_paused(True, by="ops")
    harness.tick()
    assert {harness.job(i).reason.startswith("paused by ops") for i in ids[1:]} == {True}  # type: ignore[union-attr]
    assert _events(journal) == events + 1 + 4  # the pause, and each job's new reason
    journal.set_paused(False, by="ops")
    harness.tick()
    assert {harness.job(i).reason for i in ids[1:]} == {"max_concurrent reached (1 running)"}
    assert harness.fleet.count("remove-certificates") == 0


def test_a_count_gone_stale_during_the_pass_is_counted_again(journal: Journal) -> None:
    """The pass counts from its one read; an attempt that ended since does not hold the
    next job back: the limit is counted again from the journal before it says so."""
    first, second = journal.create_cohort_jobs(
        [cohort_job("hv01.lab.example"), cohort_job("hv02.lab.example")], "execute"
    )
    assert journal.claim(first, expected=("planned",), owner="test").attempt == 1
    scheduling = Pass(journal, journal.active_jobs())
    job = journal.must_get(second)
    journal.finish_attempt(first, 1, result="succeeded", status="succeeded")
    assert scheduling.limit_reason(job, 1, 1) is None
    scheduling.started(job)
    assert scheduling.limit_reason(job, 1, 5) == "max_concurrent reached (1 running)"
    assert scheduling.limit_reason(job, 5, 1) == (
        "max_concurrent_per_vmm_server reached (1 running on vmm01.lab.example)"
    )
