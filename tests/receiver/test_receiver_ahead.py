"""``receiver.renew_ahead``: the receiver plans a cohort itself once its must-start-by
arrives; the schedule's order and planned starts, the dry run of the big-cohort lab (3,000
computers expiring on the next 1 January), and the guards its jobs go through."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from vmm_cert_exporter.cohorts import Capacity, group, project
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import MaintenanceWindow
from vmm_cert_exporter.inventory import Computer, VmmView
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector
from vmm_cert_exporter.receiver.ahead import RenewAhead, schedule
from vmm_cert_exporter.receiver.census import Holding, read_census
from vmm_cert_exporter.receiver.config import ReceiverConfig
from vmm_cert_exporter.receiver.guards import in_window, next_window_start
from vmm_cert_exporter.receiver.planner import REMOVE_REGISTER, UPDATE_CERTIFICATE
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.generate import BIG_COHORT_HOSTS
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.lab_child import LabChild
from vmm_cert_lab.processes import Processes
from vmm_cert_lab.promstack import Promtool
from vmm_cert_lab.receiver_testing import (
    FakeClock,
    Harness,
    http,
    make_harness,
    receiver_config,
)

DAY = 86400.0
# 2027-01-01 00:00 UTC: the cohort of the examples
NEW_YEAR = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
NIGHTLY = MaintenanceWindow(weekdays=tuple(range(7)), start=22 * 60, end=2 * 60)


def _receiver_config(**changes: object) -> ReceiverConfig:
    fields: dict[str, object] = {"run_as_account": "VMM Host Admins", "renew_ahead": True}
    fields.update(changes)
    return ReceiverConfig(**fields)  # type: ignore[arg-type]


def _capacity(concurrency: int = 2, duration: float = 300.0) -> Capacity:
    return Capacity(concurrency, duration, "assumed", (NIGHTLY,))


def _fleet(hosts: int) -> tuple[list[Holding], dict[str, VmmView]]:
    server = Computer("vmm01.lab.example", "vmm_server", "vmm01.lab.example", is_vmm_server=True)
    managed = [
        Computer(f"hv{i:04d}.lab.example", "hyperv_host", "vmm01.lab.example") for i in range(hosts)
    ]
    view = VmmView("vmm01.lab.example", "2022", False, True, (server, *managed))
    # NotAfter within the day, later for lower numbers; the VMM server's the earliest of all
    holdings = [Holding(server, NEW_YEAR)] + [
        Holding(c, NEW_YEAR + 60 * (hosts - i)) for i, c in enumerate(managed)
    ]
    return holdings, {"vmm01.lab.example": view}


def test_the_schedule_oldest_first_the_vmm_server_last_at_the_capacity() -> None:
    holdings, views = _fleet(200)
    config = _receiver_config(deny_hosts=("hv0007.lab.example",))
    capacity = _capacity()
    now = NEW_YEAR - 8 * DAY + 12 * 3600  # 24 December 12:00: late for three nights' work
    (plan,) = schedule(holdings, views, config, capacity, now)
    assert plan.day == "2027-01-01"
    assert plan.refused == (
        ("hv0007.lab.example", "not allowed: hv0007.lab.example matches deny_hosts pattern "
         "'hv0007.lab.example'"),
    )  # fmt: skip
    hosts = [j.target.computer.fqdn for j in plan.jobs]
    assert len(hosts) == 200  # 199 hosts and the VMM server
    assert hosts[-1] == "vmm01.lab.example"
    assert plan.jobs[-1].target.procedure == UPDATE_CERTIFICATE
    assert {j.target.procedure for j in plan.jobs[:-1]} == {REMOVE_REGISTER}
    not_afters = [j.not_after for j in plan.jobs[:-1]]
    assert not_afters == sorted(not_afters)  # oldest certificates first
    # two at once, every five minutes of the nightly window, from its next opening
    starts = [j.start_at for j in plan.jobs]
    assert starts == sorted(starts)
    first_night = now + 10 * 3600  # the window opens at 22:00
    assert starts[:4] == [first_night, first_night, first_night + 300, first_night + 300]
    assert starts[96] == first_night + DAY  # 96 a night
    assert starts[-1] + capacity.duration == capacity.finish(now, 200)
    # the must-start-by: the latest start still finishing cohort_margin (7d) before the day
    assert plan.must_start_by == capacity.latest_start(NEW_YEAR - 7 * DAY, 200)
    assert plan.must_start_by is not None and plan.must_start_by < now
    assert plan.due


def test_a_cohort_is_due_from_its_must_start_by_and_fresh_computers_are_left_out() -> None:
    holdings, views = _fleet(200)
    config = _receiver_config()
    capacity = _capacity()
    (early,) = schedule(holdings, views, config, capacity, NEW_YEAR - 60 * DAY)
    assert early.must_start_by is not None
    assert not early.due
    # not due yet: the planned starts begin at the must-start-by
    assert early.jobs[0].start_at >= early.must_start_by
    (due,) = schedule(holdings, views, config, capacity, early.must_start_by)
    assert due.due
    assert capacity.finish(early.must_start_by, 200) == pytest.approx(
        NEW_YEAR - 7 * DAY, abs=capacity.duration + 60
    )
    # a year and more away: outside min_validity, no renewal would find them stale
    assert schedule(holdings, views, config, capacity, NEW_YEAR - 400 * DAY) == []


@pytest.fixture(scope="module")
def big_cohort(
    open_lab: Callable[..., AbstractContextManager[RunningLab]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningLab]:
    """The big-cohort lab: 3,000 computers and their VMM server expiring on 1 January,
    shared by this module's tests, which change nothing on it (dry runs and censuses)."""
    with open_lab(tmp_path_factory.mktemp("big-cohort"), "big-cohort") as lab:
        yield lab


def test_the_big_cohort_dry_run_shows_the_whole_schedule_and_changes_nothing(
    big_cohort: RunningLab, tmp_path: Path
) -> None:
    """A dry-run receiver with renew_ahead: 2 at once, a nightly 4-hour window, 5 minutes a
    renewal until one is measured. Nothing before the must-start-by; from it, every
    computer's job with its planned start, the last one finishing cohort_margin before the
    day; dry runs that read and change nothing."""
    clock = FakeClock(datetime(2026, 11, 1, 12, tzinfo=UTC).timestamp())
    config = receiver_config(
        big_cohort,
        tmp_path,
        mode="dry-run",
        winrm_timeout="120s",
        renew_ahead=True,
        max_concurrent=2,
        max_concurrent_per_vmm_server=2,
        maintenance_windows=[{"start": "22:00", "end": "02:00"}],
    )
    receiver = start_receiver(config, clock=clock, background=False)
    try:
        day = big_cohort.model.list_computers()[0]["not_after"][:10]
        receiver.inventory.refresh()
        assert receiver.inventory.census_errors == {}
        assert len(receiver.inventory.holdings) == 3001
        (projection,) = receiver.app.projections()
        assert (projection.cohort.day.isoformat(), projection.cohort.left) == (day, 3001)
        must = projection.must_start_by
        assert must is not None and clock() < must  # not due yet
        assert receiver.journal.list_jobs() == []

        clock.t = must
        receiver.inventory.refresh()
        jobs = sorted(receiver.journal.list_jobs(limit=10000), key=lambda j: j.id)
        assert len(jobs) == 3001
        assert {(j.mode, j.source, j.cohort, j.status) for j in jobs} == {
            ("dry-run", "cohort", day, "planned")
        }
        assert Counter(j.role for j in jobs) == {
            "hyperv_host": 2910,
            "library_server": 90,
            "vmm_server": 1,
        }
        # the VMM server last, by procedure 2; the planned starts in order, the last one
        # ending when the projection says, cohort_margin (7d) before the day
        assert (jobs[-1].host, jobs[-1].procedure) == (lab_host("vmm01"), UPDATE_CERTIFICATE)
        starts = [j.planned_start_at for j in jobs]
        assert None not in starts
        assert starts == sorted(starts)  # type: ignore[type-var]
        (projection,) = receiver.app.projections()
        capacity = receiver.app.planning_capacity()
        assert starts[-1] + capacity.duration == projection.finish  # type: ignore[operator]
        expires = projection.cohort.expires_at
        assert projection.finish is not None
        assert expires - 7 * DAY - 600 <= projection.finish <= expires - 7 * DAY
        status = receiver.app.status()
        assert status["renew_ahead"] is True
        assert (status["inventory"]["census_computers"], status["inventory"]["census_errors"]) == (
            3001,
            {},
        )
        # the API shows them
        listed = receiver.app._list("limit=1")["jobs"][0]
        assert (listed["source"], listed["cohort"]) == ("cohort", day)
        assert listed["planned_start_at"] is not None

        # planning again (as after every census) plans nobody twice
        for listener in receiver.inventory.listeners:
            listener()
        assert len(receiver.journal.list_jobs(limit=10000)) == 3001
        # nothing ran: the dry runs' plans are the engine's, tested on the demo lab below
        assert {c["not_after"][:10] for c in big_cohort.model.list_computers()} == {day}
    finally:
        receiver.stop()


def _due(harness: Harness) -> tuple[list[Holding], list[str]]:
    """The census of the harness's lab, and the hosts of its due cohorts in schedule order."""
    rcfg = harness.config.receiver
    assert rcfg is not None
    holdings, errors = read_census(harness.runner, harness.inventory.inventory)
    assert errors == {}
    plans = schedule(
        holdings, harness.inventory.inventory.vmm_views, rcfg, _capacity(), harness.clock()
    )
    return holdings, [j.target.computer.fqdn for p in plans if p.due for j in p.jobs]


def _ahead(harness: Harness) -> RenewAhead:
    assert harness.config.receiver is not None
    return RenewAhead(harness.config.receiver, harness.journal, _capacity, harness.clock)


def test_renew_ahead_jobs_wait_for_every_guard(
    harness_factory: Callable[..., Harness],
) -> None:
    """Execute mode on the demo lab: the allowlist, one job per host, the pause, approval
    and the windows hold for the receiver's own jobs as for an alert's."""
    # 25 days on, the demo's 1 January cohort is due too
    later = time.time() + 25 * DAY
    _, due = _due(harness_factory(renew_ahead=True, clock=FakeClock(later), winrm_timeout="60s"))
    assert len(due) >= 4, due
    denied, alerted = due[0], due[1]
    hour = datetime.fromtimestamp(later, UTC).hour
    harness = harness_factory(
        clock=FakeClock(later),
        winrm_timeout="60s",
        renew_ahead=True,
        require_approval=True,
        deny_hosts=[denied],
        maintenance_windows=[
            {"start": f"{(hour + 2) % 24:02d}:00", "end": f"{(hour + 3) % 24:02d}:00"}
        ],
    )
    holdings, _ = _due(harness)
    views = harness.inventory.inventory.vmm_views
    alert_job = harness.submit(alerted).job_id
    harness.journal.set_paused(True, by="test")

    ahead = _ahead(harness)
    assert ahead.run(holdings, views) == len(due) - 2
    jobs = [j for j in harness.journal.active_jobs() if j.source == "cohort"]
    assert [j.host for j in jobs] == [h for h in due if h not in (denied, alerted)]
    assert harness.journal.active_job(alerted).id == alert_job  # type: ignore[union-attr]
    assert ahead.run(holdings, views) == 0  # once per host and cohort

    harness.tick()
    for job in jobs:
        assert harness.job(job.id).reason.startswith("paused by test")  # type: ignore[union-attr]
    harness.journal.set_paused(False, by="test")
    harness.tick()
    for job in jobs:
        assert harness.job(job.id).reason.startswith("awaiting manual approval")  # type: ignore[union-attr]
    first = jobs[0]
    assert harness.journal.approved_share() == 0.0
    harness.journal.approve(first.id, "operator")
    # what the receiver's capacity is scaled by: one of the cohort's jobs and the alert's
    assert harness.journal.approved_share() == 1 / (len(jobs) + 1)
    harness.tick()
    assert harness.job(first.id).reason.startswith("outside the maintenance windows")  # type: ignore[union-attr]
    for operation in ("remove-certificates", "register-managed-computer", "update-vmm-certificate"):
        assert harness.fleet.count(operation) == 0

    harness.clock.advance(2 * 3600 - harness.clock() % 3600 + 60)  # into the window
    harness.settle()
    done = harness.job(first.id)
    assert (done.status, done.source) == ("succeeded", "cohort"), done.reason
    assert done.to_json()["cohort"] == first.cohort
    # only the approved one ran; the others still wait for a person
    assert [harness.job(j.id).status for j in jobs[1:]] == ["waiting"] * (len(jobs) - 1)


def test_renew_ahead_in_dry_run_plans_and_changes_nothing(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(
        mode="dry-run",
        renew_ahead=True,
        clock=FakeClock(time.time() + 25 * DAY),
        winrm_timeout="60s",
    )
    holdings, due = _due(harness)
    assert _ahead(harness).run(holdings, harness.inventory.inventory.vmm_views) == len(due)
    harness.settle(passes=len(due) + 2)
    jobs = sorted(harness.journal.list_jobs(limit=1000), key=lambda j: j.id)
    assert [j.host for j in jobs] == due
    assert {(j.mode, j.source) for j in jobs} == {("dry-run", "cohort")}
    assert all(j.planned_start_at is not None for j in jobs)
    assert "planned" in {j.status for j in jobs}
    for operation in ("remove-certificates", "register-managed-computer", "update-vmm-certificate"):
        assert harness.fleet.count(operation) == 0


class _Every(dict[tuple[str, str], Callable[[], None]]):
    """HookRunner hooks that stay: every renewal's change step, not only the first."""

    def pop(self, key: tuple[str, str], default: object = None) -> Any:
        return self.get(key, default)


# The whole big cohort: every computer of the scenario (3,000) and its VMM server.
REAL_HOSTS = BIG_COHORT_HOSTS


@pytest.mark.e2e
@pytest.mark.long
@pytest.mark.timeout(900)  # about four minutes alone, more beside the other e2e tests
def test_renew_ahead_finishes_when_projected_before_the_day_with_every_guard(
    processes: Processes, tmp_path: Path
) -> None:
    """The big cohort, 3,000 computers and the VMM server, renewed for real over WinRM
    (Basic, HTTP) on a compressed clock, in the issue's shape: two at once in a nightly
    4-hour window, five minutes a renewal, 96 a night. The lab runs in its own process, as
    a fleet does its own work. Each renewal's worker waits after its first read until the
    pass that started it has ended and the clock has moved five minutes on, so that two at
    once means two per five minutes of receiver time. Started at its must-start-by, the
    cohort finishes where the projection said (within 10 % of the span), before its day
    with the margin; no renewal started outside the window, never more than two ran at
    once, and the VMM server came last, by procedure 2, once every other renewal had
    ended."""
    lab = LabChild.start(processes, tmp_path / "lab", "--scenario", "big-cohort")
    clock = FakeClock()
    harness = make_harness(
        lab,
        tmp_path / "receiver",
        clock=clock,
        winrm_timeout="60s",
        renew_ahead=True,
        max_concurrent=2,
        max_concurrent_per_vmm_server=2,
        maintenance_windows=[{"start": "22:00", "end": "02:00"}],
        assumed_renewal_duration="5m",
    )
    gate = threading.Event()
    gate.set()
    try:
        rcfg = harness.config.receiver
        assert rcfg is not None
        vmm = lab_host("vmm01")

        def until_the_pass_ends() -> None:
            gate.wait(60)

        # every preflight reads VMM's view first (procedures 1 and 2 alike)
        harness.runner.after = _Every({(vmm, "list-managed-computers"): until_the_pass_ends})
        holdings, errors = read_census(harness.runner, harness.inventory.inventory)
        assert errors == {} and len(holdings) == REAL_HOSTS + 1
        # two months before the day, whatever today's date: the schedule is not due yet
        (cohort,) = group((h.computer.role, h.not_after) for h in holdings)
        clock.t = cohort.expires_at - 60 * DAY
        capacity = Capacity(2, 300.0, "assumed", rcfg.maintenance_windows)
        assert capacity.per_day == 96
        views = harness.inventory.inventory.vmm_views
        (plan,) = schedule(holdings, views, rcfg, capacity, clock())
        assert plan.must_start_by is not None and not plan.due
        clock.t = plan.must_start_by
        (projection,) = project(group((h.computer.role, h.not_after) for h in holdings),
                                capacity, clock(), rcfg.cohort_margin)  # fmt: skip
        assert projection.finish is not None
        start = clock()
        ahead = RenewAhead(rcfg, harness.journal, lambda: capacity, clock)
        assert ahead.run(holdings, views) == REAL_HOSTS + 1

        for _ in range(2 * REAL_HOSTS):  # bounded: a pass per two renewals, and the nights
            gate.clear()
            began = clock()
            started = harness.engine.tick()
            if started:
                clock.t = began + 300.0  # the renewals started in this pass take 5 minutes
            gate.set()
            for future in started:
                future.result()
            if not harness.journal.active_jobs():
                break
            if not started:  # nothing may start before the window opens: go there
                upcoming = next_window_start(rcfg.maintenance_windows, clock())
                assert upcoming is not None
                clock.t = upcoming
        jobs = harness.journal.list_jobs(limit=10 * REAL_HOSTS)
        assert len(jobs) == REAL_HOSTS + 1
        assert {(j.status, j.source) for j in jobs} == {("succeeded", "cohort")}
        finished = max(j.finished_at or 0.0 for j in jobs)
        assert abs(finished - projection.finish) <= 0.1 * (projection.finish - start)
        assert finished <= projection.cohort.expires_at - rcfg.cohort_margin
        attempts = sorted(
            (a for j in jobs for a in harness.journal.attempts(j.id)), key=lambda a: a.started_at
        )
        assert len(attempts) == REAL_HOSTS + 1  # one attempt each: nothing failed or retried
        assert all(in_window(rcfg.maintenance_windows[0], a.started_at) for a in attempts)
        # never more than max_concurrent at once, and the window's work really used both
        edges = sorted(
            [(a.started_at, 1) for a in attempts]
            + [(a.finished_at, -1) for a in attempts if a.finished_at is not None]
        )
        running = list(itertools.accumulate(step for _, step in edges))
        assert max(running) == 2
        server_job = next(j for j in jobs if j.host == vmm)
        assert server_job.procedure == UPDATE_CERTIFICATE
        (server_attempt,) = harness.journal.attempts(server_job.id)
        assert server_attempt.started_at == attempts[-1].started_at
        # strictly: after every other renewal of the cohort had ended, not beside the last
        assert attempts[-2].started_at < server_attempt.started_at
        assert server_attempt.started_at >= max(a.finished_at or 0.0 for a in attempts[:-1])
        computers = lab.list_computers()
        assert len(computers) == REAL_HOSTS + 1
        assert plan.day not in {c["not_after"][:10] for c in computers}
    finally:
        gate.set()
        harness.close()


RULES = Path(__file__).resolve().parents[2] / "alerts" / "vmm-certificates.rules.yml"


def _exporter_cohorts(
    lab: RunningLab, directory: Path, now: float
) -> list[tuple[str, dict[str, str], float]]:
    """What the exporter publishes for the lab that CohortAtRisk reads: its cohort families
    and one computer's ``vmm_cert_collect_success`` (the rule only asks whether the exporter
    publishes any), from a real collection of every computer rendered as ``/metrics``
    renders it. Timestamps are shifted by ``now`` (promtool's minute 0)."""
    config = receiver_config(lab, directory, mode="dry-run", winrm_timeout="120s")
    refresher = Refresher(config)
    snapshot = refresher.refresh_once()
    assert len(snapshot.hosts) == 3001
    assert all(h.last_ok for h in snapshot.hosts), "every computer read"
    collector = SnapshotCollector(lambda: snapshot, lambda: refresher.histogram)
    text = Exposition(collector, lambda: snapshot, lambda: refresher.histogram.count).render()
    out: list[tuple[str, dict[str, str], float]] = []
    alive = False
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            if sample.name == "vmm_cert_cohort_expiry_timestamp_seconds":
                out.append((sample.name, dict(sample.labels), sample.value - now))
            elif sample.name == "vmm_cert_cohort_computers":
                out.append((sample.name, dict(sample.labels), sample.value))
            elif sample.name == "vmm_cert_collect_success" and not alive:
                alive = sample.value == 1
                out.append((sample.name, dict(sample.labels), sample.value))
    return out


def test_cohort_at_risk_fires_and_resolves_as_capacity_changes(
    big_cohort: RunningLab, tmp_path: Path, promtool: Promtool
) -> None:
    """The big cohort, 29.5 days before its day, against three receivers: 2 at once in a
    nightly 4-hour window (96 a day: finished after the day, critical), the same with a
    1-hour window added (120 a day: inside the 7-day margin, warning), then max_concurrent
    raised to 4 (240 a day: on time). Each receiver's published capacity, projected finish
    and margin, and the exporter's cohorts from a real collection of the lab, go through the
    shipped rule in promtool, three hours each, with time shifted so that promtool's minute 0
    is the receivers' now; the receivers' own projections agree."""
    base: dict[str, Any] = {
        "mode": "dry-run",
        "winrm_timeout": "120s",
        "max_concurrent": 2,
        "max_concurrent_per_vmm_server": 2,
        "maintenance_windows": [{"start": "22:00", "end": "02:00"}],
    }
    widened = {
        **base,
        "maintenance_windows": [
            {"start": "22:00", "end": "02:00"},
            {"start": "12:00", "end": "13:00"},
        ],
    }
    raised = {**widened, "max_concurrent": 4, "max_concurrent_per_vmm_server": 4}
    expires = datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC).timestamp()
    clock = FakeClock(expires - 29.5 * DAY)
    published: list[dict[str, float]] = []
    risks: list[str] = []
    census: dict[str, int] = {}
    first: Receiver | None = None
    for index, settings in enumerate((base, widened, raised)):
        config = receiver_config(big_cohort, tmp_path / f"r{index}", **settings)
        receiver = start_receiver(config, clock=clock, background=False)
        try:
            if first is None:
                receiver.inventory.refresh()
                first = receiver
            else:  # the same fleet: the first receiver's census (3,001 reads) serves all
                receiver.inventory.inventory = first.inventory.inventory
                receiver.inventory.holdings = first.inventory.holdings
            (projection,) = receiver.app.projections()
            assert projection.cohort.expires_at == expires
            risks.append(projection.risk)
            census = dict(projection.cohort.by_role)
            status, text = http("GET", receiver.url + "/metrics")
            assert status == 200 and promtool.check_metrics(text).returncode == 0
            published.append(
                {
                    s.name: s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name.startswith(("vmm_renewal_capacity", "vmm_renewal_cohort"))
                }
            )
        finally:
            if receiver is not first:
                receiver.stop()
    assert first is not None
    first.stop()
    assert risks == ["critical", "warning", "ok"]
    capacity = [p["vmm_renewal_capacity_per_day"] for p in published]
    assert capacity == [96.0, 120.0, 240.0]
    assert census == {"hyperv_host": 2910, "library_server": 90, "vmm_server": 1}
    assert {p["vmm_renewal_cohort_computers_left"] for p in published} == {3001}

    # the exporter's side: one real collection of the lab by the product, rendered as its
    # /metrics renders it; expiry shifted like the receivers' clock
    exported = _exporter_cohorts(big_cohort, tmp_path / "exporter", clock())
    day, minutes = f"{datetime.now(UTC).year + 1}-01-01", 180
    computers = {
        labels["role"]: value
        for name, labels, value in exported
        if name == "vmm_cert_cohort_computers" and labels["cohort"] == day
    }
    assert computers == census  # the exporter and the receivers' census agree
    exporter = 'instance="e:9868",job="vmm-cert-exporter"'
    receiver_labels = 'instance="r:9869",job="vmm-cert-receiver"'

    def exported_series(name: str, labels: dict[str, str], value: float) -> tuple[str, str]:
        shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{exporter},{shown}}}", f"{value:.0f}x540"

    series = [
        *(exported_series(name, labels, value) for name, labels, value in exported),
        (f'vmm_receiver_info{{{receiver_labels},version="0",mode="dry-run"}}', "1x540"),
        (
            f'vmm_renewal_capacity_per_day{{{receiver_labels},duration_source="assumed"}}',
            " ".join(f"{c:g}x{minutes - 1}" for c in capacity),
        ),
        (
            f"vmm_renewal_cohort_margin_seconds{{{receiver_labels}}}",
            f"{published[0]['vmm_renewal_cohort_margin_seconds']:.0f}x540",
        ),
        (
            f'vmm_renewal_cohort_projected_finish_timestamp_seconds{{{receiver_labels},cohort="{day}"}}',
            " ".join(
                f"{p['vmm_renewal_cohort_projected_finish_timestamp_seconds'] - clock():.0f}"
                f"x{minutes - 1}"
                for p in published
            ),
        ),
    ]

    def firing(*severities: str) -> list[dict[str, Any]]:
        return [
            {
                "labels": (
                    'ALERTS{alertname="VMMCertificateCohortAtRisk",alertstate="firing",'
                    f'cohort="{day}",severity="{severity}"}}'
                ),
                "value": 1,
            }
            for severity in severities
        ]

    expr = 'ALERTS{alertname="VMMCertificateCohortAtRisk",alertstate="firing"}'
    checks = [
        ("59m", []),  # pending for its first hour
        ("2h", firing("critical", "warning")),  # 96 a day: after the day
        ("4h30m", firing("warning")),  # a window added: inside the margin
        ("7h30m", []),  # max_concurrent raised: on time
    ]
    document = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {"expr": expr, "eval_time": at, "exp_samples": samples}
                    for at, samples in checks
                ],
            }
        ],
    }
    test_file = tmp_path / "cohort-lab.test.yml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = promtool.run("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout
