"""``receiver.renew_ahead``: the receiver plans a cohort itself, from its must-start-by,
instead of waiting for the 30-day alert to fire for every computer at once
(docs/renewal.md#renewing-ahead).

``schedule`` is pure: from the census (each computer's NotAfter) and the capacity it
decides which cohorts are due and the order and planned start of their renewals: oldest
certificates first, the VMM server's names last (a VMM server is renewed by procedure 2
where it has Update-SCVMMCertificate, chosen by ``planner`` as for any job). ``RenewAhead``
journals the due jobs with ``source: cohort``; from there the engine runs them under every
guard an alert's job has (pause, approval, windows, cooldown, backoff, concurrency), and
the journal's unique index keeps one active job per host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vmm_cert_exporter.cohorts import Capacity, Cohort, cohort_day, group, minute_utc
from vmm_cert_exporter.config import ReceiverConfig
from vmm_cert_exporter.inventory import VmmView
from vmm_cert_exporter.receiver import planner
from vmm_cert_exporter.receiver.census import Holding
from vmm_cert_exporter.receiver.journal import CohortJob, Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scheduled:
    """One computer of a cohort: what the planner decided, and when the schedule starts it."""

    target: planner.RenewalTarget
    not_after: float
    start_at: float


@dataclass(frozen=True)
class CohortSchedule:
    """A cohort that needs renewing: due once ``now`` reaches ``must_start_by``."""

    cohort: Cohort
    must_start_by: float | None
    due: bool
    jobs: tuple[Scheduled, ...]
    refused: tuple[tuple[str, str], ...]  # (host, why) for computers policy keeps out

    @property
    def day(self) -> str:
        return self.cohort.day.isoformat()


def _refusal(target: planner.RenewalTarget, config: ReceiverConfig) -> str | None:
    """Why the computer may not be renewed at all (as intake refuses an alert's host)."""
    refusal = planner.policy_refusal(config, target.computer)
    if refusal is not None:
        return f"not allowed: {target.computer.fqdn} {refusal}"
    if target.vmm_server is None:
        return f"no VMM server known to manage {target.computer.fqdn}"
    if target.procedure is None:
        return target.why
    return None


def schedule(
    holdings: Sequence[Holding],
    views: Mapping[str, VmmView],
    config: ReceiverConfig,
    capacity: Capacity,
    now: float,
) -> list[CohortSchedule]:
    """Every cohort with a computer inside ``min_validity`` (the ones a renewal would find
    not fresh), oldest first, each with its renewals in order and their planned starts.

    A due cohort's renewals start now; one not yet due starts at its must-start-by. The
    planned starts follow ``capacity`` (its windows and concurrency) from there, this cohort
    alone: cohorts due together share the capacity, which the projection
    (``cohorts.project``) queues and ``VMMCertificateCohortAtRisk`` watches.
    """
    needing = [h for h in holdings if h.not_after - now < config.min_validity]
    members: dict[str, list[Holding]] = {}
    for holding in needing:
        members.setdefault(cohort_day(holding.not_after).isoformat(), []).append(holding)
    out: list[CohortSchedule] = []
    for cohort in group((h.computer.role, h.not_after) for h in needing):
        day = cohort.day.isoformat()
        targets = [(planner.renewal_target(h.computer, views), h) for h in members[day]]
        # oldest certificates first; the VMM server's names last, after the computers it
        # re-registers
        targets.sort(key=lambda t: (t[0].computer.is_vmm_server, t[1].not_after, t[0].computer.key))
        allowed: list[tuple[planner.RenewalTarget, Holding]] = []
        refused: list[tuple[str, str]] = []
        for target, holding in targets:
            why = _refusal(target, config)
            if why is None:
                allowed.append((target, holding))
            else:
                refused.append((target.computer.fqdn, why))
        must = capacity.latest_start(cohort.expires_at - config.cohort_margin, len(allowed))
        due = must is None or now >= must
        start = now if due or must is None else max(now, must)
        jobs = []
        for index, (target, holding) in enumerate(allowed):
            finish = capacity.finish(start, index + 1)
            start_at = start if finish is None else max(start, finish - capacity.duration)
            jobs.append(Scheduled(target, holding.not_after, start_at))
        out.append(CohortSchedule(cohort, must, due, tuple(jobs), tuple(refused)))
    return out


class RenewAhead:
    """Journals the due cohorts' jobs (once per host and cohort) after each census."""

    def __init__(
        self,
        config: ReceiverConfig,
        journal: Journal,
        capacity: Callable[[], Capacity],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.journal = journal
        self.capacity = capacity
        self.clock = clock

    def run(self, holdings: Sequence[Holding], views: Mapping[str, VmmView]) -> int:
        """Create the jobs of every due cohort that are not journaled yet; their number."""
        if not self.config.renew_ahead:
            return 0
        now = self.clock()
        mode = self.config.mode
        created = 0
        for plan in schedule(holdings, views, self.config, self.capacity(), now):
            if not plan.due:
                continue
            done = self.journal.cohort_hosts(plan.day, mode)
            new = [
                CohortJob(
                    host=job.target.computer.fqdn,
                    role=job.target.computer.role,
                    vmm_server=job.target.vmm_server,
                    is_vmm_server=job.target.computer.is_vmm_server,
                    procedure=job.target.procedure,
                    reason=(
                        f"cohort {plan.day} ({plan.cohort.left} computers, must start by "
                        f"{minute_utc(plan.must_start_by)}): {job.target.why}"
                    ),
                    cohort=plan.day,
                    planned_start_at=job.start_at,
                )
                for job in plan.jobs
                if job.target.computer.key not in done
                and job.target.vmm_server is not None
                and job.target.procedure is not None
            ]
            # a host with an active job (an alert's, a renew's) keeps that one
            made = len(self.journal.create_cohort_jobs(new, mode))
            if made:
                log.info(
                    "cohort planned ahead",
                    extra={
                        "cohort": plan.day,
                        "jobs": made,
                        "refused": len(plan.refused),
                        "must_start_by": minute_utc(plan.must_start_by),
                        "mode": mode,
                    },
                )
            created += made
        return created
