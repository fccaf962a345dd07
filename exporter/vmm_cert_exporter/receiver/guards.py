"""Whether a job may start now: pure functions of the configuration, the job and a time.

The engine asks ``blocked_reason`` before it claims a job; concurrency limits are checked
by the journal inside the claim itself (atomically, across processes). Every answer is a
sentence for the journal and the API: a job that waits always says what it waits for.

Times are Unix seconds from an injected clock, so tests move time instead of sleeping.
Maintenance windows are evaluated in their own IANA time zone (``zoneinfo``), daylight
saving included.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vmm_cert_exporter.config import WEEKDAYS, MaintenanceWindow, ReceiverConfig
from vmm_cert_exporter.durations import format_duration
from vmm_cert_exporter.receiver.journal import Job, PauseState, iso

MINUTES_PER_DAY = 24 * 60


def _local(window: MaintenanceWindow, now: float) -> datetime:
    return datetime.fromtimestamp(now, ZoneInfo(window.timezone))


def in_window(window: MaintenanceWindow, now: float) -> bool:
    """Whether ``now`` falls in ``window`` (a wrapping window belongs to its start day)."""
    local = _local(window, now)
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if window.start < window.end:
        return day in window.weekdays and window.start <= minute < window.end
    # wraps past midnight: the evening part today, or the morning part of yesterday's window
    yesterday = (day - 1) % 7
    return (day in window.weekdays and minute >= window.start) or (
        yesterday in window.weekdays and minute < window.end
    )


def next_window_start(windows: Sequence[MaintenanceWindow], now: float) -> float | None:
    """The earliest start of any window after ``now`` (None without windows)."""
    best: float | None = None
    for window in windows:
        zone = ZoneInfo(window.timezone)
        today = _local(window, now).date()
        for offset in range(0, 8):
            day = today + timedelta(days=offset)
            if day.weekday() not in window.weekdays:
                continue
            start = datetime(
                day.year, day.month, day.day, window.start // 60, window.start % 60, tzinfo=zone
            ).timestamp()
            if start > now:
                # the first matching day after now is this window's next start
                best = start if best is None else min(best, start)
                break
    return best


def window_reason(windows: Sequence[MaintenanceWindow], now: float) -> str | None:
    """None inside any window (or when none is configured); else why the job waits."""
    return _window_reason(tuple(windows), now)


# A scheduling pass asks this once per waiting job, all at the same ``now``: thousands of
# time-zone conversions for one answer.
@functools.lru_cache(maxsize=16)
def _window_reason(windows: tuple[MaintenanceWindow, ...], now: float) -> str | None:
    if not windows or any(in_window(w, now) for w in windows):
        return None
    upcoming = next_window_start(windows, now)
    when = f"; the next opens at {iso(upcoming)}" if upcoming is not None else ""
    return f"outside the maintenance windows ({describe_windows(windows)}){when}"


def describe_windows(windows: Sequence[MaintenanceWindow]) -> str:
    parts = []
    for w in windows:
        days = ",".join(WEEKDAYS[d] for d in w.weekdays)
        parts.append(
            f"{days} {w.start // 60:02d}:{w.start % 60:02d}-{w.end // 60:02d}:{w.end % 60:02d} "
            f"{w.timezone}"
        )
    return "; ".join(parts)


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """Seconds before the next attempt after ``failures`` failed ones: doubling, capped."""
    if failures <= 0:
        return 0.0
    # exponent bounded: 2**60 hours is already far past any sane maximum
    return min(maximum, initial * math.pow(2, min(failures - 1, 60)))


def awaiting_approval(job: Job, config: ReceiverConfig) -> bool:
    """True while ``job`` waits for someone to approve it (``require_approval``); jobs the
    CLI started are approved by the person who typed the command."""
    return config.require_approval and job.approved_at is None and job.source != "cli"


def blocked_reason(
    job: Job,
    config: ReceiverConfig,
    *,
    now: float,
    pause: PauseState,
    last_fresh_at: float | None,
    cohort_left: int = 0,
) -> str | None:
    """Why an execute-mode ``job`` may not start now, or None. In order of precedence.

    ``cohort_left``: the active jobs of the job's cohort for other computers of its VMM
    server (``Journal.cohort_left``), which a VMM server's own cohort job waits for."""
    if pause.paused:
        by = f" by {pause.by}" if pause.by else ""
        since = f" since {iso(pause.at)}" if pause.at else ""
        return f"paused{by}{since}: new renewals wait until the receiver is resumed"
    if awaiting_approval(job, config):
        return f"awaiting manual approval (Approve on the desk, or POST /api/jobs/{job.id}/approve)"
    if job.status == "failed" and job.next_attempt_at is not None and job.next_attempt_at > now:
        return f"backoff: next attempt at {iso(job.next_attempt_at)}"
    reason = window_reason(config.maintenance_windows, now)
    if reason is not None:
        return reason
    if job.attempt == 0 and last_fresh_at is not None and now - last_fresh_at < config.cooldown:
        return (
            f"cooldown: {job.host} was last renewed or found fresh at {iso(last_fresh_at)}; "
            f"no new renewal before {iso(last_fresh_at + config.cooldown)} "
            f"(cooldown {format_duration(config.cooldown)})"
        )
    return cohort_order_reason(job, cohort_left)


def cohort_order_reason(job: Job, cohort_left: int) -> str | None:
    """A VMM server's cohort job starts only once no other computer of its cohort that it
    manages has an active job: it re-registers them, so its own renewal comes strictly after
    theirs, not merely later in the schedule (a job waiting for approval or a retry holds it
    back too; a cancelled or given-up one does not)."""
    if not (job.is_vmm_server and job.cohort is not None and cohort_left > 0):
        return None
    computers = "computer" if cohort_left == 1 else "computers"
    return (
        f"the VMM server goes last: waiting for the cohort's {cohort_left} other {computers} "
        f"of {job.vmm_server} to finish first (cohort {job.cohort})"
    )
