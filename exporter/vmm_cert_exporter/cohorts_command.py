"""``vmm-cert-exporter cohorts --config FILE [--json]``: the fleet's cohorts against the
receiver's capacity.

One refresh of the configured fleet (as ``check``) gives each computer's NotAfter; the
receiver's journal, when there is one, gives the computers already renewed out of each
cohort, the measured duration of a renewal and the pause switch; the ``receiver:`` section
gives max_concurrent, the windows, approval, assumed_renewal_duration and cohort_margin
(their defaults when the file has no such section). Exit 0 when every cohort is on time,
1 when one finishes within the margin, 2 when one finishes after its day (or never), 3 on a
bad configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmm_cert_exporter.cohorts import (
    CRITICAL,
    OK,
    WARNING,
    Projection,
    capacities,
    group,
    minute_utc,
    procedure_mix,
    project,
)
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import ConfigError, load_config
from vmm_cert_exporter.inventory import VmmView
from vmm_cert_exporter.logs import setup_logging
from vmm_cert_exporter.receiver.config import MaintenanceWindow, ReceiverConfig
from vmm_cert_exporter.receiver.journal import Journal, JournalError
from vmm_cert_exporter.snapshot import Snapshot

_EXIT = {OK: 0, WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True)
class Settings:
    """What the plan reads from the ``receiver:`` section, or the section's defaults."""

    max_concurrent: int
    max_concurrent_per_vmm_server: int
    windows: tuple[MaintenanceWindow, ...]
    require_approval: bool
    pause_file: str | None
    journal: str | None
    assumed_renewal_duration: float
    cohort_margin: float
    configured: bool
    min_validity: float  # False: the file has no receiver section

    @classmethod
    def of(cls, receiver: ReceiverConfig | None) -> Settings:
        if receiver is not None:
            return cls(
                receiver.max_concurrent,
                receiver.max_concurrent_per_vmm_server,
                receiver.maintenance_windows,
                receiver.require_approval,
                receiver.pause_file,
                receiver.journal,
                receiver.assumed_renewal_duration,
                receiver.cohort_margin,
                True,
                receiver.min_validity,
            )
        default: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ReceiverConfig)}
        return cls(
            int(default["max_concurrent"]),
            int(default["max_concurrent_per_vmm_server"]),
            (),
            False,
            None,
            None,
            float(default["assumed_renewal_duration"]),
            float(default["cohort_margin"]),
            False,
            float(default["min_validity"]),
        )


@dataclass(frozen=True)
class JournalFacts:
    durations: dict[str, list[float]]
    renewed: list[float]
    paused: bool
    approved_share: float = 1.0  # of the receiver's active jobs (1 without any)


def _journal_facts(path: str | None) -> JournalFacts:
    if path is None or not os.path.exists(path):
        return JournalFacts({}, [], False)
    journal = Journal(path)
    try:
        return JournalFacts(
            journal.renewal_durations(),
            journal.renewed_not_afters(),
            journal.pause_state().paused,
            journal.approved_share(),
        )
    finally:
        journal.close()


def plan(
    snapshot: Snapshot,
    settings: Settings,
    facts: JournalFacts,
    now: float,
    views: Mapping[str, VmmView] | None = None,
) -> dict[str, Any]:
    """The report as a JSON document (the table is rendered from it). ``views``: the VMM
    servers' views the refresh discovered, which decide each computer's procedure."""
    paused = facts.paused or bool(settings.pause_file and os.path.exists(settings.pause_file))
    servers = {h.computer.vmm_server.lower() for h in snapshot.hosts if h.computer.vmm_server}
    mix = procedure_mix(
        (
            (host.computer, host.current.info.not_after.timestamp())
            for host in snapshot.hosts
            if host.current is not None
        ),
        views or {},
        now=now,
        min_validity=settings.min_validity,
    )
    configured, used = capacities(
        max_concurrent=settings.max_concurrent,
        per_vmm_server=settings.max_concurrent_per_vmm_server,
        vmm_servers=len(servers),
        windows=settings.windows,
        approval=settings.require_approval,
        paused=paused,
        assumed=settings.assumed_renewal_duration,
        durations=facts.durations,
        at=now,
        # the receiver's own weighting: each procedure's measured duration by what is left
        mix=mix,
        approved_share=facts.approved_share,
    )
    measured = used is not configured
    cohorts = group(
        (
            (host.computer.role, host.current.info.not_after.timestamp())
            for host in snapshot.hosts
            if host.current is not None
        ),
        facts.renewed,
    )
    projections = project(cohorts, used, now, settings.cohort_margin)
    return {
        "now": minute_utc(now),
        "capacity": {
            "per_day": round(used.per_day, 1),
            "configured_per_day": round(configured.per_day, 1),
            "measured_per_day": round(used.per_day, 1) if measured else None,
            "renewal_seconds": round(used.duration, 1),
            "renewal_duration_source": used.duration_source,
            "measured_seconds_by_procedure": {
                procedure: round(statistics.median(ds), 1)
                for procedure, ds in sorted(facts.durations.items())
            },
            "left_by_procedure": dict(sorted(mix.items())),
            "concurrency": used.concurrency,
            "open_hours_per_week": round(used.open_minutes_per_week / 60.0, 2),
            "paused": paused,
            "require_approval": settings.require_approval,
            "receiver_configured": settings.configured,
        },
        "cohort_margin_seconds": settings.cohort_margin,
        "cohorts": [cohort_json(p) for p in projections],
    }


def cohort_json(p: Projection) -> dict[str, Any]:
    return {
        "day": p.cohort.day.isoformat(),
        "expires_at": minute_utc(p.cohort.expires_at),
        "computers": p.cohort.left,
        "by_role": dict(p.cohort.by_role),
        "renewed": p.cohort.renewed,
        "must_start_by": minute_utc(p.must_start_by),
        "projected_finish": minute_utc(p.finish),
        "risk": p.risk,
    }


def render_table(report: dict[str, Any]) -> str:
    cap = report["capacity"]
    measured = cap["measured_per_day"]
    lines = [
        f"capacity: {cap['per_day']:g} computers/day ({cap['renewal_duration_source']} renewal "
        f"of {cap['renewal_seconds']:g} s, {cap['concurrency']} at once, "
        f"{cap['open_hours_per_week']:g} open hours/week); configured "
        f"{cap['configured_per_day']:g}/day, measured "
        + ("none yet" if measured is None else f"{measured:g}/day"),
    ]
    if cap["paused"]:
        lines.append("the receiver is PAUSED: no renewal starts, nothing finishes")
    if cap["require_approval"]:
        lines.append("require_approval is on: the capacity holds only if approvals keep up")
    if not cap["receiver_configured"]:
        lines.append("no receiver section: the receiver's defaults are assumed")
    header = ("DAY", "COMPUTERS", "BY ROLE", "RENEWED", "MUST START BY", "PROJECTED FINISH", "RISK")
    rows = [header] + [
        (
            c["day"],
            str(c["computers"]),
            ", ".join(f"{role} {n}" for role, n in c["by_role"].items()),
            str(c["renewed"]),
            c["must_start_by"] or "-",
            c["projected_finish"] or "never",
            c["risk"].upper(),
        )
        for c in report["cohorts"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    settings = Settings.of(config.receiver)
    try:
        facts = _journal_facts(settings.journal)
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    refresher = Refresher(config)
    try:
        snapshot = refresher.refresh_once()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    report = plan(snapshot, settings, facts, time.time(), refresher.inventory.vmm_views)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
    return max((_EXIT[c["risk"]] for c in report["cohorts"]), default=0)
