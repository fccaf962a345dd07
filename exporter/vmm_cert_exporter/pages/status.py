"""What is wrong with each computer, and the order a person should look at them in.

The order is the problems-first one of docs/pages.md: expired, missing, not trusted, within
the critical days, duplicates, unreadable, within the warning days, then the rest by days
left. Every problem has words, so that the page never says anything by colour alone.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Final

from vmm_cert_exporter.pages.prepared import Entry, Fleet, expiry_order

DAY: Final = 86400.0
# the thresholds of the alert rules' defaults (`vmm-cert-exporter rules`) and of `check`
WARN_DAYS: Final = 30.0
CRITICAL_DAYS: Final = 7.0

CRITICAL, WARNING, OK, UNREAD = "critical", "warning", "ok", "unread"
STATUSES: Final = (CRITICAL, WARNING, OK, UNREAD)

# Problems, numbered in the page's order; a computer's place is that of its first problem,
# HEALTHY when it has none.
EXPIRED, MISSING, NOT_TRUSTED, SOON, DUPLICATES, UNREADABLE, WITHIN_WARN, HEALTHY = range(1, 9)
_CRITICAL_PROBLEMS: Final = frozenset({EXPIRED, MISSING, NOT_TRUSTED, SOON})


@dataclass(frozen=True)
class Thresholds:
    warn_days: float = WARN_DAYS
    critical_days: float = CRITICAL_DAYS


DEFAULT_LIMITS: Final = Thresholds()


def days_left(entry: Entry, now: float) -> float | None:
    return None if entry.not_after is None else (entry.not_after - now) / DAY


def _bounds(now: float, limits: Thresholds) -> tuple[float, float, float]:
    """The NotAfters at which a certificate is expired, due within the critical days, and
    within the warning days: ``problems`` and ``problems_first`` compare with these."""
    return now, now + limits.critical_days * DAY, now + limits.warn_days * DAY


def problems(entry: Entry, now: float, limits: Thresholds = DEFAULT_LIMITS) -> list[int]:
    """``entry``'s problems at ``now``, in the page's order."""
    found = []
    expired, soon, warn = _bounds(now, limits)
    after = entry.not_after
    if after is not None and after <= expired:
        found.append(EXPIRED)
    if entry.certificates == 0:
        found.append(MISSING)
    if entry.host.trusted is False:
        found.append(NOT_TRUSTED)
    if after is not None and expired < after <= soon:
        found.append(SOON)
    if entry.certificates is not None and entry.certificates > 1:
        found.append(DUPLICATES)
    if entry.unreadable:
        found.append(UNREADABLE)
    if after is not None and soon < after <= warn:
        found.append(WITHIN_WARN)
    return found


def status(entry: Entry, found: list[int]) -> str:
    if _CRITICAL_PROBLEMS.intersection(found):
        return CRITICAL
    if not found:
        return OK
    if entry.certificates is None and found == [UNREADABLE]:
        return UNREAD  # never read: nothing is known of its certificate
    return WARNING


def _days(n: float) -> str:
    whole = math.floor(n)
    return "1 day" if whole == 1 else f"{whole:d} days"


def describe(entry: Entry, problem: int, now: float, limits: Thresholds = DEFAULT_LIMITS) -> str:
    """One problem in words."""
    if problem == EXPIRED:
        return f"expired {_days((now - (entry.not_after or now)) / DAY)} ago"
    if problem == MISSING:
        return "missing: no SCVMM certificate in its store"
    if problem == NOT_TRUSTED:
        return "not trusted: VMM's TrustedPeople copy is another certificate"
    if problem == SOON:
        return f"expires within {limits.critical_days:g} days"
    if problem == DUPLICATES:
        return f"duplicates: {entry.certificates} SCVMM certificates"
    if problem == UNREADABLE:
        return f"unreadable ({entry.host.last_error_reason or 'not read yet'})"
    if problem == WITHIN_WARN:
        return f"expires within {limits.warn_days:g} days"
    raise ValueError(f"not a problem: {problem}")


@dataclass(frozen=True)
class Assessment:
    """One computer as the pages show it: its status word, problems in words, days left."""

    entry: Entry
    status: str
    rank: int
    days_left: float | None
    problems: tuple[str, ...]


def assess(entry: Entry, now: float, limits: Thresholds = DEFAULT_LIMITS) -> Assessment:
    found = problems(entry, now, limits)
    return Assessment(
        entry,
        status(entry, found),
        found[0] if found else HEALTHY,
        days_left(entry, now),
        tuple(describe(entry, p, now, limits) for p in found),
    )


def problems_first(
    fleet: Fleet, now: float, limits: Thresholds = DEFAULT_LIMITS
) -> tuple[list[Entry], dict[str, int]]:
    """Every computer of ``fleet`` in the page's order, and how many have each status.

    Within one rank the expiry order is kept, which is "by days left, then by name". The
    steady computers (most of a fleet) are placed by bisecting their NotAfters at the
    thresholds; only the flagged ones are assessed one by one.
    """
    ranked: list[list[Entry]] = [[] for _ in range(HEALTHY + 1)]
    counts = dict.fromkeys(STATUSES, 0)
    for entry in fleet.flagged:
        found = problems(entry, now, limits)
        counts[status(entry, found)] += 1
        ranked[found[0]].append(entry)  # a flagged computer always has a problem
    expired, soon, warn = (bisect.bisect_right(fleet.steady_after, b) for b in _bounds(now, limits))
    steady = fleet.steady
    ranked[EXPIRED].extend(steady[:expired])
    ranked[SOON].extend(steady[expired:soon])
    ranked[WITHIN_WARN].extend(steady[soon:warn])
    counts[CRITICAL] += soon
    counts[WARNING] += warn - soon
    counts[OK] += len(steady) - warn
    for rank in (EXPIRED, SOON, WITHIN_WARN):
        ranked[rank].sort(key=expiry_order)  # flagged and steady ones merged
    ordered = [entry for bucket in ranked for entry in bucket]
    ordered.extend(steady[warn:])
    return ordered, counts
