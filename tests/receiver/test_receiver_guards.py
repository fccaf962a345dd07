"""Guardrails with an injected clock: windows, backoff, cooldown, approval, pause, limits.

Nothing here sleeps: the receiver's clock is a FakeClock the tests move.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmm_cert_exporter.config import MaintenanceWindow
from vmm_cert_exporter.receiver import guards
from vmm_cert_exporter.receiver.journal import PauseState
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.receiver_testing import FakeClock, Harness

HOUR = 3600.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def next_monday_10_utc() -> float:
    """The next Monday 10:00 UTC after now: near the lab's real clock (certificates are
    judged against it), and a known weekday for the windows."""
    now = datetime.now(UTC)
    day = now.date() + timedelta(days=(7 - now.weekday()) % 7 or 7)
    return datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------------
# Pure functions


NIGHT_BERLIN = MaintenanceWindow(
    weekdays=(0, 1, 2, 3, 4), start=22 * 60, end=4 * 60, timezone="Europe/Berlin"
)


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        ("2030-06-03T19:59:00+00:00", False),  # Mon 21:59 Berlin (CEST, UTC+2)
        ("2030-06-03T20:00:00+00:00", True),  # Mon 22:00 Berlin: opens
        ("2030-06-04T01:59:00+00:00", True),  # Tue 03:59: Monday's window, past midnight
        ("2030-06-04T02:00:00+00:00", False),  # Tue 04:00: closed
        ("2030-06-07T21:00:00+00:00", True),  # Fri 23:00
        ("2030-06-08T01:00:00+00:00", True),  # Sat 03:00: Friday's window goes on
        ("2030-06-08T21:00:00+00:00", False),  # Sat 23:00: no window starts on Saturday
        ("2030-06-10T01:00:00+00:00", False),  # Mon 03:00: Sunday had no window
        ("2030-12-02T20:59:00+00:00", False),  # Mon 21:59 Berlin in winter (CET, UTC+1)
        ("2030-12-02T21:00:00+00:00", True),  # Mon 22:00 Berlin in winter
    ],
)
def test_window_in_its_time_zone(moment: str, inside: bool) -> None:
    assert guards.in_window(NIGHT_BERLIN, ts(moment)) is inside


def test_window_same_day_and_whole_day() -> None:
    office = MaintenanceWindow(weekdays=(2,), start=9 * 60, end=17 * 60, timezone="UTC")
    assert guards.in_window(office, ts("2030-06-05T09:00:00+00:00"))  # Wednesday
    assert not guards.in_window(office, ts("2030-06-05T17:00:00+00:00"))
    assert not guards.in_window(office, ts("2030-06-06T10:00:00+00:00"))  # Thursday
    whole = MaintenanceWindow(weekdays=(6,), start=0, end=24 * 60, timezone="Asia/Tokyo")
    assert guards.in_window(whole, ts("2030-06-09T00:00:00+09:00"))  # Sunday in Tokyo
    assert guards.in_window(whole, ts("2030-06-09T23:59:00+09:00"))
    assert not guards.in_window(whole, ts("2030-06-08T23:59:00+09:00"))


def test_next_window_start_and_reason() -> None:
    # Saturday noon UTC: the next window is Monday 22:00 Berlin
    now = ts("2030-06-08T12:00:00+00:00")
    assert guards.next_window_start([NIGHT_BERLIN], now) == ts("2030-06-10T20:00:00+00:00")
    reason = guards.window_reason([NIGHT_BERLIN], now)
    assert reason is not None
    assert "mon,tue,wed,thu,fri 22:00-04:00 Europe/Berlin" in reason
    assert "2030-06-10T20:00:00" in reason
    assert guards.window_reason([], now) is None
    assert guards.window_reason([NIGHT_BERLIN], ts("2030-06-10T20:30:00+00:00")) is None


def test_window_across_daylight_saving_change() -> None:
    # Europe/Berlin springs forward on 2030-03-31 at 02:00 -> 03:00
    early = MaintenanceWindow(weekdays=(6,), start=1 * 60, end=4 * 60, timezone="Europe/Berlin")
    assert guards.in_window(early, ts("2030-03-31T00:30:00+00:00"))  # 01:30 CET
    assert guards.in_window(early, ts("2030-03-31T01:30:00+00:00"))  # 03:30 CEST
    assert not guards.in_window(early, ts("2030-03-31T02:00:00+00:00"))  # 04:00 CEST


def test_backoff_doubles_from_one_hour_to_32_hours() -> None:
    delays = [guards.backoff_delay(n, HOUR, 32 * HOUR) / HOUR for n in range(1, 10)]
    assert delays == [1, 2, 4, 8, 16, 32, 32, 32, 32]
    assert guards.backoff_delay(0, HOUR, 32 * HOUR) == 0
    assert guards.backoff_delay(10_000, HOUR, 32 * HOUR) == 32 * HOUR


def test_pause_wins_over_everything(harness: Harness) -> None:
    decision = harness.submit(lab_host("hv36"))
    job = harness.job(decision.job_id)
    assert harness.config.receiver is not None
    reason = guards.blocked_reason(
        job,
        harness.config.receiver,
        now=harness.clock(),
        pause=PauseState(True, by="basic:ops"),
        last_fresh_at=harness.clock(),
    )
    assert reason is not None and reason.startswith("paused by basic:ops")


# --------------------------------------------------------------------------------------------
# The engine applies them


def waiting(harness: Harness, job_id: int | None) -> str:
    job = harness.job(job_id)
    assert job.status == "waiting", (job.status, job.reason)
    assert job.reason is not None
    return job.reason


def test_maintenance_window_makes_jobs_wait(harness_factory: Callable[..., Harness]) -> None:
    clock = FakeClock(next_monday_10_utc())
    harness = harness_factory(
        clock=clock,
        maintenance_windows=[
            {"weekdays": ["mon"], "start": "22:00", "end": "04:00", "timezone": "Europe/Berlin"}
        ],
    )
    decision = harness.submit(lab_host("hv36"))
    harness.tick()
    assert waiting(harness, decision.job_id).startswith("outside the maintenance windows")
    assert harness.fleet.count("remove-certificates") == 0
    clock.advance(12 * HOUR)  # Monday 22:00 UTC: 23:00 or 00:00 in Berlin, inside
    harness.tick()
    assert harness.job(decision.job_id).status == "succeeded"


def test_max_concurrent_overall_and_per_vmm_server(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(max_concurrent=1, max_concurrent_per_vmm_server=1)
    first = harness.submit(lab_host("hv36"))
    second = harness.submit(lab_host("hv37"))
    started = harness.engine.tick(wait=False)
    assert len(started) == 1
    assert "max_concurrent reached (1 running)" in waiting(harness, second.job_id)
    for future in started:
        future.result()
    assert harness.job(first.job_id).status == "succeeded"
    harness.tick()
    assert harness.job(second.job_id).status == "succeeded"

    other = harness_factory(max_concurrent=3, max_concurrent_per_vmm_server=1)
    a, b = other.submit(lab_host("hv31")), other.submit(lab_host("hv32"))
    started = other.engine.tick(wait=False)
    assert len(started) == 1
    assert "max_concurrent_per_vmm_server reached (1 running on vmm01.lab.example)" in waiting(
        other, b.job_id
    )
    for future in started:
        future.result()
    other.settle()
    assert {other.job(a.job_id).status, other.job(b.job_id).status} == {"succeeded"}


def test_cooldown_after_a_renewal(harness: Harness) -> None:
    host = lab_host("hv36")
    first = harness.submit(host)
    harness.tick()
    assert harness.job(first.job_id).status == "succeeded"
    # a new alert for the same host soon after (the exporter has not refreshed yet)
    harness.clock.advance(600)
    second = harness.submit(host)
    assert second.outcome == "created"
    harness.tick()
    assert waiting(harness, second.job_id).startswith(f"cooldown: {host} was last renewed")
    harness.clock.advance(6 * HOUR)
    harness.tick()
    job = harness.job(second.job_id)
    assert job.status == "already-fresh"  # read only, nothing changed again
    assert harness.fleet.count("remove-certificates", host) == 1


def test_manual_approval(harness_factory: Callable[..., Harness]) -> None:
    harness = harness_factory(require_approval=True)
    decision = harness.submit(lab_host("hv36"))
    harness.tick()
    assert waiting(harness, decision.job_id).startswith("awaiting manual approval")
    assert decision.job_id is not None
    harness.journal.approve(decision.job_id, "basic:ops")
    harness.tick()
    job = harness.job(decision.job_id)
    assert job.status == "succeeded" and job.approved_by == "basic:ops"


def test_pause_switch_api_and_file(harness_factory: Callable[..., Harness], tmp_path: Path) -> None:
    pause_file = tmp_path / "pause"
    harness = harness_factory(pause_file=str(pause_file))
    harness.journal.set_paused(True, "bearer")
    decision = harness.submit(lab_host("hv36"))
    harness.tick()
    assert waiting(harness, decision.job_id).startswith("paused by bearer")
    harness.journal.set_paused(False, "bearer")
    pause_file.write_text("")
    harness.tick()
    assert waiting(harness, decision.job_id).startswith(f"paused by pause file {pause_file}")
    pause_file.unlink()
    harness.tick()
    assert harness.job(decision.job_id).status == "succeeded"


def test_dry_run_receiver_never_starts_execute_jobs(
    harness_factory: Callable[..., Harness],
) -> None:
    executing = harness_factory()
    job = executing.journal.create_job(
        host=lab_host("hv36"),
        role="hyperv_host",
        vmm_server=lab_host("vmm01"),
        is_vmm_server=False,
        procedure="remove-register",
        mode="execute",
        source="alertmanager",
    )
    # the same journal, read by a receiver configured for dry runs
    assert executing.config.receiver is not None
    from vmm_cert_exporter.receiver.engine import Engine

    engine = Engine(
        executing.config,
        executing.journal,
        executing.runner,
        owner=executing.owner,
        executes=False,
        clock=executing.clock,
    )
    engine.tick(wait=True)
    assert waiting(executing, job.id).startswith("the receiver runs in dry-run mode")
    assert executing.fleet.count("collect-certificates", lab_host("hv36")) == 0
    engine.stop()
