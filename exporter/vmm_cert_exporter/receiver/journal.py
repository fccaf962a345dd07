"""The renewal journal: SQLite in WAL mode, the receiver's memory and its audit trail.

Its tables, the rules the database itself enforces and how a crash is recovered are in
docs/renewal.md ("The journal"); ``prune`` says what retention keeps."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from vmm_cert_exporter.receiver.planner import PROCEDURES

JOB_STATUSES: Final = (
    "planned",
    "waiting",
    "running",
    "succeeded",
    "failed",
    "already-fresh",
    "interrupted",
    "cancelled",
)
# Statuses a job can have while active (finished_at IS NULL).
ACTIVE_STATUSES: Final = ("planned", "waiting", "running", "interrupted", "failed")
TERMINAL_STATUSES: Final = ("planned", "succeeded", "failed", "already-fresh", "cancelled")
STEP_STATUSES: Final = ("started", "succeeded", "failed", "skipped", "unknown")
ATTEMPT_RESULTS: Final = ("succeeded", "failed", "already-fresh", "planned", "interrupted")
ALERT_OUTCOMES: Final = ("created", "joined", "rejected")
MODES: Final = ("dry-run", "execute")
# cohort: planned by the receiver itself ahead of a cohort's day (receiver.renew_ahead)
SOURCES: Final = ("alertmanager", "cli", "cohort")

SCHEMA_VERSION: Final = 2

# Label values and free text are clipped before they are stored: a hostile or broken client
# must not be able to grow the journal by megabytes per alert.
MAX_TEXT: Final = 2000
MAX_LABEL: Final = 256


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# The jobs table, apart: a migration rebuilds it under another name (SQLite cannot change a
# CHECK constraint in place).
_JOBS_COLUMNS = f"""(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    host_key TEXT NOT NULL,
    role TEXT NOT NULL,
    vmm_server TEXT,
    is_vmm_server INTEGER NOT NULL CHECK (is_vmm_server IN (0, 1)),
    procedure TEXT NOT NULL CHECK (procedure IN {_in(PROCEDURES)}),
    mode TEXT NOT NULL CHECK (mode IN {_in(MODES)}),
    source TEXT NOT NULL CHECK (source IN {_in(SOURCES)}),
    status TEXT NOT NULL CHECK (status IN {_in(JOB_STATUSES)}),
    reason TEXT,
    failed_step TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    approved_at REAL,
    approved_by TEXT,
    owner TEXT,
    plan TEXT,
    certificates_before TEXT,
    certificates_after TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    cohort TEXT,
    planned_start_at REAL,
    CHECK ((source = 'cohort') = (cohort IS NOT NULL)),
    CHECK (CASE WHEN finished_at IS NULL THEN status IN {_in(ACTIVE_STATUSES)}
                ELSE status IN {_in(TERMINAL_STATUSES)} END),
    CHECK ((status = 'running') = (owner IS NOT NULL)),
    CHECK (NOT (status = 'failed' AND finished_at IS NULL AND next_attempt_at IS NULL)),
    CHECK (NOT (status = 'planned' AND finished_at IS NOT NULL AND mode = 'execute'))
)"""
_JOBS_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_job_per_host
    ON jobs (host_key) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_by_host ON jobs (host_key, id);
"""
_JOBS = f"CREATE TABLE IF NOT EXISTS jobs {_JOBS_COLUMNS};{_JOBS_INDEXES}"
# schema 1's columns of jobs, all kept by schema 2 (which adds cohort and planned_start_at)
_JOBS_1 = (
    "id, host, host_key, role, vmm_server, is_vmm_server, procedure, mode, source, status, "
    "reason, failed_step, attempt, failures, next_attempt_at, approved_at, approved_by, owner, "
    "plan, certificates_before, certificates_after, created_at, updated_at, finished_at"
)
_COPY_JOBS_FROM_1 = f"INSERT INTO jobs_v2 ({_JOBS_1}) SELECT {_JOBS_1} FROM jobs"  # noqa: S608 - constants

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
{_JOBS}CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('run', 'resume')),
    procedure TEXT NOT NULL,
    mode TEXT NOT NULL,
    owner TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    result TEXT CHECK (result IN {_in(ATTEMPT_RESULTS)}),
    failed_step TEXT,
    reason TEXT,
    PRIMARY KEY (job_id, attempt),
    CHECK ((result IS NULL) = (finished_at IS NULL))
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    params TEXT,
    status TEXT NOT NULL CHECK (status IN {_in(STEP_STATUSES)}),
    detail TEXT,
    result TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    FOREIGN KEY (job_id, attempt) REFERENCES attempts (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS steps_by_job ON steps (job_id, id);
CREATE TABLE IF NOT EXISTS webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    receiver TEXT,
    group_key TEXT,
    alerts INTEGER NOT NULL,
    remote TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id INTEGER REFERENCES webhooks (id),
    received_at REAL NOT NULL,
    alertname TEXT,
    host TEXT,
    status TEXT,
    fingerprint TEXT,
    starts_at TEXT,
    mode TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN {_in(ALERT_OUTCOMES)}),
    reason TEXT,
    job_id INTEGER REFERENCES jobs (id),
    CHECK ((outcome = 'rejected') = (job_id IS NULL))
);
CREATE INDEX IF NOT EXISTS alerts_by_identity ON alerts (fingerprint, starts_at, mode);
CREATE INDEX IF NOT EXISTS alerts_by_job ON alerts (job_id);
-- for pruning: deleting a webhook checks (foreign key) that no alert refers to it
CREATE INDEX IF NOT EXISTS alerts_by_webhook ON alerts (webhook_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    job_id INTEGER REFERENCES jobs (id),
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT
);
CREATE TABLE IF NOT EXISTS pruned_attempts (
    procedure TEXT NOT NULL,
    result TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (procedure, result)
);
"""


class JournalError(Exception):
    """The journal cannot be opened or used (the message says which file and why)."""


class ActiveJobExists(Exception):
    """The host already has an active job (the unique index said so)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} is already active for this host")
        self.job_id = job_id


class JobConflict(Exception):
    """An API action that the job's current status does not allow (HTTP 409)."""


def clip(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as storable UTF-8 of at most ``limit`` characters.

    Lone surrogates (valid in JSON escapes, not in UTF-8) are replaced: SQLite would refuse
    them and a client must not be able to make the journal raise.
    """
    value = text if isinstance(text, str) else str(text)
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: object) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Job:
    id: int
    host: str
    host_key: str
    role: str
    vmm_server: str | None
    is_vmm_server: bool
    procedure: str
    mode: str
    source: str
    status: str
    reason: str | None
    failed_step: str | None
    attempt: int
    failures: int
    next_attempt_at: float | None
    approved_at: float | None
    approved_by: str | None
    owner: str | None
    plan: dict[str, Any] | None
    certificates_before: list[dict[str, Any]] | None
    certificates_after: list[dict[str, Any]] | None
    created_at: float
    updated_at: float
    finished_at: float | None
    cohort: str | None = None  # source cohort: the cohort day (YYYY-MM-DD) it renews
    planned_start_at: float | None = None  # source cohort: when the schedule starts it

    @property
    def active(self) -> bool:
        return self.finished_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "role": self.role,
            "vmm_server": self.vmm_server,
            "procedure": self.procedure,
            "mode": self.mode,
            "source": self.source,
            "status": self.status,
            "active": self.active,
            "reason": self.reason,
            "failed_step": self.failed_step,
            "attempt": self.attempt,
            "failures": self.failures,
            "next_attempt_at": iso(self.next_attempt_at),
            "approved_at": iso(self.approved_at),
            "approved_by": self.approved_by,
            "certificates_before": self.certificates_before,
            "certificates_after": self.certificates_after,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "finished_at": iso(self.finished_at),
            "cohort": self.cohort,
            "planned_start_at": iso(self.planned_start_at),
        }


@dataclass(frozen=True)
class CohortJob:
    """A job ``renew_ahead`` plans: one computer of a cohort and its planned start."""

    host: str
    role: str
    vmm_server: str
    is_vmm_server: bool
    procedure: str
    reason: str
    cohort: str
    planned_start_at: float


@dataclass(frozen=True)
class Step:
    id: int
    job_id: int
    attempt: int
    name: str
    target: str
    params: dict[str, Any] | None
    status: str
    detail: str | None
    result: Any
    started_at: float
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "attempt": self.attempt,
            "name": self.name,
            "target": self.target,
            "params": self.params,
            "status": self.status,
            "detail": self.detail,
            "result": self.result,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


@dataclass(frozen=True)
class Attempt:
    job_id: int
    attempt: int
    kind: str
    procedure: str
    mode: str
    owner: str
    started_at: float
    finished_at: float | None
    result: str | None
    failed_step: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "kind": self.kind,
            "procedure": self.procedure,
            "mode": self.mode,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "result": self.result,
            "failed_step": self.failed_step,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PauseState:
    paused: bool
    by: str | None = None
    at: float | None = None
    reason: str | None = None


def max_concurrent_reason(running: int) -> str:
    """Why a job waits for ``max_concurrent`` (the claim's answer, and the engine's)."""
    return f"max_concurrent reached ({running} running)"


def max_per_server_reason(running: int, vmm_server: str) -> str:
    """Why a job waits for ``max_concurrent_per_vmm_server``."""
    return f"max_concurrent_per_vmm_server reached ({running} running on {vmm_server})"


def one_server_renewal_reason(running: Job) -> str:
    """Why a VMM server's job waits while another job renews that server's certificate: a
    VMM server goes by several names (its role name, its nodes, an alias), each may alert
    and get a job, and all of them renew one certificate on one server."""
    return (
        f"one renewal at a time of {running.vmm_server}'s own certificate: job "
        f"{running.id} ({running.host}) is renewing it"
    )


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to start a job: the new attempt number, or why not."""

    attempt: int | None
    blocked: str | None = None
    limited: bool = False  # refused for a concurrency limit: the job waits for it


@dataclass(frozen=True)
class Pruned:
    """What one ``prune`` deleted: jobs (with their attempts, steps, alerts and events) and
    the rows of no job (rejected alerts, webhooks, events)."""

    jobs: int = 0
    steps: int = 0
    alerts: int = 0
    webhooks: int = 0
    events: int = 0


# The jobs table's columns, in its order: ``_job`` reads a row by position (a scheduling
# pass reads every active job, and names cost twice as much), so the journal checks the
# order when it opens.
_JOB_COLUMNS: Final = tuple(f.name for f in fields(Job))


def _job(row: sqlite3.Row) -> Job:
    (
        job_id, host, host_key, role, vmm_server, is_vmm_server, procedure, mode, source,
        status, reason, failed_step, attempt, failures, next_attempt_at, approved_at,
        approved_by, owner, plan, certificates_before, certificates_after, created_at,
        updated_at, finished_at, cohort, planned_start_at,
    ) = row  # fmt: skip
    return Job(
        job_id, host, host_key, role, vmm_server, bool(is_vmm_server), procedure, mode,
        source, status, reason, failed_step, attempt, failures, next_attempt_at, approved_at,
        approved_by, owner, _loads(plan), _loads(certificates_before),
        _loads(certificates_after), created_at, updated_at, finished_at, cohort,
        planned_start_at,
    )  # fmt: skip


def _step(row: sqlite3.Row) -> Step:
    return Step(
        id=row["id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        name=row["name"],
        target=row["target"],
        params=_loads(row["params"]),
        status=row["status"],
        detail=row["detail"],
        result=_loads(row["result"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(
        job_id=row["job_id"],
        attempt=row["attempt"],
        kind=row["kind"],
        procedure=row["procedure"],
        mode=row["mode"],
        owner=row["owner"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result=row["result"],
        failed_step=row["failed_step"],
        reason=row["reason"],
    )


# --------------------------------------------------------------------------------------------
# Owners: which process runs a job, and whether it is still alive


def owners_dir(journal_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(journal_path)}.owners")


class OwnerLock:
    """A process's claim to the jobs it runs: an ``flock`` held on a file of its own.

    The kernel drops the lock when the process dies, however it dies (``kill -9``
    included), so ``owner_alive`` can tell a crashed owner from a live one without guessing
    from timestamps. Several owners (the receiver and a ``renew --execute`` by hand) may
    use one journal at once.
    """

    def __init__(self, journal_path: str | os.PathLike[str], prefix: str = "receiver") -> None:
        self.id = f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        directory = owners_dir(journal_path)
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{self.id}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def owner_alive(journal_path: str | os.PathLike[str], owner: str) -> bool:
    """Whether the process that wrote ``owner`` still holds its lock."""
    if not owner or "/" in owner or owner.startswith("."):
        return False
    path = owners_dir(journal_path) / f"{owner}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    # We got the lock: its owner is gone. The file is left for the owner's successor to
    # ignore (unlinking here could race with nothing, but keeps the directory tidy).
    with contextlib.suppress(OSError):
        path.unlink()
    return False


# --------------------------------------------------------------------------------------------
# The journal


class Journal:
    """Thread-safe access to the journal file; every write is one committed transaction."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time):
        self.path = os.fspath(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write
            # transaction takes SQLite's write lock before it reads what it will change.
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode})")
            # FULL: a commit is on disk before we send the script it announces.
            self._db.execute("PRAGMA synchronous=FULL")
            # off while the schema is set up: a migration replaces the jobs table, which the
            # other tables refer to (checked with foreign_key_check before it commits)
            self._db.execute("PRAGMA foreign_keys=OFF")
            # IF NOT EXISTS throughout: opening an existing journal changes nothing.
            self._db.executescript(_SCHEMA)
            with self._write() as db:
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                elif row["value"] == "1":
                    self._migrate_from_1(db)
                elif row["value"] != str(SCHEMA_VERSION):
                    raise JournalError(
                        f"{self.path}: journal schema {row['value']} is not {SCHEMA_VERSION}, "
                        "the one this version writes"
                    )
            self._db.execute("PRAGMA foreign_keys=ON")
            columns = tuple(r["name"] for r in self._db.execute("PRAGMA table_info(jobs)"))
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc
        if columns != _JOB_COLUMNS:
            raise JournalError(
                f"{self.path}: the jobs table has the columns {', '.join(columns)}; this "
                f"version reads {', '.join(_JOB_COLUMNS)}, in that order"
            )
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)

    def _migrate_from_1(self, db: sqlite3.Connection) -> None:
        """Schema 1 to 2: jobs.source may also be ``cohort``, and such a job names its cohort
        and planned start (two new columns, NULL for the jobs already there). SQLite cannot
        change a CHECK constraint, so the table is rebuilt in the open transaction: a crash
        leaves the journal at schema 1, whole."""
        sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        db.execute(f"CREATE TABLE jobs_v2 {_JOBS_COLUMNS}")
        db.execute(_COPY_JOBS_FROM_1)
        db.execute("DROP TABLE jobs")
        db.execute("ALTER TABLE jobs_v2 RENAME TO jobs")
        for statement in _JOBS_INDEXES.split(";"):
            if statement.strip():
                db.execute(statement)
        if sequence is not None:
            # ids of pruned jobs are never given out again
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'jobs'", (sequence[0],))
        broken = db.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise JournalError(
                f"{self.path}: migrating the journal from schema 1 found {len(broken)} rows "
                "referring to missing rows; nothing was changed"
            )
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        self._event(db, None, "migrated", f"journal schema 1 -> {SCHEMA_VERSION}")

    def now(self) -> float:
        return self._clock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, tuple(args)).fetchall())

    def _event(self, db: sqlite3.Connection, job_id: int | None, kind: str, message: str) -> None:
        db.execute(
            "INSERT INTO events (at, job_id, kind, message) VALUES (?, ?, ?, ?)",
            (self._clock(), job_id, kind, clip(message)),
        )

    def event(self, kind: str, message: str, job_id: int | None = None) -> None:
        with self._write() as db:
            self._event(db, job_id, kind, message)

    # ---- jobs: reading ------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def must_get(self, job_id: int) -> Job:
        """A job that exists (only long-finished jobs are ever pruned); JournalError otherwise."""
        job = self.get(job_id)
        if job is None:
            raise JournalError(f"{self.path}: job {job_id} vanished from the journal")
        return job

    def active_job(self, host: str) -> Job | None:
        rows = self._read(
            "SELECT * FROM jobs WHERE host_key = ? AND finished_at IS NULL", (host.lower(),)
        )
        return _job(rows[0]) if rows else None

    def list_jobs(
        self, *, limit: int = 100, status: str | None = None, host: str | None = None
    ) -> list[Job]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if host is not None:
            where.append("host_key = ?")
            args.append(host.lower())
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(str(max(1, min(limit, 10000))))
        return [_job(r) for r in self._read(sql, args)]

    def active_jobs(self) -> list[Job]:
        return [
            _job(r) for r in self._read("SELECT * FROM jobs WHERE finished_at IS NULL ORDER BY id")
        ]

    def steps(self, job_id: int) -> list[Step]:
        return [
            _step(r)
            for r in self._read("SELECT * FROM steps WHERE job_id = ? ORDER BY id", (job_id,))
        ]

    def attempts(self, job_id: int) -> list[Attempt]:
        return [
            _attempt(r)
            for r in self._read(
                "SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,)
            )
        ]

    def events(self, job_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if job_id is None:
            rows = self._read("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                "SELECT * FROM events WHERE job_id = ? ORDER BY id DESC LIMIT ?", (job_id, limit)
            )
        return [
            {"at": iso(r["at"]), "kind": r["kind"], "message": r["message"], "job_id": r["job_id"]}
            for r in reversed(rows)
        ]

    def job_alerts(self, job_id: int) -> list[dict[str, Any]]:
        return [
            {
                "received_at": iso(r["received_at"]),
                "alertname": r["alertname"],
                "fingerprint": r["fingerprint"],
                "starts_at": r["starts_at"],
                "outcome": r["outcome"],
                "reason": r["reason"],
            }
            for r in self._read("SELECT * FROM alerts WHERE job_id = ? ORDER BY id", (job_id,))
        ]

    def rejected_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._read(
            "SELECT * FROM alerts WHERE outcome = 'rejected' ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [
            {
                "received_at": iso(r["received_at"]),
                "alertname": r["alertname"],
                "host": r["host"],
                "status": r["status"],
                "fingerprint": r["fingerprint"],
                "reason": r["reason"],
            }
            for r in rows
        ]

    def job_for_alert(self, fingerprint: str, starts_at: str, mode: str) -> int | None:
        """The job an earlier copy of this alert (same fingerprint and start) led to."""
        rows = self._read(
            "SELECT job_id FROM alerts WHERE fingerprint = ? AND starts_at = ? AND mode = ? "
            "AND job_id IS NOT NULL ORDER BY id LIMIT 1",
            (fingerprint, starts_at, mode),
        )
        return int(rows[0]["job_id"]) if rows else None

    def recent_job(self, host: str, mode: str, since: float) -> int | None:
        """The newest job for ``host`` in ``mode`` created at or after ``since``."""
        rows = self._read(
            "SELECT id FROM jobs WHERE host_key = ? AND mode = ? AND created_at >= ? "
            "ORDER BY id DESC LIMIT 1",
            (host.lower(), mode, since),
        )
        return int(rows[0]["id"]) if rows else None

    def last_fresh_at(self, host: str, mode: str = "execute") -> float | None:
        """When ``host`` last ended a job succeeded or already fresh (for the cooldown)."""
        rows = self._read(
            "SELECT MAX(finished_at) AS t FROM jobs WHERE host_key = ? AND mode = ? "
            "AND status IN ('succeeded', 'already-fresh')",
            (host.lower(), mode),
        )
        value = rows[0]["t"] if rows else None
        return None if value is None else float(value)

    def last_fresh_of_active_hosts(self, mode: str = "execute") -> dict[str, float]:
        """``last_fresh_at`` of every host (key) with an active job, in one query: what a
        scheduling pass needs for the cooldown, whatever the number of jobs waiting."""
        rows = self._read(
            "SELECT host_key, MAX(finished_at) AS t FROM jobs WHERE mode = ? "
            "AND status IN ('succeeded', 'already-fresh') "
            "AND host_key IN (SELECT host_key FROM jobs WHERE finished_at IS NULL) "
            "GROUP BY host_key",
            (mode,),
        )
        return {r["host_key"]: float(r["t"]) for r in rows}

    def cohort_left(self, job: Job) -> int:
        """For a VMM server's cohort job: the active jobs of its cohort for the computers
        that VMM server manages (its own names, and any VMM server's, left out), which it
        waits for (``guards.cohort_order_reason``). 0 for any other job."""
        if not job.is_vmm_server or job.cohort is None or job.vmm_server is None:
            return 0
        rows = self._read(
            "SELECT COUNT(*) AS n FROM jobs WHERE cohort = ? AND lower(vmm_server) = ? "
            "AND is_vmm_server = 0 AND finished_at IS NULL",
            (job.cohort, job.vmm_server.lower()),
        )
        return int(rows[0]["n"])

    def cohort_hosts(self, cohort: str, mode: str) -> set[str]:
        """The hosts (keys) that already had a job in ``mode`` planned for ``cohort``: a
        cohort is planned once per host, whatever became of the job."""
        rows = self._read(
            "SELECT DISTINCT host_key FROM jobs WHERE cohort = ? AND mode = ?", (cohort, mode)
        )
        return {r["host_key"] for r in rows}

    def running_counts(self, mode: str) -> tuple[int, dict[str, int]]:
        """Running jobs in ``mode`` (across every process on this journal): total, by server."""
        rows = self._read(
            "SELECT lower(coalesce(vmm_server, '')) AS s, COUNT(*) AS n FROM jobs "
            "WHERE status = 'running' AND mode = ? GROUP BY s",
            (mode,),
        )
        by_server = {r["s"]: int(r["n"]) for r in rows}
        return sum(by_server.values()), by_server

    # ---- jobs: writing ------------------------------------------------------------------

    def create_job(
        self,
        *,
        host: str,
        role: str,
        vmm_server: str | None,
        is_vmm_server: bool,
        procedure: str,
        mode: str,
        source: str,
        reason: str | None = None,
        cohort: str | None = None,
        planned_start_at: float | None = None,
    ) -> Job:
        """Insert a ``planned`` job; ``ActiveJobExists`` if the host already has one."""
        now = self._clock()
        try:
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO jobs (host, host_key, role, vmm_server, is_vmm_server, "
                    "procedure, mode, source, status, reason, created_at, updated_at, cohort, "
                    "planned_start_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?, ?, ?)",
                    (
                        host,
                        host.lower(),
                        role,
                        vmm_server,
                        int(is_vmm_server),
                        procedure,
                        mode,
                        source,
                        reason,
                        now,
                        now,
                        cohort,
                        planned_start_at,
                    ),
                )
                job_id = int(cursor.lastrowid or 0)
                self._event(
                    db, job_id, "created", f"{mode} job for {host} ({procedure}) from {source}"
                )
        except sqlite3.IntegrityError as exc:
            existing = self.active_job(host)
            if existing is not None:
                raise ActiveJobExists(existing.id) from exc
            raise
        return self.must_get(job_id)

    def create_cohort_jobs(self, jobs: Sequence[CohortJob], mode: str) -> list[int]:
        """Insert ``planned`` jobs with ``source: cohort`` in one transaction (a cohort is
        thousands: one commit, not one each), in order, skipping every host that has an
        active job; the ids created."""
        now = self._clock()
        created: list[int] = []
        with self._write() as db:
            for job in jobs:
                host = job.host
                if db.execute(
                    "SELECT 1 FROM jobs WHERE host_key = ? AND finished_at IS NULL",
                    (host.lower(),),
                ).fetchone():
                    continue
                cursor = db.execute(
                    "INSERT INTO jobs (host, host_key, role, vmm_server, is_vmm_server, "
                    "procedure, mode, source, status, reason, created_at, updated_at, cohort, "
                    "planned_start_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'cohort', 'planned', ?, ?, "
                    "?, ?, ?)",
                    (
                        host,
                        host.lower(),
                        job.role,
                        job.vmm_server,
                        int(job.is_vmm_server),
                        job.procedure,
                        mode,
                        clip(job.reason),
                        now,
                        now,
                        job.cohort,
                        job.planned_start_at,
                    ),
                )
                job_id = int(cursor.lastrowid or 0)
                self._event(
                    db,
                    job_id,
                    "created",
                    f"{mode} job for {host} ({job.procedure}) from cohort {job.cohort}, "
                    f"planned to start at {iso(job.planned_start_at)}",
                )
                created.append(job_id)
        return created

    def set_waiting(self, job_id: int, reason: str) -> bool:
        """Mark a not-yet-running job as waiting for ``reason``; False if it changed meanwhile."""
        return job_id in self.set_waiting_many({job_id: reason})

    def set_waiting_many(self, reasons: Mapping[int, str]) -> set[int]:
        """``set_waiting`` for many jobs in one transaction (a scheduling pass's changes);
        the ids of the jobs that were still waitable."""
        waitable: set[int] = set()
        if not reasons:
            return waitable
        with self._write() as db:
            for job_id, reason in reasons.items():
                if self._set_waiting(db, job_id, reason):
                    waitable.add(job_id)
        return waitable

    def _set_waiting(self, db: sqlite3.Connection, job_id: int, reason: str) -> bool:
        row = db.execute(
            "SELECT status, reason FROM jobs WHERE id = ? AND finished_at IS NULL",
            (job_id,),
        ).fetchone()
        if row is None or row["status"] not in ("planned", "waiting", "failed"):
            return False
        if row["status"] == "failed":
            # A retry that is due but blocked: keep it failed (with its retry time) so
            # the failure stays visible; only the reason says what it waits for.
            if row["reason"] != reason:
                db.execute(
                    "UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ?",
                    (clip(reason), self._clock(), job_id),
                )
            return True
        if row["status"] == "waiting" and row["reason"] == reason:
            return True
        db.execute(
            "UPDATE jobs SET status = 'waiting', reason = ?, updated_at = ? WHERE id = ?",
            (clip(reason), self._clock(), job_id),
        )
        self._event(db, job_id, "waiting", reason)
        return True

    def claim(
        self,
        job_id: int,
        *,
        expected: Sequence[str],
        owner: str,
        kind: str = "run",
        max_running: int | None = None,
        max_per_server: int | None = None,
    ) -> Claim:
        """Atomically start the next attempt of a job if it is still in an ``expected``
        status and the concurrency limits (counted across processes) allow it."""
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["finished_at"] is not None or row["status"] not in expected:
                return Claim(None, "the job changed meanwhile")
            job = _job(row)
            if max_running is not None:
                total = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND mode = ?",
                    (job.mode,),
                ).fetchone()[0]
                if total >= max_running:
                    return Claim(None, max_concurrent_reason(total), limited=True)
            if max_per_server is not None and job.vmm_server is not None:
                per = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND mode = ? "
                    "AND lower(vmm_server) = ?",
                    (job.mode, job.vmm_server.lower()),
                ).fetchone()[0]
                if per >= max_per_server:
                    return Claim(None, max_per_server_reason(per, job.vmm_server), limited=True)
                if job.is_vmm_server and job.mode == "execute":
                    renewing = db.execute(
                        "SELECT * FROM jobs WHERE status = 'running' AND mode = 'execute' "
                        "AND is_vmm_server = 1 AND lower(vmm_server) = ? AND id != ? LIMIT 1",
                        (job.vmm_server.lower(), job.id),
                    ).fetchone()
                    if renewing is not None:
                        reason = one_server_renewal_reason(_job(renewing))
                        return Claim(None, reason, limited=True)
            attempt = job.attempt + 1
            db.execute(
                "UPDATE jobs SET status = 'running', owner = ?, attempt = ?, reason = NULL, "
                "next_attempt_at = NULL, updated_at = ? WHERE id = ?",
                (owner, attempt, now, job_id),
            )
            db.execute(
                "INSERT INTO attempts (job_id, attempt, kind, procedure, mode, owner, "
                "started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, attempt, kind, job.procedure, job.mode, owner, now),
            )
            self._event(db, job_id, "started", f"attempt {attempt} ({kind}) by {owner}")
            return Claim(attempt)

    def step_started(
        self,
        job_id: int,
        attempt: int,
        name: str,
        target: str,
        params: Mapping[str, object] | None = None,
    ) -> int:
        """Journal a step's intent; committed (and synced) before the step does anything."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO steps (job_id, attempt, name, target, params, status, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'started', ?)",
                (job_id, attempt, name, target, _dumps(params), self._clock()),
            )
            return int(cursor.lastrowid or 0)

    def step_finished(
        self, step_id: int, status: str, detail: str | None = None, result: object = None
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE steps SET status = ?, detail = ?, result = ?, finished_at = ? "
                "WHERE id = ? AND status = 'started'",
                (
                    status,
                    None if detail is None else clip(detail),
                    _dumps(result),
                    self._clock(),
                    step_id,
                ),
            )

    def step_skipped(self, job_id: int, attempt: int, name: str, target: str, detail: str) -> None:
        now = self._clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO steps (job_id, attempt, name, target, status, detail, started_at, "
                "finished_at) VALUES (?, ?, ?, ?, 'skipped', ?, ?, ?)",
                (job_id, attempt, name, target, clip(detail), now, now),
            )

    def set_plan(
        self,
        job_id: int,
        *,
        procedure: str,
        plan: Mapping[str, object],
        certificates_before: Sequence[Mapping[str, object]],
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET procedure = ?, plan = ?, certificates_before = ?, "
                "updated_at = ? WHERE id = ?",
                (procedure, _dumps(plan), _dumps(list(certificates_before)), self._clock(), job_id),
            )

    def finish_attempt(
        self,
        job_id: int,
        attempt: int,
        *,
        result: str,
        status: str,
        reason: str | None = None,
        failed_step: str | None = None,
        next_attempt_at: float | None = None,
        terminal: bool = True,
        count_failure: bool = False,
        certificates_after: Sequence[Mapping[str, object]] | None = None,
    ) -> Job:
        """End ``attempt`` with ``result`` and move the job to ``status``.

        ``terminal`` ends the job (``finished_at``); a non-terminal ``failed`` needs a
        ``next_attempt_at`` (the schema refuses it otherwise).
        """
        now = self._clock()
        with self._write() as db:
            db.execute(
                "UPDATE attempts SET finished_at = ?, result = ?, failed_step = ?, reason = ? "
                "WHERE job_id = ? AND attempt = ? AND finished_at IS NULL",
                (
                    now,
                    result,
                    failed_step,
                    None if reason is None else clip(reason),
                    job_id,
                    attempt,
                ),
            )
            db.execute(
                "UPDATE jobs SET status = ?, reason = ?, failed_step = ?, owner = NULL, "
                "next_attempt_at = ?, failures = failures + ?, updated_at = ?, "
                "finished_at = ?, certificates_after = coalesce(?, certificates_after) "
                "WHERE id = ?",
                (
                    status,
                    None if reason is None else clip(reason),
                    failed_step,
                    next_attempt_at,
                    int(count_failure),
                    now,
                    now if terminal else None,
                    _dumps(None if certificates_after is None else list(certificates_after)),
                    job_id,
                ),
            )
            message = f"attempt {attempt}: {result}"
            if failed_step:
                message += f" at {failed_step}"
            if reason:
                message += f": {reason}"
            if next_attempt_at is not None:
                message += f"; next attempt at {iso(next_attempt_at)}"
            self._event(db, job_id, result, message)
        return self.must_get(job_id)

    def recover(self, alive: Callable[[str], bool], *, exclude: str | None = None) -> list[int]:
        """Running jobs whose owner is gone become ``interrupted``; returns their ids.

        Their unfinished steps become ``unknown``: the script may or may not have run, and
        only a fresh read of the computer can tell (which is what resuming does).
        """
        rows = self._read("SELECT id, owner, attempt FROM jobs WHERE status = 'running'")
        dead = [r for r in rows if r["owner"] != exclude and not alive(r["owner"])]
        recovered: list[int] = []
        for row in dead:
            now = self._clock()
            with self._write() as db:
                changed = db.execute(
                    "UPDATE jobs SET status = 'interrupted', owner = NULL, updated_at = ?, "
                    "reason = ? WHERE id = ? AND status = 'running' AND owner = ?",
                    (
                        now,
                        f"the process running it ({row['owner']}) stopped",
                        row["id"],
                        row["owner"],
                    ),
                ).rowcount
                if not changed:
                    continue
                unfinished = db.execute(
                    "SELECT name FROM steps WHERE job_id = ? AND status = 'started'",
                    (row["id"],),
                ).fetchall()
                db.execute(
                    "UPDATE steps SET status = 'unknown', finished_at = ?, detail = "
                    "'outcome unknown: the receiver stopped while this step ran' "
                    "WHERE job_id = ? AND status = 'started'",
                    (now, row["id"]),
                )
                db.execute(
                    "UPDATE attempts SET finished_at = ?, result = 'interrupted', reason = ? "
                    "WHERE job_id = ? AND attempt = ? AND finished_at IS NULL",
                    (
                        now,
                        "interrupted" + (f" during {unfinished[-1]['name']}" if unfinished else ""),
                        row["id"],
                        row["attempt"],
                    ),
                )
                self._event(
                    db,
                    row["id"],
                    "interrupted",
                    f"owner {row['owner']} is gone; will resume from verification"
                    + (f" (step {unfinished[-1]['name']} outcome unknown)" if unfinished else ""),
                )
            recovered.append(int(row["id"]))
        return recovered

    def approve(self, job_id: int, by: str) -> Job:
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            job = _job(row)
            if not job.active or job.status not in ("planned", "waiting", "failed"):
                raise JobConflict(
                    f"job {job_id} is {job.status}: only active jobs not yet "
                    "running can be approved"
                )
            if job.mode != "execute":
                raise JobConflict(f"job {job_id} is a dry run: there is nothing to approve")
            if job.approved_at is not None:
                raise JobConflict(f"job {job_id} is already approved (by {job.approved_by})")
            db.execute(
                "UPDATE jobs SET approved_at = ?, approved_by = ?, updated_at = ? WHERE id = ?",
                (now, clip(by, MAX_LABEL), now, job_id),
            )
            self._event(db, job_id, "approved", f"approved by {by}")
        return self.must_get(job_id)

    def cancel(self, job_id: int, by: str) -> Job:
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            job = _job(row)
            if not job.active:
                raise JobConflict(f"job {job_id} is {job.status} and finished: nothing to cancel")
            if job.status == "running":
                # Stopping between the delete and the re-register would leave the host
                # without a certificate: a running job always finishes its runbook.
                raise JobConflict(
                    f"job {job_id} is running and cannot be stopped half-way; pause the "
                    "receiver to keep new jobs from starting"
                )
            db.execute(
                "UPDATE jobs SET status = 'cancelled', reason = ?, next_attempt_at = NULL, "
                "updated_at = ?, finished_at = ? WHERE id = ?",
                (clip(f"cancelled by {by}"), now, now, job_id),
            )
            self._event(db, job_id, "cancelled", f"cancelled by {by} (was {job.status})")
        return self.must_get(job_id)

    # ---- webhooks and alerts ------------------------------------------------------------

    def record_webhook(
        self,
        *,
        outcome: str,
        reason: str | None,
        receiver: str | None,
        group_key: str | None,
        alerts: int,
        remote: str | None,
    ) -> int:
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO webhooks (received_at, outcome, reason, receiver, group_key, "
                "alerts, remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self._clock(),
                    outcome,
                    None if reason is None else clip(reason),
                    None if receiver is None else clip(receiver, MAX_LABEL),
                    None if group_key is None else clip(group_key, MAX_LABEL),
                    alerts,
                    None if remote is None else clip(remote, MAX_LABEL),
                ),
            )
            return int(cursor.lastrowid or 0)

    def set_webhook_outcome(self, webhook_id: int, outcome: str) -> None:
        with self._write() as db:
            db.execute("UPDATE webhooks SET outcome = ? WHERE id = ?", (outcome, webhook_id))

    def record_alert(
        self,
        *,
        webhook_id: int | None,
        alertname: str | None,
        host: str | None,
        status: str | None,
        fingerprint: str | None,
        starts_at: str | None,
        mode: str,
        outcome: str,
        reason: str | None,
        job_id: int | None,
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO alerts (webhook_id, received_at, alertname, host, status, "
                "fingerprint, starts_at, mode, outcome, reason, job_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    webhook_id,
                    self._clock(),
                    None if alertname is None else clip(alertname, MAX_LABEL),
                    None if host is None else clip(host, MAX_LABEL),
                    None if status is None else clip(status, MAX_LABEL),
                    None if fingerprint is None else clip(fingerprint, MAX_LABEL),
                    None if starts_at is None else clip(starts_at, MAX_LABEL),
                    mode,
                    outcome,
                    None if reason is None else clip(reason),
                    job_id,
                ),
            )

    # ---- the pause switch -----------------------------------------------------------------

    def pause_state(self) -> PauseState:
        rows = self._read("SELECT * FROM settings WHERE key = 'paused'")
        if not rows:
            return PauseState(False)
        value = json.loads(rows[0]["value"])
        return PauseState(
            bool(value.get("paused")),
            rows[0]["updated_by"],
            rows[0]["updated_at"],
            value.get("reason"),
        )

    def set_paused(self, paused: bool, by: str, reason: str | None = None) -> PauseState:
        """Persisted: a receiver restarted while paused stays paused."""
        with self._write() as db:
            db.execute(
                "INSERT INTO settings (key, value, updated_at, updated_by) "
                "VALUES ('paused', ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value, updated_at = excluded.updated_at, "
                "updated_by = excluded.updated_by",
                (
                    json.dumps({"paused": paused, "reason": reason}),
                    self._clock(),
                    clip(by, MAX_LABEL),
                ),
            )
            self._event(db, None, "paused" if paused else "resumed", f"by {by}")
        return self.pause_state()

    # ---- retention ----------------------------------------------------------------------

    def prune(self, before: float) -> Pruned:
        """Delete what finished before ``before`` and nothing needs any more; one transaction.

        A job goes, with its attempts, steps, alerts and events, only if all of these hold:

        - it is finished (``finished_at`` set, a terminal status) before ``before``, and none
          of its attempts is unfinished: active jobs (planned, waiting, running, interrupted,
          failed with a retry pending) are never touched, so nothing a resume needs goes;
        - no alert joined it at or after ``before``: a repeat of a still-firing alert (same
          fingerprint and start) keeps joining the job it led to instead of starting a new one;
        - it is not its host's latest finished execute job, nor its host's latest succeeded
          one: ``vmm_renewal_host_failed`` (and so VMMCertificateRenewalFailed) and
          ``vmm_renewal_last_success_timestamp_seconds`` read those, whatever their age.

        The cooldown reads finished jobs back ``cooldown`` long (and a dry run's "planned
        recently" as long, by creation time): the configuration refuses a retention shorter
        than that. Retries and backoff live on the active job itself. Rows of no job older
        than ``before`` go too: rejected alerts, webhooks no remaining alert refers to, and
        events of no job. The attempts deleted are added to ``pruned_attempts`` so that
        ``vmm_renewal_jobs_total`` never goes down.
        """
        with self._write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS prune_jobs (id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM prune_jobs")
            # finished_at is set exactly on the terminal statuses (the schema's CHECK)
            db.execute(
                "INSERT INTO prune_jobs (id) SELECT j.id FROM jobs j "
                "WHERE j.finished_at IS NOT NULL AND j.finished_at < :before "
                "AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = j.id "
                "AND a.finished_at IS NULL) "
                "AND NOT EXISTS (SELECT 1 FROM alerts al WHERE al.job_id = j.id "
                "AND al.received_at >= :before) "
                # a host's latest finished execute job (vmm_renewal_host_failed)
                "AND j.id NOT IN (SELECT MAX(id) FROM jobs WHERE mode = 'execute' "
                "AND finished_at IS NOT NULL GROUP BY host_key) "
                # its latest success (vmm_renewal_last_success_timestamp_seconds)
                "AND NOT (j.status = 'succeeded' AND j.mode = 'execute' AND NOT EXISTS "
                "(SELECT 1 FROM jobs s WHERE s.host_key = j.host_key AND s.mode = 'execute' "
                "AND s.status = 'succeeded' AND (s.finished_at > j.finished_at "
                "OR (s.finished_at = j.finished_at AND s.id > j.id))))",
                {"before": before},
            )
            jobs = db.execute("SELECT COUNT(*) FROM prune_jobs").fetchone()[0]
            if jobs:
                db.execute(
                    "INSERT INTO pruned_attempts (procedure, result, count) "
                    "SELECT procedure, result, COUNT(*) FROM attempts "
                    "WHERE job_id IN (SELECT id FROM prune_jobs) AND result IS NOT NULL "
                    "GROUP BY procedure, result "
                    "ON CONFLICT (procedure, result) DO UPDATE SET count = count + excluded.count"
                )
            # children first: the foreign keys are enforced
            steps = db.execute(
                "DELETE FROM steps WHERE job_id IN (SELECT id FROM prune_jobs)"
            ).rowcount
            db.execute("DELETE FROM attempts WHERE job_id IN (SELECT id FROM prune_jobs)")
            events = db.execute(
                "DELETE FROM events WHERE job_id IN (SELECT id FROM prune_jobs)"
            ).rowcount
            alerts = db.execute(
                "DELETE FROM alerts WHERE job_id IN (SELECT id FROM prune_jobs)"
            ).rowcount
            db.execute("DELETE FROM jobs WHERE id IN (SELECT id FROM prune_jobs)")
            db.execute("DELETE FROM prune_jobs")
            alerts += db.execute(
                "DELETE FROM alerts WHERE job_id IS NULL AND received_at < ?", (before,)
            ).rowcount
            webhooks = db.execute(
                "DELETE FROM webhooks WHERE received_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM alerts WHERE alerts.webhook_id = webhooks.id)",
                (before,),
            ).rowcount
            events += db.execute(
                "DELETE FROM events WHERE job_id IS NULL AND at < ?", (before,)
            ).rowcount
            if jobs:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('pruned_jobs', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                    (str(jobs), jobs),
                )
        return Pruned(int(jobs), steps, alerts, webhooks, events)

    def pruned_jobs_total(self) -> int:
        """Jobs ever pruned from this journal (``vmm_renewal_journal_pruned_jobs_total``)."""
        rows = self._read("SELECT value FROM meta WHERE key = 'pruned_jobs'")
        return int(rows[0]["value"]) if rows else 0

    # ---- metrics ------------------------------------------------------------------------

    def attempt_counts(self) -> dict[tuple[str, str], int]:
        """Attempts that ended, by procedure and result, pruned ones included."""
        rows = self._read(
            "SELECT procedure, result, SUM(n) AS n FROM ("
            "SELECT procedure, result, COUNT(*) AS n FROM attempts WHERE result IS NOT NULL "
            "GROUP BY procedure, result "
            "UNION ALL SELECT procedure, result, count AS n FROM pruned_attempts"
            ") GROUP BY procedure, result"
        )
        return {(r["procedure"], r["result"]): int(r["n"]) for r in rows}

    def last_success_by_host(self) -> dict[str, float]:
        rows = self._read(
            "SELECT host_key, MAX(finished_at) AS t FROM jobs WHERE status = 'succeeded' "
            "AND mode = 'execute' GROUP BY host_key"
        )
        hosts = {
            r["host_key"]: r["host"]
            for r in self._read("SELECT host_key, host FROM jobs GROUP BY host_key")
        }
        return {hosts.get(r["host_key"], r["host_key"]): float(r["t"]) for r in rows}

    def approved_share(self) -> float:
        """The share of the active execute jobs a person approved (1.0 when there is none):
        with require_approval, what the capacity is scaled by (docs/renewal.md#cohorts)."""
        rows = self._read(
            "SELECT COUNT(*) AS n, COUNT(approved_at) AS approved FROM jobs "
            "WHERE finished_at IS NULL AND mode = 'execute'"
        )
        total, approved = int(rows[0]["n"]), int(rows[0]["approved"])
        return 1.0 if total == 0 else approved / total

    def renewal_durations(self) -> dict[str, list[float]]:
        """Seconds each successful execute attempt took, by procedure: the measured cost of a
        renewal that capacity planning uses (docs/renewal.md#cohorts)."""
        rows = self._read(
            "SELECT procedure, finished_at - started_at AS took FROM attempts "
            "WHERE result = 'succeeded' AND mode = 'execute' ORDER BY procedure"
        )
        durations: dict[str, list[float]] = {}
        for r in rows:
            durations.setdefault(r["procedure"], []).append(float(r["took"]))
        return durations

    def renewed_not_afters(self) -> list[float]:
        """For each computer an execute job renewed, the NotAfter its certificate had before:
        which cohort it was renewed out of."""
        rows = self._read(
            "SELECT certificates_before FROM jobs WHERE status = 'succeeded' "
            "AND mode = 'execute' AND certificates_before IS NOT NULL"
        )
        out: list[float] = []
        for r in rows:
            before = _loads(r["certificates_before"])
            stamps = [
                datetime.fromisoformat(c["not_after"]).timestamp()
                for c in before
                if isinstance(c, dict) and isinstance(c.get("not_after"), str)
            ]
            if stamps:
                out.append(max(stamps))
        return out

    def status_counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE finished_at IS NULL GROUP BY status"
        )
        return {r["status"]: int(r["n"]) for r in rows}

    def failed_hosts(self) -> list[Job]:
        """Hosts whose most recent execute job failed (retry pending or given up)."""
        # "most recent" among jobs that got as far as an outcome: a new job that is only
        # planned or waiting has fixed nothing yet and must not hide the failure
        rows = self._read(
            "SELECT j.* FROM jobs j JOIN (SELECT host_key, MAX(id) AS id FROM jobs "
            "WHERE mode = 'execute' AND (finished_at IS NOT NULL OR status = 'failed') "
            "GROUP BY host_key) last ON j.id = last.id WHERE j.status = 'failed'"
        )
        return [_job(r) for r in rows]
