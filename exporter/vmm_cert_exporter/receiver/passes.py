"""What one scheduling pass knows after its one read of the active jobs.

``Engine.tick`` reads the active jobs once, then decides each of them from memory: the
running counts (for ``max_concurrent`` and ``max_concurrent_per_vmm_server``), each host's
last fresh renewal (for the cooldown: one query for every host), and the waiting reasons
that changed, written together in one transaction at the end of the pass. So with thousands
of jobs waiting behind ``max_concurrent`` a pass costs no SQLite transaction per job. The
claim still counts the limits itself, atomically across processes: the counts here only
spare the claims that would be refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vmm_cert_exporter.receiver.journal import (
    Job,
    Journal,
    max_concurrent_reason,
    max_per_server_reason,
    one_server_renewal_reason,
)


class Pass:
    """One scheduling pass over ``jobs`` (the journal's active jobs, read once)."""

    def __init__(self, journal: Journal, jobs: Sequence[Job]) -> None:
        self.journal = journal
        self.jobs = jobs
        self._running: Counter[str] = Counter()  # by mode
        self._per_server: Counter[tuple[str, str]] = Counter()  # by mode, server (lower case)
        # the execute job renewing each VMM server's own certificate (server, lower case)
        self._server_renewal: dict[str, Job] = {}
        for job in jobs:
            if job.status == "running":
                self.started(job)
        self._recounted: set[str] = set()
        self._fresh: dict[str, float] | None = None
        self._cohort_left: dict[tuple[str, str], int] = {}
        self.waits: dict[int, str] = {}

    # ---- what the guards need ------------------------------------------------------------

    def last_fresh_at(self, job: Job) -> float | None:
        """``Journal.last_fresh_at`` of the job's host (execute mode), one query a pass."""
        if self._fresh is None:
            self._fresh = self.journal.last_fresh_of_active_hosts()
        return self._fresh.get(job.host_key)

    def cohort_left(self, job: Job) -> int:
        """``Journal.cohort_left`` for a VMM server's cohort job (0 for any other job)."""
        if not job.is_vmm_server or job.cohort is None or job.vmm_server is None:
            return 0  # spares the query
        key = (job.cohort, job.vmm_server.lower())
        if key not in self._cohort_left:
            self._cohort_left[key] = self.journal.cohort_left(job)
        return self._cohort_left[key]

    # ---- concurrency ---------------------------------------------------------------------

    def limit_reason(self, job: Job, max_running: int, max_per_server: int) -> str | None:
        """Why the claim would refuse ``job`` for a concurrency limit, or None. A limit
        reached by this read's counts is counted again once (attempts may have ended since
        the read), so a stale count never holds a job back for more than the pass."""
        reason = self._limit(job, max_running, max_per_server)
        if reason is not None and job.mode not in self._recounted:
            self.recount(job.mode)
            reason = self._limit(job, max_running, max_per_server)
        return reason

    def _limit(self, job: Job, max_running: int, max_per_server: int) -> str | None:
        running = self._running[job.mode]
        if running >= max_running:
            return max_concurrent_reason(running)
        if job.vmm_server is not None:
            per = self._per_server[(job.mode, job.vmm_server.lower())]
            if per >= max_per_server:
                return max_per_server_reason(per, job.vmm_server)
        renewing = self._renewing_server(job)
        return None if renewing is None else one_server_renewal_reason(renewing)

    def recount(self, mode: str) -> None:
        """Count ``mode``'s running jobs again from the journal (every process's)."""
        total, by_server = self.journal.running_counts(mode)
        self._running[mode] = total
        for key in [k for k in self._per_server if k[0] == mode]:
            del self._per_server[key]
        for server, running in by_server.items():
            if server:
                self._per_server[(mode, server)] = running
        self._recounted.add(mode)

    def started(self, job: Job) -> None:
        """``job`` runs (claimed by this pass, or running when it read the journal)."""
        self._running[job.mode] += 1
        if job.vmm_server is not None:
            self._per_server[(job.mode, job.vmm_server.lower())] += 1
            if job.is_vmm_server and job.mode == "execute":
                self._server_renewal.setdefault(job.vmm_server.lower(), job)

    def _renewing_server(self, job: Job) -> Job | None:
        """Another execute job already renewing the VMM server certificate that ``job``
        would renew (``one_server_renewal_reason``; the claim checks it again)."""
        if not job.is_vmm_server or job.vmm_server is None or job.mode != "execute":
            return None
        other = self._server_renewal.get(job.vmm_server.lower())
        return other if other is not None and other.id != job.id else None

    # ---- what the desk and the API show ----------------------------------------------------

    def wait(self, job: Job, reason: str) -> None:
        """``job`` waits for ``reason``: written at ``commit`` unless the journal says so."""
        if job.status in ("waiting", "failed") and job.reason == reason:
            return
        self.waits[job.id] = reason

    def commit(self) -> None:
        """Write the changed waiting reasons, in one transaction."""
        self.journal.set_waiting_many(self.waits)
        self.waits = {}
