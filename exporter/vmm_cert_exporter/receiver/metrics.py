"""The receiver's own ``/metrics``: read from the journal at scrape time, plus counters.

The names are a contract (docs/renewal.md, "Metrics"). Counts come from the journal, so
they survive restarts (pruning keeps the attempts it deletes counted); webhook counts are
per process (unauthenticated requests are not written to disk)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vmm_cert_exporter import __version__
from vmm_cert_exporter.cohorts import Capacity, Projection
from vmm_cert_exporter.receiver.journal import ACTIVE_STATUSES, ATTEMPT_RESULTS, Journal
from vmm_cert_exporter.receiver.planner import PROCEDURES

WEBHOOK_OUTCOMES: Final = (
    "accepted",  # at least one alert created or joined a job
    "no_action",  # valid, authenticated, but every alert was rejected (reasons journaled)
    "unauthorized",  # 401: missing or wrong credentials
    "forbidden",  # 403: a browser's cross-site request
    "invalid",  # 400/405/415: not a valid Alertmanager webhook
    "too_large",  # 413
    "unavailable",  # 503: the inventory is not loaded yet (Alertmanager retries)
    "error",  # 500: a bug; the request changed nothing
)


class WebhookCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(WEBHOOK_OUTCOMES, 0)

    def inc(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class ReceiverCollector(Collector):
    def __init__(
        self,
        journal: Journal,
        webhooks: WebhookCounter,
        mode: str,
        paused: Callable[[], bool],
        capacity: Callable[[], Capacity] | None = None,
        cohort_margin: float = 0.0,
        cohorts: Callable[[], list[Projection]] | None = None,
    ) -> None:
        self._journal = journal
        self._webhooks = webhooks
        self._mode = mode
        self._paused = paused
        self._capacity = capacity
        self._cohort_margin = cohort_margin
        self._cohorts = cohorts

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not query the journal

    def collect(self) -> Iterator[Metric]:
        counts = self._journal.attempt_counts()
        jobs = CounterMetricFamily(
            "vmm_renewal_jobs",
            "Renewal attempts that ended, by procedure and result (planned = a dry run).",
            labels=["procedure", "result"],
        )
        for procedure in PROCEDURES:
            for result in ATTEMPT_RESULTS:
                jobs.add_metric([procedure, result], counts.get((procedure, result), 0))
        yield jobs

        statuses = self._journal.status_counts()
        yield GaugeMetricFamily(
            "vmm_renewal_jobs_in_progress",
            "Renewal jobs running now (across every process using this journal).",
            value=statuses.get("running", 0),
        )
        active = GaugeMetricFamily(
            "vmm_renewal_jobs_active",
            "Jobs not finished yet, by status (failed = a retry is scheduled).",
            labels=["status"],
        )
        for status in ACTIVE_STATUSES:
            active.add_metric([status], statuses.get(status, 0))
        yield active

        last = GaugeMetricFamily(
            "vmm_renewal_last_success_timestamp_seconds",
            "When the last renewal of the host succeeded (verified), as a Unix timestamp.",
            labels=["host"],
        )
        for host, when in sorted(self._journal.last_success_by_host().items()):
            last.add_metric([host], when)
        yield last

        failed = GaugeMetricFamily(
            "vmm_renewal_host_failed",
            "1 while the host's most recent renewal job failed (retry pending or given up).",
            labels=["host", "procedure", "step"],
        )
        for job in self._journal.failed_hosts():
            failed.add_metric([job.host, job.procedure, job.failed_step or "unknown"], 1)
        yield failed

        yield CounterMetricFamily(
            "vmm_renewal_journal_pruned_jobs",
            "Finished jobs deleted from the journal by receiver.journal_retention.",
            value=self._journal.pruned_jobs_total(),
        )

        webhooks = CounterMetricFamily(
            "vmm_receiver_webhooks",
            "Requests to POST /alertmanager, by outcome.",
            labels=["outcome"],
        )
        for outcome, count in self._webhooks.snapshot().items():
            webhooks.add_metric([outcome], count)
        yield webhooks

        yield GaugeMetricFamily(
            "vmm_receiver_paused",
            "1 while the global pause switch (API or pause file) is on.",
            value=1 if self._paused() else 0,
        )
        if self._capacity is not None:
            yield from self._capacity_families(self._capacity())
        if self._cohorts is not None:
            yield from self._cohort_families(self._cohorts())

        info = GaugeMetricFamily(
            "vmm_receiver_info", "The receiver's version and mode.", labels=["version", "mode"]
        )
        info.add_metric([__version__, self._mode], 1)
        yield info

    def _capacity_families(self, capacity: Capacity) -> Iterator[Metric]:
        """What VMMCertificateCohortAtRisk divides the cohorts by (docs/renewal.md#cohorts)."""
        per_day = GaugeMetricFamily(
            "vmm_renewal_capacity_per_day",
            "Computers the receiver can renew per day: max_concurrent, the maintenance "
            "windows, the pause switch and the approved share of its jobs (require_approval), "
            "with the measured renewal duration per procedure, or "
            "receiver.assumed_renewal_duration before one is measured (duration_source).",
            labels=["duration_source"],
        )
        per_day.add_metric([capacity.duration_source], capacity.per_day)
        yield per_day
        duration = GaugeMetricFamily(
            "vmm_renewal_duration_seconds",
            "The duration of one renewal the capacity is computed with (duration_source: "
            "measured from the journal, or assumed).",
            labels=["duration_source"],
        )
        duration.add_metric([capacity.duration_source], capacity.duration)
        yield duration
        yield GaugeMetricFamily(
            "vmm_renewal_cohort_margin_seconds",
            "receiver.cohort_margin: how long before its day a cohort should be renewed.",
            value=self._cohort_margin,
        )

    def _cohort_families(self, projections: list[Projection]) -> Iterator[Metric]:
        """Per upcoming cohort of the receiver's census: what is left and when it is done."""
        left = GaugeMetricFamily(
            "vmm_renewal_cohort_computers_left",
            "Computers of the cohort (UTC NotAfter day) that still hold its certificate, as "
            "the receiver's census reads VMM's TrustedPeople.",
            labels=["cohort"],
        )
        finish = GaugeMetricFamily(
            "vmm_renewal_cohort_projected_finish_timestamp_seconds",
            "When the cohort's last computer is projected renewed at the capacity used now, "
            "the earlier cohorts first (+Inf: never, e.g. paused).",
            labels=["cohort"],
        )
        must = GaugeMetricFamily(
            "vmm_renewal_cohort_must_start_by_timestamp_seconds",
            "The latest start that renews the cohort cohort_margin before its day "
            "(+Inf: no start does).",
            labels=["cohort"],
        )
        for p in projections:
            day = p.cohort.day.isoformat()
            left.add_metric([day], p.cohort.left)
            finish.add_metric([day], math.inf if p.finish is None else p.finish)
            must.add_metric([day], math.inf if p.must_start_by is None else p.must_start_by)
        yield left
        yield finish
        yield must
