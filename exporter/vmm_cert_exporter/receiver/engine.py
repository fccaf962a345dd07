"""The scheduler: which job runs when, and the journaled run of one attempt.

A job's life and the rules that keep a renewal safe: docs/renewal.md ("Jobs", "Safety
model"). With ``receiver.journal_retention`` set, the scheduling loop also prunes the
journal (at start, then every ``prune_interval``)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from vmm_cert_exporter.config import Config, ReceiverConfig
from vmm_cert_exporter.durations import format_duration
from vmm_cert_exporter.receiver import guards, planner, runbook
from vmm_cert_exporter.receiver.journal import (
    Job,
    Journal,
    OwnerLock,
    PauseState,
    iso,
    owner_alive,
)
from vmm_cert_exporter.receiver.passes import Pass
from vmm_cert_exporter.receiver.runbook import ScriptRunner, StepFailed

log = logging.getLogger(__name__)

# How often the scheduling loop prunes the journal (with receiver.journal_retention set).
PRUNE_INTERVAL = 3600.0


class Engine:
    """Runs the journal's jobs against the fleet, within the configured guardrails."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        runner: ScriptRunner,
        *,
        owner: OwnerLock,
        executes: bool | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
        prune_interval: float = PRUNE_INTERVAL,
    ) -> None:
        if config.receiver is None:
            raise ValueError("the configuration has no receiver section")
        self.config = config
        self.rcfg: ReceiverConfig = config.receiver
        self.journal = journal
        self.runner = runner
        self.owner = owner
        self.executes = self.rcfg.execute if executes is None else executes
        self.clock = clock
        self.poll_interval = poll_interval
        self.prune_interval = prune_interval
        self._pruned_at: float | None = None  # when this engine last pruned (its clock)
        # one worker per allowed concurrent job, and one more for dry runs and resumes
        self._pool = ThreadPoolExecutor(
            max_workers=self.rcfg.max_concurrent + 1, thread_name_prefix="renewal"
        )
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- pause --------------------------------------------------------------------------

    def pause_state(self) -> PauseState:
        """The API switch (persisted in the journal) or the pause file, whichever is on."""
        state = self.journal.pause_state()
        if state.paused:
            return state
        if self.rcfg.pause_file and os.path.exists(self.rcfg.pause_file):
            return PauseState(True, by=f"pause file {self.rcfg.pause_file}")
        return state

    # ---- scheduling ---------------------------------------------------------------------

    def tick(self, *, wait: bool = False) -> list[Future[None]]:
        """One scheduling pass; with ``wait``, also wait for the attempts it started.

        It reads the active jobs once and writes only the claims it makes and, in one
        transaction, the waiting reasons that changed (``passes.Pass``): its cost does not
        grow by a transaction per job waiting behind ``max_concurrent``."""
        now = self.clock()
        self._maybe_prune(now)
        for job_id in self.journal.recover(
            lambda owner: owner_alive(self.journal.path, owner), exclude=self.owner.id
        ):
            log.warning("job interrupted; will resume from verification", extra={"job": job_id})
        pause = self.pause_state()
        started: list[Future[None]] = []
        scheduling = Pass(self.journal, self.journal.active_jobs())
        try:
            for job in scheduling.jobs:
                with self._lock:
                    if job.id in self._inflight or job.status == "running":
                        continue
                future = self._consider(job, now, pause, scheduling)
                if future is not None:
                    started.append(future)
        finally:
            scheduling.commit()
        if wait:
            for future in started:
                future.result()
        return started

    # ---- retention ----------------------------------------------------------------------

    def _maybe_prune(self, now: float) -> None:
        """Prune on the first pass, then every ``prune_interval``; never fails the pass."""
        if self.rcfg.journal_retention is None:
            return
        last = self._pruned_at
        if last is not None and 0 <= now - last < self.prune_interval:
            return
        self._pruned_at = now
        try:
            self.prune_journal(now, first=last is None)
        except Exception:  # a failed prune is retried next interval; scheduling goes on
            log.exception("journal pruning failed")

    def prune_journal(self, now: float | None = None, *, first: bool = False) -> int:
        """Delete what finished more than ``journal_retention`` ago; returns the jobs pruned.

        Logged at info level when something was pruned (and on the first run, so the start-up
        log says that retention is on), at debug level otherwise.
        """
        retention = self.rcfg.journal_retention
        if retention is None:
            return 0
        before = (self.clock() if now is None else now) - retention
        pruned = self.journal.prune(before)
        log.log(
            logging.INFO if pruned.jobs or first else logging.DEBUG,
            "journal pruned",
            extra={
                "jobs": pruned.jobs,
                "steps": pruned.steps,
                "alerts": pruned.alerts,
                "webhooks": pruned.webhooks,
                "events": pruned.events,
                "finished_before": iso(before),
                "retention": format_duration(retention),
            },
        )
        return pruned.jobs

    def _consider(
        self, job: Job, now: float, pause: PauseState, scheduling: Pass
    ) -> Future[None] | None:
        if job.status == "interrupted":
            # dry runs simply plan again; execute jobs verify first (a read: allowed even
            # while paused or outside the windows, and the only safe way to learn the state)
            kind = "resume" if job.mode == "execute" else "run"
            return self._claim_and_submit(job, kind, scheduling, limits=False)
        if job.mode == "dry-run":
            return self._claim_and_submit(job, "run", scheduling, limits=True)
        if not self.executes:
            scheduling.wait(
                job,
                "the receiver runs in dry-run mode: execute jobs wait for mode: execute "
                "(or renew --execute)",
            )
            return None
        if job.status == "failed" and job.next_attempt_at is not None and job.next_attempt_at > now:
            return None  # backoff: the failure stays visible until the retry is due
        reason = guards.blocked_reason(
            job,
            self.rcfg,
            now=now,
            pause=pause,
            last_fresh_at=scheduling.last_fresh_at(job),
            cohort_left=scheduling.cohort_left(job),
        )
        if reason is not None:
            scheduling.wait(job, reason)
            return None
        return self._claim_and_submit(job, "run", scheduling, limits=True)

    def _claim_and_submit(
        self, job: Job, kind: str, scheduling: Pass, *, limits: bool
    ) -> Future[None] | None:
        if limits:
            blocked = scheduling.limit_reason(
                job, self.rcfg.max_concurrent, self.rcfg.max_concurrent_per_vmm_server
            )
            if blocked is not None:
                scheduling.wait(job, blocked)
                return None
        claim = self.journal.claim(
            job.id,
            expected=(job.status,),
            owner=self.owner.id,
            kind=kind,
            max_running=self.rcfg.max_concurrent if limits else None,
            max_per_server=self.rcfg.max_concurrent_per_vmm_server if limits else None,
        )
        if claim.attempt is None:
            if claim.limited and claim.blocked is not None:
                # another process started one since this pass counted
                scheduling.wait(job, claim.blocked)
                scheduling.recount(job.mode)
            return None
        scheduling.started(job)
        with self._lock:
            self._inflight.add(job.id)
        return self._pool.submit(self._run_claimed, job.id, claim.attempt, kind)

    def run_now(self, job: Job, kind: str = "run") -> Job:
        """Claim ``job`` and run one attempt in this thread (``renew --execute``)."""
        claim = self.journal.claim(job.id, expected=(job.status,), owner=self.owner.id, kind=kind)
        if claim.attempt is None:
            raise RuntimeError(f"job {job.id} could not be started: {claim.blocked}")
        self._run_claimed(job.id, claim.attempt, kind)
        return self.journal.must_get(job.id)

    # ---- one attempt ----------------------------------------------------------------------

    def _run_claimed(self, job_id: int, attempt: int, kind: str) -> None:
        try:
            job = self.journal.get(job_id)
            if job is None:
                return
            log.info(
                "attempt started",
                extra={"job": job_id, "host": job.host, "attempt": attempt, "kind": kind},
            )
            if kind == "resume":
                self._verify(job, attempt, resumed=True)
            else:
                self._attempt(job, attempt)
        except Exception as exc:  # a bug must never leave a job "running" for ever
            log.exception("attempt crashed", extra={"job": job_id})
            job = self.journal.get(job_id)
            if job is not None and job.status == "running":
                self._fail(
                    job,
                    attempt,
                    StepFailed(job.failed_step or "internal", f"internal error: {exc!r}"),
                )
        finally:
            with self._lock:
                self._inflight.discard(job_id)
            self._wake.set()

    def _attempt(self, job: Job, attempt: int) -> None:
        if job.vmm_server is None:
            self._fail(
                job,
                attempt,
                StepFailed(
                    planner.STEP_PREFLIGHT,
                    f"no VMM server is known to manage {job.host}: configure it under "
                    "vmm_servers (discovery) so the receiver knows where to re-register it",
                    permanent=True,
                ),
            )
            return
        step_id = self.journal.step_started(job.id, attempt, planner.STEP_PREFLIGHT, job.host)
        try:
            state = runbook.read_state(self.runner, job.host, job.vmm_server)
        except StepFailed as failed:
            self.journal.step_finished(step_id, "failed", failed.reason)
            self._fail(job, attempt, failed)
            return
        now = self.clock()
        # re-decided from the fresh view: a name learnt to be the VMM server's since the
        # alert, or a version changed since, never gets the procedure planned at intake
        procedure, why = planner.choose_procedure(state.computer, state.view)
        problems = runbook.problems(state, now=now, min_validity=self.rcfg.min_validity)
        read = {**state.summary(), "problems": problems}
        before = state.certificates_json()
        if procedure == planner.REMOVE_REGISTER and problems:
            try:
                # before anything is deleted: the register must be able to pick its account
                runbook.check_run_as_account(
                    self.runner, state.view.vmm_server, self.rcfg.run_as_account
                )
            except StepFailed as failed:
                self.journal.step_finished(step_id, "failed", failed.reason, read)
                self.journal.set_plan(
                    job.id,
                    procedure=procedure,
                    plan={"procedure": procedure, "why": why, "problems": problems, "steps": []},
                    certificates_before=before,
                )
                self._fail(job, attempt, failed)
                return
        self.journal.step_finished(
            step_id,
            "succeeded",
            "fresh: nothing to do" if not problems else "; ".join(problems),
            read,
        )
        if procedure is None:
            self.journal.set_plan(
                job.id,
                procedure=job.procedure,
                plan={"procedure": None, "why": why, "problems": problems, "steps": []},
                certificates_before=before,
            )
            self._fail(job, attempt, StepFailed(planner.STEP_PREFLIGHT, why, permanent=True))
            return
        if not problems:
            self.journal.set_plan(
                job.id,
                procedure=procedure,
                plan={"procedure": procedure, "why": why, "problems": [], "steps": []},
                certificates_before=before,
            )
            self.journal.finish_attempt(
                job.id,
                attempt,
                result="already-fresh",
                status="already-fresh",
                reason=f"already fresh: {runbook.describe_certificates(state.certificates)}",
                certificates_after=before,
            )
            log.info("already fresh", extra={"job": job.id, "host": job.host})
            return
        try:
            steps = runbook.plan_steps(state, procedure, self.rcfg.run_as_account)
        except StepFailed as failed:
            self._fail(job, attempt, failed)
            return
        plan: dict[str, Any] = {
            "procedure": procedure,
            "why": why,
            "problems": problems,
            "steps": [s.to_json() for s in steps],
        }
        if job.mode == "dry-run":
            plan["execute_mode_would"] = self._would(job, now)
        self.journal.set_plan(job.id, procedure=procedure, plan=plan, certificates_before=before)
        if job.mode == "dry-run":
            self.journal.finish_attempt(
                job.id,
                attempt,
                result="planned",
                status="planned",
                reason="dry run: planned, nothing changed",
            )
            log.info("dry run planned", extra={"job": job.id, "host": job.host})
            return
        for step in steps:
            if step.skip_reason is not None:
                self.journal.step_skipped(job.id, attempt, step.name, step.target, step.skip_reason)
                continue
            # the intent is on disk before the script leaves: after a crash the journal
            # knows this step may have run, and resuming reads instead of repeating it
            step_id = self.journal.step_started(
                job.id, attempt, step.name, step.target, step.params
            )
            log.info(
                "step started",
                extra={"job": job.id, "host": job.host, "step": step.name, "target": step.target},
            )
            try:
                result = runbook.run_step(self.runner, step, self.rcfg.step_timeout)
            except StepFailed as failed:
                self.journal.step_finished(
                    step_id, "unknown" if failed.unknown else "failed", failed.reason
                )
                self._fail(job, attempt, failed)
                return
            self.journal.step_finished(step_id, "succeeded", None, result)
        self._verify(job, attempt, resumed=False)

    def _would(self, job: Job, now: float) -> str:
        """What an execute-mode receiver would do with this job now (for dry-run plans)."""
        reason = guards.blocked_reason(
            job,
            self.rcfg,
            now=now,
            pause=self.pause_state(),
            last_fresh_at=self.journal.last_fresh_at(job.host),
            cohort_left=self.journal.cohort_left(job),
        )
        return "start at once" if reason is None else f"wait: {reason}"

    def _verify(self, job: Job, attempt: int, *, resumed: bool) -> None:
        step_id = self.journal.step_started(job.id, attempt, planner.STEP_VERIFY, job.host)
        try:
            if job.vmm_server is None:
                raise StepFailed(planner.STEP_VERIFY, "no VMM server known", permanent=True)
            state = runbook.read_state(
                self.runner, job.host, job.vmm_server, step=planner.STEP_VERIFY
            )
        except StepFailed as failed:
            self.journal.step_finished(step_id, "failed", failed.reason)
            self._fail(job, attempt, failed, resumed=resumed)
            return
        problems = runbook.problems(state, now=self.clock(), min_validity=self.rcfg.min_validity)
        after = state.certificates_json()
        if problems:
            reason = "; ".join(problems)
            self.journal.step_finished(step_id, "failed", reason, state.summary())
            self._fail(
                job,
                attempt,
                StepFailed(planner.STEP_VERIFY, reason),
                resumed=resumed,
                certificates_after=after,
            )
            return
        detail = f"verified: {runbook.describe_certificates(state.certificates)}"
        self.journal.step_finished(step_id, "succeeded", detail, state.summary())
        self.journal.finish_attempt(
            job.id,
            attempt,
            result="succeeded",
            status="succeeded",
            reason=detail + (" (resumed after an interruption)" if resumed else ""),
            certificates_after=after,
        )
        log.info("renewal succeeded", extra={"job": job.id, "host": job.host, "detail": detail})

    def _fail(
        self,
        job: Job,
        attempt: int,
        failed: StepFailed,
        *,
        resumed: bool = False,
        certificates_after: list[dict[str, Any]] | None = None,
    ) -> None:
        now = self.clock()
        current = self.journal.get(job.id) or job
        reason = failed.reason
        if resumed and self.executes and job.mode == "execute" and not failed.permanent:
            # The interruption was ours, not the computer's: start the next attempt at once
            # (subject to the guards); its preflight removes only what it sees then.
            self.journal.finish_attempt(
                job.id,
                attempt,
                result="failed",
                status="failed",
                reason=f"after an interruption, verification found: {reason}; continuing",
                failed_step=failed.step,
                next_attempt_at=now,
                terminal=False,
                certificates_after=certificates_after,
            )
            log.warning(
                "resume: not fresh yet; next attempt now",
                extra={"job": job.id, "host": job.host, "reason": reason},
            )
            return
        failures = current.failures + 1
        terminal = (
            job.mode == "dry-run"
            or failed.permanent
            or job.source == "cli"
            or failures >= self.rcfg.max_attempts
            or (resumed and not self.executes)
        )
        next_at = None
        if terminal:
            if (
                failures >= self.rcfg.max_attempts
                and not failed.permanent
                and job.mode == "execute"
            ):
                reason += f"; gave up after {failures} failed attempts (max_attempts)"
            elif resumed and not self.executes:
                reason += "; this receiver does not execute: run renew --execute to finish"
        else:
            delay = guards.backoff_delay(failures, self.rcfg.backoff_initial, self.rcfg.backoff_max)
            next_at = now + delay
        self.journal.finish_attempt(
            job.id,
            attempt,
            result="failed",
            status="failed",
            reason=reason,
            failed_step=failed.step,
            next_attempt_at=next_at,
            terminal=terminal,
            count_failure=True,
            certificates_after=certificates_after,
        )
        log.warning(
            "renewal failed",
            extra={
                "job": job.id,
                "host": job.host,
                "step": failed.step,
                "reason": reason,
                "retry_at": next_at,
            },
        )

    # ---- background loop ----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # keep scheduling whatever one pass hit
                log.exception("scheduling pass crashed")
            self._wake.wait(self.poll_interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; running attempts finish (never stopped half-way)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True)
