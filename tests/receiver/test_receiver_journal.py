"""The journal: rules the database itself enforces, claims, recovery after a crash."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmm_cert_exporter.receiver import journal as journal_module
from vmm_cert_exporter.receiver.journal import (
    ActiveJobExists,
    JobConflict,
    Journal,
    JournalError,
    OwnerLock,
    clip,
    owner_alive,
)
from vmm_cert_lab.receiver_testing import FakeClock, new_job


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "j.sqlite", clock=FakeClock(1_900_000_000.0))


def test_wal_full_sync_and_private_file(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert os.stat(journal.path).st_mode & 0o777 == 0o600
    # reopening keeps everything (and the schema version)
    job_id = new_job(journal)
    journal.close()
    again = Journal(journal.path)
    job = again.get(job_id)
    assert job is not None and job.status == "planned"


def test_one_active_job_per_host_case_insensitive(journal: Journal) -> None:
    first = new_job(journal, "hv01.lab.example")
    with pytest.raises(ActiveJobExists) as caught:
        new_job(journal, "HV01.Lab.Example")
    assert caught.value.job_id == first
    # a dry run of another host is fine; after cancelling, the host can have a new job
    new_job(journal, "hv02.lab.example", mode="dry-run")
    journal.cancel(first, "test")
    assert new_job(journal, "hv01.lab.example") != first


@pytest.mark.parametrize(
    "sql",
    [
        # a second active job for the same host, behind the code's back
        "INSERT INTO jobs (host, host_key, role, is_vmm_server, procedure, mode, source, status,"
        " created_at, updated_at) VALUES ('x', 'hv01.lab.example', 'hyperv_host', 0,"
        " 'remove-register', 'execute', 'alertmanager', 'waiting', 0, 0)",
        # running without an owner
        "UPDATE jobs SET status = 'running' WHERE id = 1",
        # an owner without running
        "UPDATE jobs SET owner = 'someone' WHERE id = 1",
        # a terminal status that is still active
        "UPDATE jobs SET status = 'succeeded' WHERE id = 1",
        # an active failure without a retry time
        "UPDATE jobs SET status = 'failed' WHERE id = 1",
        # an execute job finished as 'planned' (only dry runs end planned)
        "UPDATE jobs SET finished_at = 1 WHERE id = 1",
        # statuses, procedures and modes outside the contract
        "UPDATE jobs SET status = 'done' WHERE id = 1",
        "UPDATE jobs SET procedure = 'remove-and-add' WHERE id = 1",
        "UPDATE jobs SET mode = 'yolo' WHERE id = 1",
    ],
)
def test_schema_refuses_impossible_states(journal: Journal, sql: str) -> None:
    assert new_job(journal) == 1
    db = sqlite3.connect(journal.path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(sql)
        db.commit()
    db.close()


def test_claim_is_compare_and_set_with_limits(journal: Journal) -> None:
    a = new_job(journal, "hv01.lab.example")
    b = new_job(journal, "hv02.lab.example")
    owner = "receiver-test-1"
    assert journal.claim(a, expected=("waiting",), owner=owner).attempt is None
    assert journal.claim(a, expected=("planned",), owner=owner, max_running=1).attempt == 1
    blocked = journal.claim(b, expected=("planned",), owner=owner, max_running=1)
    assert blocked.attempt is None and blocked.blocked == "max_concurrent reached (1 running)"
    blocked = journal.claim(b, expected=("planned",), owner=owner, max_per_server=1)
    assert blocked.blocked is not None and "per_vmm_server" in blocked.blocked
    assert journal.claim(b, expected=("planned",), owner=owner, max_running=2).attempt == 1
    assert journal.running_counts("execute") == (2, {"vmm01.lab.example": 2})


def _hold_lock_in_child(journal_path: str) -> tuple[subprocess.Popen[str], str]:
    code = (
        "import sys, time\n"
        "from vmm_cert_exporter.receiver.journal import OwnerLock\n"
        "lock = OwnerLock(sys.argv[1])\n"
        "print(lock.id, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, journal_path], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def test_recover_interrupts_jobs_of_a_killed_owner(journal: Journal) -> None:
    child, owner = _hold_lock_in_child(journal.path)
    try:
        assert owner_alive(journal.path, owner)
        job_id = new_job(journal)
        attempt = journal.claim(job_id, expected=("planned",), owner=owner).attempt
        assert attempt == 1
        journal.step_finished(
            journal.step_started(job_id, 1, "preflight", "hv01.lab.example"), "succeeded"
        )
        journal.step_started(job_id, 1, "remove-certificates", "hv01.lab.example", {"t": 1})
        me = OwnerLock(journal.path)
        # the owner is alive: nothing to recover
        assert journal.recover(lambda o: owner_alive(journal.path, o), exclude=me.id) == []
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert not owner_alive(journal.path, owner)
        assert journal.recover(lambda o: owner_alive(journal.path, o), exclude=me.id) == [job_id]
        job = journal.get(job_id)
        assert job is not None and job.status == "interrupted" and job.owner is None
        assert [(s.name, s.status) for s in journal.steps(job_id)] == [
            ("preflight", "succeeded"),
            ("remove-certificates", "unknown"),
        ]
        assert journal.attempts(job_id)[0].result == "interrupted"
        assert journal.attempts(job_id)[0].reason == "interrupted during remove-certificates"
        me.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_owner_alive_in_process_and_for_nonsense(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    lock = OwnerLock(path)
    assert owner_alive(path, lock.id)
    lock.release()
    assert not owner_alive(path, lock.id)
    for bad in ("", "../../etc/passwd", ".hidden", "nobody"):
        assert not owner_alive(path, bad)


def test_pause_is_persisted(journal: Journal) -> None:
    assert not journal.pause_state().paused
    journal.set_paused(True, "basic:ops", "change freeze")
    journal.close()
    again = Journal(journal.path)
    state = again.pause_state()
    assert state.paused and state.by == "basic:ops" and state.reason == "change freeze"


def test_approve_and_cancel_rules(journal: Journal) -> None:
    job_id = new_job(journal)
    dry = new_job(journal, "hv02.lab.example", mode="dry-run")
    with pytest.raises(JobConflict, match="dry run"):
        journal.approve(dry, "ops")
    assert journal.approve(job_id, "ops").approved_by == "ops"
    with pytest.raises(JobConflict, match="already approved"):
        journal.approve(job_id, "ops")
    journal.claim(job_id, expected=("planned",), owner="o")
    with pytest.raises(JobConflict, match="cannot be stopped half-way"):
        journal.cancel(job_id, "ops")
    journal.finish_attempt(job_id, 1, result="succeeded", status="succeeded")
    with pytest.raises(JobConflict, match="finished"):
        journal.cancel(job_id, "ops")
    with pytest.raises(KeyError):
        journal.cancel(999, "ops")


def test_text_is_clipped_and_made_storable(journal: Journal) -> None:
    assert clip("x" * 5000, 100) == "x" * 97 + "..."
    assert clip("bad \ud800 surrogate") == "bad \\ud800 surrogate"
    journal.record_alert(
        webhook_id=None,
        alertname="\ud83d" * 10,
        host="h" * 10_000,
        status="firing",
        fingerprint="0" * 16,
        starts_at="2030-01-01T00:00:00Z",
        mode="execute",
        outcome="rejected",
        reason="r" * 1_000_000,
        job_id=None,
    )
    rejected = journal.rejected_alerts()
    assert len(rejected[0]["host"]) == 256 and len(rejected[0]["reason"]) == 2000


def test_finish_attempt_needs_a_retry_time_for_active_failures(journal: Journal) -> None:
    job_id = new_job(journal)
    journal.claim(job_id, expected=("planned",), owner="o")
    with pytest.raises(sqlite3.IntegrityError):
        journal.finish_attempt(job_id, 1, result="failed", status="failed", terminal=False)
    # the refused transaction left the job as it was
    job = journal.get(job_id)
    assert job is not None and job.status == "running"
    when = time.time() + 3600
    job = journal.finish_attempt(
        job_id, 1, result="failed", status="failed", terminal=False, next_attempt_at=when
    )
    assert job.active and job.next_attempt_at == when


def _schema_1_journal(path: Path) -> None:
    """A journal as schema 1 wrote it: jobs.source only alertmanager or cli, with a job of
    each kind of history (finished with an attempt, a step, an alert; active; pruned)."""
    schema_1 = journal_module._SCHEMA
    # what schema 2 changed in jobs, undone
    for new, old in (
        ("('alertmanager', 'cli', 'cohort')", "('alertmanager', 'cli')"),
        ("    cohort TEXT,\n    planned_start_at REAL,\n", ""),
        ("    CHECK ((source = 'cohort') = (cohort IS NOT NULL)),\n", ""),
    ):
        assert schema_1.count(new) == 1, new
        schema_1 = schema_1.replace(new, old)
    db = sqlite3.connect(path)
    db.executescript(schema_1)
    db.executescript(
        """
        INSERT INTO meta (key, value) VALUES ('schema', '1');
        INSERT INTO jobs (id, host, host_key, role, vmm_server, is_vmm_server, procedure, mode,
            source, status, attempt, created_at, updated_at, finished_at)
            VALUES (7, 'hv01.lab.example', 'hv01.lab.example', 'hyperv_host',
            'vmm01.lab.example', 0, 'remove-register', 'execute', 'alertmanager', 'succeeded',
            1, 10, 20, 20);
        INSERT INTO attempts (job_id, attempt, kind, procedure, mode, owner, started_at,
            finished_at, result) VALUES (7, 1, 'run', 'remove-register', 'execute', 'o', 10, 20,
            'succeeded');
        INSERT INTO steps (job_id, attempt, name, target, status, started_at, finished_at)
            VALUES (7, 1, 'preflight', 'hv01.lab.example', 'succeeded', 10, 11);
        INSERT INTO alerts (received_at, mode, outcome, job_id) VALUES (9, 'execute',
            'created', 7);
        INSERT INTO jobs (id, host, host_key, role, vmm_server, is_vmm_server, procedure, mode,
            source, status, created_at, updated_at) VALUES (8, 'hv02.lab.example',
            'hv02.lab.example', 'hyperv_host', 'vmm01.lab.example', 0, 'remove-register',
            'execute', 'cli', 'waiting', 30, 30);
        UPDATE sqlite_sequence SET seq = 12 WHERE name = 'jobs';
        """
    )
    db.execute("CREATE TABLE schema_1 AS SELECT * FROM jobs")  # what the migration must keep
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "UPDATE jobs SET source = 'cohort' WHERE id = 8"
        )  # schema 1 refuses the new source
    db.close()


def test_a_schema_1_journal_is_migrated_whole(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _schema_1_journal(path)
    journal = Journal(path, clock=FakeClock(1_900_000_000.0))
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
    # every schema-1 row, column for column (EXCEPT compares NULLs as equal)
    columns = journal_module._JOBS_1
    # the module's constant, no input: S608 does not apply
    lost = f"SELECT * FROM schema_1 EXCEPT SELECT {columns} FROM jobs"  # noqa: S608
    added = f"SELECT {columns} FROM jobs EXCEPT SELECT * FROM schema_1"  # noqa: S608
    assert db.execute(lost).fetchall() == db.execute(added).fetchall() == []
    assert db.execute("SELECT cohort, planned_start_at FROM jobs").fetchall() == [(None, None)] * 2
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'jobs'")}
    assert {"jobs_one_active_job_per_host", "jobs_by_status", "jobs_by_host"} <= indexes
    db.close()
    # the old history reads as before, the new source is accepted, and the rules still hold
    assert [a.result for a in journal.attempts(7)] == ["succeeded"]
    assert journal.renewal_durations() == {"remove-register": [10.0]}
    with pytest.raises(ActiveJobExists):
        new_job(journal, "HV02.lab.example")
    job = journal.create_job(
        host="hv03.lab.example",
        role="hyperv_host",
        vmm_server="vmm01.lab.example",
        is_vmm_server=False,
        procedure="remove-register",
        mode="execute",
        source="cohort",
        cohort="2027-01-01",
        planned_start_at=1_900_000_600.0,
    )
    assert (job.id, job.source, job.cohort) == (13, "cohort", "2027-01-01")
    assert job.to_json()["planned_start_at"] == "2030-03-17T17:56:40.000Z"
    assert journal.cohort_hosts("2027-01-01", "execute") == {
        "hv03.lab.example"
    }  # pruned ids are not given out again
    assert any(e["kind"] == "migrated" for e in journal.events())
    journal.close()
    # opening a migrated journal changes nothing; a newer schema is refused
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="journal schema 3 is not 2"):
        Journal(path)


@pytest.mark.parametrize(
    ("source", "cohort"), [("someone", None), ("cohort", None), ("cli", "2027-01-01")]
)
def test_the_schema_refuses_an_unknown_source_and_a_cohort_out_of_place(
    journal: Journal, source: str, cohort: str | None
) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        journal.create_job(
            host="hv03.lab.example",
            role="hyperv_host",
            vmm_server="vmm01.lab.example",
            is_vmm_server=False,
            procedure="remove-register",
            mode="execute",
            source=source,
            cohort=cohort,
        )
