"""Cohorts: computers whose certificates expire on the same day, and whether the receiver's
capacity renews each cohort before that day (docs/renewal.md#cohorts).

VMM issues every certificate for five years from 1 January of the year it was added, so a
whole year's computers expire together. This module is pure: it groups (role, NotAfter)
pairs into cohorts and projects, from a ``Capacity``, when each cohort's remaining computers
will have been renewed. The receiver renews in alert order, which is expiry order, so the
projection queues the cohorts: a later cohort starts where the earlier ones finished.

The capacity model: during every open minute of the maintenance windows (every minute when
there are none) renewals start at ``concurrency`` per ``duration``; the last one ends one
``duration`` after it started. A window whose length is shorter than one renewal is
therefore undercounted, which errs on the side of warning early.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Final

from vmm_cert_exporter.inventory import Computer, VmmView
from vmm_cert_exporter.receiver import planner
from vmm_cert_exporter.receiver.config import MaintenanceWindow

DAY: Final = 86400.0
_DAY_MINUTES: Final = 24 * 60
_WEEK_MINUTES: Final = 7 * _DAY_MINUTES
# Unix time of Monday 1970-01-05 00:00 UTC: minute 0 of the planner's week
_MONDAY: Final = 4 * DAY

OK, WARNING, CRITICAL = "ok", "warning", "critical"


def cohort_day(not_after: float) -> date:
    """The cohort a certificate belongs to: the UTC date of its NotAfter."""
    return datetime.fromtimestamp(not_after, UTC).date()


@dataclass(frozen=True)
class Cohort:
    """The computers whose current certificate expires on ``day`` (UTC), by role.

    ``expires_at`` is the earliest NotAfter among them: the moment the first one drops out.
    ``renewed`` counts computers the receiver's journal shows renewed out of this cohort
    (they now hold a certificate of a later cohort and are not in ``by_role``).
    """

    day: date
    expires_at: float
    by_role: Mapping[str, int]
    renewed: int = 0

    @property
    def left(self) -> int:
        return sum(self.by_role.values())


def group(points: Iterable[tuple[str, float]], renewed: Iterable[float] = ()) -> list[Cohort]:
    """Cohorts of (role, NotAfter) points, oldest first; ``renewed``: the NotAfter each
    renewed computer's previous certificate had."""
    expires: dict[date, float] = {}
    roles: dict[date, dict[str, int]] = {}
    for role, not_after in points:
        day = cohort_day(not_after)
        expires[day] = min(expires.get(day, not_after), not_after)
        by_role = roles.setdefault(day, {})
        by_role[role] = by_role.get(role, 0) + 1
    done: dict[date, int] = {}
    for not_after in renewed:
        day = cohort_day(not_after)
        done[day] = done.get(day, 0) + 1
        # a cohort wholly renewed is still shown, expiring at the end of its day at the latest
        expires.setdefault(day, not_after)
    return [
        Cohort(day, expires[day], dict(sorted(roles.get(day, {}).items())), done.get(day, 0))
        for day in sorted(expires)
    ]


def _open_minutes(windows: Sequence[MaintenanceWindow], at: float) -> list[bool]:
    """The minutes of a UTC week (from Monday 00:00) when a renewal may start.

    Each window is placed with its zone's UTC offset at ``at``: a daylight-saving change
    within the planned period moves a window by an hour, far below what matters here.
    """
    if not windows:
        return [True] * _WEEK_MINUTES
    week = [False] * _WEEK_MINUTES
    moment = datetime.fromtimestamp(at, UTC)
    for window in windows:
        offset = moment.astimezone(zoneinfo.ZoneInfo(window.timezone)).utcoffset()
        shift = 0 if offset is None else int(offset.total_seconds() // 60)
        length = (window.end - window.start) % _DAY_MINUTES or _DAY_MINUTES
        for weekday in window.weekdays:
            first = weekday * _DAY_MINUTES + window.start - shift
            for minute in range(first, first + length):
                week[minute % _WEEK_MINUTES] = True
    return week


@dataclass(frozen=True)
class Capacity:
    """How fast the receiver renews: ``concurrency`` renewals at once, each taking
    ``duration`` seconds (``duration_source``: "measured" from the journal or "assumed" from
    receiver.assumed_renewal_duration), started only in the windows' open minutes.

    ``paused``: no renewal starts at all. ``approval``: every job waits for a person, so the
    capacity holds only if approvals keep up; ``approved_share`` (the receiver's: the share
    of its active jobs a person approved, 1 without approval or without jobs) scales it.
    """

    concurrency: int
    duration: float
    duration_source: str
    windows: tuple[MaintenanceWindow, ...] = ()
    paused: bool = False
    approval: bool = False
    approved_share: float = 1.0
    at: float = 0.0  # the moment the windows' zone offsets are taken at
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _next_open: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        week = _open_minutes(self.windows, self.at)
        # two weeks, so that any span of up to one week is one subtraction
        cumulative = tuple(itertools.accumulate(week + week, initial=0))
        object.__setattr__(self, "_cumulative", cumulative)
        # for each minute index, the first open one from it on (the last index if none):
        # finish() looks it up instead of stepping through a closed night minute by minute
        minutes = week + week + [True]
        following = [0] * len(minutes)
        after = len(minutes) - 1
        for index in range(len(minutes) - 1, -1, -1):
            if minutes[index]:
                after = index
            following[index] = after
        object.__setattr__(self, "_next_open", tuple(following))

    @property
    def open_minutes_per_week(self) -> int:
        return self._cumulative[_WEEK_MINUTES]

    @property
    def per_minute(self) -> float:
        """Renewals started per open minute (0 when paused)."""
        if self.paused:
            return 0.0
        return self.concurrency * 60.0 / self.duration * self.approved_share

    @property
    def per_day(self) -> float:
        """Computers renewed per day, averaged over a week."""
        return self.per_minute * self.open_minutes_per_week / 7.0

    def _open_minutes_needed(self, count: int) -> float | None:
        if count <= 0:
            return 0.0
        if self.per_day <= 0:
            return None
        # the last renewal starts when the others have; its own run is added after
        return math.ceil(count / self.concurrency - 1e-9) * self.duration / 60.0 - (
            self.duration / 60.0
        )

    def finish(self, start: float, count: int) -> float | None:
        """When ``count`` renewals started at ``start`` have all finished; None: never."""
        needed = self._open_minutes_needed(count)
        if needed is None:
            return None
        if count <= 0:
            return start
        minute = math.floor((start - _MONDAY) / 60.0)
        index = minute % _WEEK_MINUTES
        weeks, rest = divmod(needed, self.open_minutes_per_week)
        base = self._cumulative[index]
        # the first minute from index on by which ``rest`` open minutes have passed, and at
        # which a renewal may start (it must be open itself)
        target = base + rest
        end = bisect.bisect_left(self._cumulative, target, lo=index)
        end = self._next_open[end]  # closed minute: the next start waits for the window
        last_start_minute = minute - index + end + int(weeks) * _WEEK_MINUTES
        last_start = max(start, _MONDAY + last_start_minute * 60.0)
        return last_start + self.duration

    def latest_start(self, deadline: float, count: int) -> float | None:
        """The latest start from which ``count`` renewals finish by ``deadline``; None: no
        start does (paused, or no capacity)."""
        needed = self._open_minutes_needed(count)
        if needed is None:
            return None
        if count <= 0:
            return deadline
        # the last renewal must start by deadline - duration, in an open minute
        minute = math.floor((deadline - self.duration - _MONDAY) / 60.0)
        index = minute % _WEEK_MINUTES + _WEEK_MINUTES
        weeks, rest = divmod(needed + 1, self.open_minutes_per_week)  # + the last minute
        top = self._cumulative[index + 1]
        begin = bisect.bisect_right(self._cumulative, top - rest, hi=index + 1) - 1
        first_minute = minute - (index - begin) - int(weeks) * _WEEK_MINUTES
        return _MONDAY + first_minute * 60.0


def procedure_mix(
    holdings: Iterable[tuple[Computer, float]],
    views: Mapping[str, VmmView],
    *,
    now: float,
    min_validity: float,
) -> dict[str, int]:
    """The computers left to renew (NotAfter inside ``min_validity`` of ``now``), by the
    procedure intake would choose for each: what ``capacities`` weighs each procedure's
    measured duration by, for the receiver and the ``cohorts`` command alike."""
    mix: dict[str, int] = {}
    for computer, not_after in holdings:
        if not_after - now < min_validity:
            procedure = planner.renewal_target(computer, views).procedure
            if procedure is not None:
                mix[procedure] = mix.get(procedure, 0) + 1
    return mix


def capacities(
    *,
    max_concurrent: int,
    per_vmm_server: int,
    vmm_servers: int,
    windows: Sequence[MaintenanceWindow],
    approval: bool,
    paused: bool,
    assumed: float,
    durations: Mapping[str, Sequence[float]],
    at: float,
    mix: Mapping[str, int] | None = None,
    approved_share: float = 1.0,
) -> tuple[Capacity, Capacity]:
    """(as configured, as used): the receiver's capacity with ``assumed`` as the renewal's
    duration, and with the measured ``durations`` (successful renewals, by procedure) when
    there is one, else the configured one again.

    With ``mix`` (computers left to renew, by procedure) the duration is the mix's average
    of each procedure's median, a procedure not measured yet counting at ``assumed``;
    without it, the median of every measured renewal.
    """
    concurrency = min(max_concurrent, per_vmm_server * max(1, vmm_servers))

    def capacity(duration: float, source: str) -> Capacity:
        return Capacity(
            concurrency,
            duration,
            source,
            tuple(windows),
            paused=paused,
            approval=approval,
            approved_share=approved_share if approval else 1.0,
            at=at,
        )

    configured = capacity(assumed, "assumed")
    # a renewal measured at under a second (a clock that did not move) is not a rate
    medians = {p: max(1.0, statistics.median(ds)) for p, ds in durations.items() if ds}
    if not medians:
        return configured, configured
    weights = {p: n for p, n in (mix or {}).items() if n > 0}
    if weights and any(p in medians for p in weights):
        total = sum(weights.values())
        duration = sum(n * medians.get(p, assumed) for p, n in weights.items()) / total
        return configured, capacity(duration, "measured")
    measured = [d for ds in durations.values() for d in ds]
    return configured, capacity(max(1.0, statistics.median(measured)), "measured")


@dataclass(frozen=True)
class Projection:
    """One cohort against the capacity, from ``now``.

    ``finish``: when its last computer is projected renewed (the cohorts before it first);
    None when the capacity is zero. ``must_start_by``: the latest start that renews this
    cohort alone ``margin`` before it expires. ``risk``: critical when the finish is after
    ``expires_at`` (or never), warning when it is within the margin, else ok.
    """

    cohort: Cohort
    finish: float | None
    must_start_by: float | None
    risk: str


def project(
    cohorts: Sequence[Cohort], capacity: Capacity, now: float, margin: float
) -> list[Projection]:
    out: list[Projection] = []
    start: float | None = now
    for cohort in sorted(cohorts, key=lambda c: c.expires_at):
        if cohort.left == 0:
            out.append(Projection(cohort, now, None, OK))
            continue
        finish = None if start is None else capacity.finish(start, cohort.left)
        start = finish  # the next cohort's renewals follow this one's
        must = capacity.latest_start(cohort.expires_at - margin, cohort.left)
        if finish is None or finish > cohort.expires_at:
            risk = CRITICAL
        elif finish > cohort.expires_at - margin:
            risk = WARNING
        else:
            risk = OK
        out.append(Projection(cohort, finish, must, risk))
    return out


def minute_utc(ts: float | None) -> str | None:
    """A time as a plan shows it: to the minute, UTC."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%MZ")
