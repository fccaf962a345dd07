"""Cohort planning (vmm_cert_exporter.cohorts): capacity from windows and concurrency, the
projected finish, the latest start and the risk at its boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from vmm_cert_exporter.cohorts import (
    CRITICAL,
    OK,
    WARNING,
    Capacity,
    Cohort,
    capacities,
    group,
    minute_utc,
    procedure_mix,
    project,
)
from vmm_cert_exporter.cohorts_command import (
    JournalFacts,
    Settings,
    cohort_json,
    plan,
    render_table,
)
from vmm_cert_exporter.inventory import Computer, VmmView
from vmm_cert_exporter.receiver.config import WEEKDAYS, MaintenanceWindow, ReceiverConfig
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot
from vmm_cert_lab.stored import stored_certificate

EVERY_DAY = tuple(range(len(WEEKDAYS)))
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
NEW_YEAR = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
DAY = 86400.0


def nightly(start: int = 22 * 60, end: int = 2 * 60, zone: str = "UTC") -> MaintenanceWindow:
    return MaintenanceWindow(weekdays=EVERY_DAY, start=start, end=end, timezone=zone)


def test_the_worked_example_two_thousand_hosts_in_a_nightly_window() -> None:
    """docs/renewal.md#cohorts: 2 at once, 5 minutes each, 22:00-02:00 every night."""
    capacity = Capacity(2, 300.0, "assumed", (nightly(),), at=NOW)
    assert capacity.per_day == 96.0
    # 1,000 rounds of 5 minutes = 4,995 open minutes before the last one starts: 20.8 nights
    assert minute_utc(capacity.finish(NOW, 2000)) == "2026-12-23T01:20Z"
    deadline = NEW_YEAR - 7 * DAY
    start = capacity.latest_start(deadline, 2000)
    assert minute_utc(start) == "2026-12-04T00:40Z"
    assert start is not None
    assert capacity.finish(start, 2000) == deadline
    # a start one night later misses the deadline
    finish = capacity.finish(start + DAY, 2000)
    assert finish is not None and finish > deadline


def test_a_window_in_another_zone_moves_by_its_offset() -> None:
    utc = Capacity(1, 60.0, "assumed", (nightly(0, 60),), at=NOW)
    tokyo = Capacity(1, 60.0, "assumed", (nightly(9 * 60, 10 * 60, "Asia/Tokyo"),), at=NOW)
    assert utc.finish(NOW, 30) == tokyo.finish(NOW, 30)
    assert minute_utc(utc.finish(NOW, 30)) == "2026-12-03T00:30Z"


def test_overlapping_windows_count_once_and_concurrency_scales() -> None:
    one = Capacity(1, 600.0, "assumed", (nightly(),), at=NOW)
    twice = Capacity(1, 600.0, "assumed", (nightly(), nightly(23 * 60, 1 * 60)), at=NOW)
    assert one.open_minutes_per_week == twice.open_minutes_per_week == 7 * 240
    assert Capacity(4, 600.0, "assumed", (nightly(),), at=NOW).per_day == 4 * one.per_day


def test_without_windows_every_minute_is_open() -> None:
    capacity = Capacity(1, 60.0, "assumed", at=NOW)
    assert capacity.per_day == 1440.0
    assert capacity.finish(NOW, 1) == NOW + 60
    assert capacity.finish(NOW, 3) == NOW + 180
    assert capacity.latest_start(NOW + 180, 3) == NOW


@pytest.mark.parametrize(
    ("expires_after_finish", "risk"),
    [
        (7 * DAY + 60, OK),  # finishes more than the margin before its day
        (7 * DAY, OK),  # exactly the margin before: on time
        (7 * DAY - 60, WARNING),  # inside the margin
        (0.0, WARNING),  # on the day itself
        (-60.0, CRITICAL),  # after its day
    ],
)
def test_risk_at_its_boundaries(expires_after_finish: float, risk: str) -> None:
    capacity = Capacity(1, 60.0, "assumed", at=NOW)
    finish = NOW + 60  # one computer, one minute
    cohort = Cohort(date(2026, 12, 30), finish + expires_after_finish, {"hyperv_host": 1})
    (projection,) = project([cohort], capacity, NOW, 7 * DAY)
    assert projection.finish == finish
    assert projection.risk == risk


def test_paused_never_finishes_and_is_critical() -> None:
    capacity = Capacity(2, 300.0, "assumed", (nightly(),), paused=True, at=NOW)
    (projection,) = project(
        [Cohort(date(2027, 1, 1), NEW_YEAR, {"hyperv_host": 10})], capacity, NOW, 7 * DAY
    )
    assert capacity.per_day == 0.0
    assert projection.finish is None
    assert projection.must_start_by is None
    assert projection.risk == CRITICAL


def test_cohorts_queue_in_expiry_order() -> None:
    capacity = Capacity(1, 3600.0, "assumed", at=NOW)
    early = Cohort(date(2026, 12, 20), NOW + 20 * DAY, {"hyperv_host": 24})
    late = Cohort(date(2026, 12, 21), NOW + 21 * DAY, {"hyperv_host": 24})
    first, second = project([late, early], capacity, NOW, 7 * DAY)
    assert first.cohort is early
    assert first.finish == NOW + 24 * 3600
    # the later cohort starts where the earlier finished
    assert second.finish == NOW + 48 * 3600
    # its own must-start-by ignores the earlier cohort: 24 hours before its day - margin
    assert second.must_start_by == NOW + 21 * DAY - 7 * DAY - 24 * 3600


def test_group_by_utc_day_and_role_with_the_renewed() -> None:
    new_year = NEW_YEAR
    cohorts = group(
        [
            ("hyperv_host", new_year),
            ("hyperv_host", new_year + 3600),
            ("library_server", new_year),
            ("vmm_server", new_year + DAY),
        ],
        renewed=[new_year, new_year + 2 * DAY],
    )
    assert [(c.day.isoformat(), dict(c.by_role), c.renewed, c.left) for c in cohorts] == [
        ("2027-01-01", {"hyperv_host": 2, "library_server": 1}, 1, 3),
        ("2027-01-02", {"vmm_server": 1}, 0, 1),
        ("2027-01-03", {}, 1, 0),
    ]
    assert cohorts[0].expires_at == new_year
    done = project(cohorts, Capacity(1, 60.0, "assumed", at=NOW), NOW, 7 * DAY)[2]
    assert (done.risk, done.must_start_by) == (OK, None)


def test_the_worked_example_in_the_docs_is_what_the_command_prints() -> None:
    capacity = Capacity(2, 300.0, "assumed", (nightly(),), at=NOW)
    cohort = Cohort(
        date(2027, 1, 1), NEW_YEAR, {"hyperv_host": 1990, "library_server": 9, "vmm_server": 1}
    )
    report = {
        "capacity": {
            "per_day": capacity.per_day,
            "configured_per_day": capacity.per_day,
            "measured_per_day": None,
            "renewal_seconds": capacity.duration,
            "renewal_duration_source": capacity.duration_source,
            "concurrency": capacity.concurrency,
            "open_hours_per_week": capacity.open_minutes_per_week / 60,
            "paused": False,
            "require_approval": False,
            "receiver_configured": True,
        },
        "cohorts": [cohort_json(p) for p in project([cohort], capacity, NOW, 7 * DAY)],
    }
    table = render_table(report)
    docs = (Path(__file__).parent.parent / "docs" / "renewal.md").read_text()
    assert f"```\n{table}\n```" in docs


def _capacities(**changes: object) -> tuple[Capacity, Capacity]:
    arguments: dict[str, object] = {
        "max_concurrent": 2,
        "per_vmm_server": 2,
        "vmm_servers": 1,
        "windows": (nightly(),),
        "approval": False,
        "paused": False,
        "assumed": 300.0,
        "durations": {},
        "at": NOW,
    }
    arguments.update(changes)
    return capacities(**arguments)  # type: ignore[arg-type]


def test_capacity_per_procedure_weighted_by_what_is_left_to_renew() -> None:
    durations = {"remove-register": [200.0, 240.0, 900.0], "update-vmm-certificate": [600.0]}
    # without a mix: the median of every renewal
    assert _capacities(durations=durations)[1].duration == 420.0
    # 2,999 hosts and the VMM server left: each procedure's median, by its share
    _, used = _capacities(
        durations=durations, mix={"remove-register": 2999, "update-vmm-certificate": 1}
    )
    assert (used.duration_source, used.duration) == ("measured", (2999 * 240 + 600) / 3000)
    # a procedure not measured yet counts at the assumed duration
    _, used = _capacities(
        durations={"remove-register": [240.0]},
        mix={"remove-register": 3, "update-vmm-certificate": 1},
    )
    assert used.duration == (3 * 240 + 300) / 4
    # nothing measured: assumed, as configured
    configured, used = _capacities(mix={"remove-register": 3})
    assert used is configured and used.duration_source == "assumed"


def test_require_approval_scales_the_capacity_by_the_approved_share() -> None:
    _, full = _capacities()
    _, approval = _capacities(approval=True, approved_share=0.25)
    assert full.per_day == 96.0
    assert approval.per_day == 24.0
    # the share only counts with require_approval on
    assert _capacities(approved_share=0.25)[1].per_day == 96.0


def test_the_cohorts_command_weighs_the_procedures_as_the_receiver_does() -> None:
    """One capacity definition: ``cohorts`` takes each procedure's median, weighted by the
    computers left to renew with it (``procedure_mix``, as the receiver), and scales by the
    approved share; not the median of every renewal."""
    vmm = "vmm01.corp.example"
    server = Computer(vmm, "vmm_server", vmm, is_vmm_server=True)
    hosts = [Computer(f"hv{i}.corp.example", "hyperv_host", vmm) for i in range(3)]
    fresh = Computer("hv9.corp.example", "hyperv_host", vmm)  # outside min_validity
    views = {vmm: VmmView(vmm, "2022", False, True, (server, *hosts, fresh))}
    expiring = datetime(2027, 1, 1, tzinfo=UTC)
    snapshot = Snapshot(
        tuple(
            HostSnapshot(
                c,
                (stored_certificate(c.fqdn, later if c is fresh else expiring),),
                True,
                NOW,
                True,
                1.0,
                None,
                None,
            )
            for c in (server, *hosts, fresh)
            for later in [datetime(2030, 1, 1, tzinfo=UTC)]
        ),
        NOW,
        1.0,
        60.0,
        True,
    )
    rcfg = ReceiverConfig(
        run_as_account="VMM Host Admins",
        max_concurrent=2,
        max_concurrent_per_vmm_server=2,
        maintenance_windows=(nightly(),),
        require_approval=True,
    )
    durations = {"remove-register": [200.0, 240.0, 900.0], "update-vmm-certificate": [600.0]}
    facts = JournalFacts(durations, [], False, approved_share=0.5)
    report = plan(snapshot, Settings.of(rcfg), facts, NOW, views)
    mix = procedure_mix(
        ((h.computer, h.current.info.not_after.timestamp()) for h in snapshot.hosts if h.current),
        views,
        now=NOW,
        min_validity=rcfg.min_validity,
    )
    assert mix == {"remove-register": 3, "update-vmm-certificate": 1}
    weighted = (3 * 240 + 600) / 4  # the median of every renewal would be 420
    assert report["capacity"]["renewal_seconds"] == weighted
    _, used = capacities(
        max_concurrent=2,
        per_vmm_server=rcfg.max_concurrent_per_vmm_server,
        vmm_servers=1,
        windows=(nightly(),),
        approval=True,
        paused=False,
        assumed=rcfg.assumed_renewal_duration,
        durations=durations,
        at=NOW,
        mix=mix,
        approved_share=0.5,
    )
    assert report["capacity"]["per_day"] == round(used.per_day, 1)
    assert used.per_day == pytest.approx(0.5 * 2 * 240 * 60 / weighted)
