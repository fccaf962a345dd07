"""The expiry calendar: computers expiring per month over the next three years (and those
already expired) as an inline SVG bar chart, and a table of the next cohorts.

The grouping is the one of ``vmm_cert_cohort_computers`` (``metrics.cohort_families``): the
same points (``metrics.expiry_points``) through the same ``cohorts.group`` (``prepared.py``),
so the chart's numbers are what /metrics says. A cohort is "already expired" once its
earliest NotAfter (``vmm_cert_cohort_expiry_timestamp_seconds``) has passed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

from vmm_cert_exporter.cohorts import Cohort
from vmm_cert_exporter.pages.layout import computer_href, esc
from vmm_cert_exporter.pages.prepared import Fleet

MONTHS: Final = 36
NEXT_COHORTS: Final = 8
FIRST_COMPUTERS: Final = 5
_MONTH_LETTERS: Final = "JFMAMJJASOND"

# the chart's geometry, in SVG user units
_BAR, _GAP, _LEFT, _TOP, _PLOT, _BOTTOM = 16, 4, 4, 18, 120, 34
_AFTER_EXPIRED = 16  # room for the "expired" label between that bar and the months


@dataclass(frozen=True)
class Month:
    """One month's bar: ``count`` computers expire in it, ``new_year`` of them on 1 January."""

    year: int
    month: int
    count: int
    new_year: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True)
class Calendar:
    expired: int  # computers of cohorts whose earliest NotAfter has passed
    months: tuple[Month, ...]  # MONTHS of them, from the current (UTC) month on
    later: int  # computers expiring after the last month drawn
    upcoming: tuple[Cohort, ...]  # the cohorts not yet expired, soonest first
    members: Mapping[date, tuple[str, ...]]  # each cohort's computers, by name


def build(fleet: Fleet, now: float) -> Calendar:
    today = datetime.fromtimestamp(now, UTC).date()
    counts = [0] * MONTHS
    new_year = [0] * MONTHS
    expired = later = 0
    upcoming: list[Cohort] = []
    for cohort in fleet.cohorts:
        if cohort.expires_at <= now:
            expired += cohort.left
            continue
        upcoming.append(cohort)
        index = (cohort.day.year - today.year) * 12 + cohort.day.month - today.month
        if index >= MONTHS:
            later += cohort.left
            continue
        counts[index] += cohort.left
        if cohort.day.month == 1 and cohort.day.day == 1:
            new_year[index] += cohort.left
    months = []
    for index in range(MONTHS):
        year, month = divmod(today.month - 1 + index, 12)
        months.append(Month(today.year + year, month + 1, counts[index], new_year[index]))
    return Calendar(expired, tuple(months), later, tuple(upcoming), fleet.members)


def _bar(x: int, count: int, top: int, scale: float, css: str) -> tuple[str, int]:
    height = round(count * scale) if count else 0
    if count and height < 2:
        height = 2  # one computer stays visible beside a thousand
    y = top - height
    return f'<rect class="{css}" x="{x}" y="{y}" width="{_BAR}" height="{height}"/>', y


def _group(
    x: int, label: str, count: int, new_year: int, scale: float, css: str, title: str
) -> str:
    base = _TOP + _PLOT
    parts = [
        f'<g class="month" data-month="{label}" data-count="{count}" '
        f'data-new-year="{new_year}"><title>{esc(title)}</title>'
    ]
    y = base
    if count - new_year:
        rest, y = _bar(x, count - new_year, base, scale, css)
        parts.append(rest)
    if new_year:
        jan, y = _bar(x, new_year, y, scale, "newyear")
        parts.append(jan)
    if count:
        parts.append(f'<text class="count" x="{x + _BAR / 2:g}" y="{y - 3}">{count}</text>')
    parts.append("</g>")
    return "".join(parts)


def chart(calendar: Calendar) -> str:
    """The inline SVG: the expired bar, then one bar per month, 1 January cohorts marked."""
    biggest = max([calendar.expired, *(m.count for m in calendar.months), 1])
    scale = _PLOT / biggest
    width = _LEFT * 2 + (len(calendar.months) + 1) * (_BAR + _GAP) + _GAP + _AFTER_EXPIRED
    height = _TOP + _PLOT + _BOTTOM
    base = _TOP + _PLOT
    out = [
        f'<svg class="calendar" viewBox="0 0 {width} {height}" role="img" '
        'aria-labelledby="calendar-title">'
        '<title id="calendar-title">Computers whose certificate expires, per month</title>',
        _group(
            _LEFT,
            "expired",
            calendar.expired,
            0,
            scale,
            "expired",
            f"already expired: {calendar.expired} computers",
        ),
        f'<text class="axis start" x="{_LEFT}" y="{base + 12}">expired</text>',
    ]
    for index, month in enumerate(calendar.months, 1):
        x = _LEFT + index * (_BAR + _GAP) + _GAP + _AFTER_EXPIRED
        title = f"{month.label}: {month.count} computers"
        if month.new_year:
            title += f", {month.new_year} of them on 1 January"
        out.append(_group(x, month.label, month.count, month.new_year, scale, "bar", title))
        letter = _MONTH_LETTERS[month.month - 1]
        out.append(f'<text class="axis" x="{x + _BAR / 2:g}" y="{base + 12}">{letter}</text>')
        if month.month == 1 or (index == 1 and month.month <= 10):  # no overlap
            out.append(f'<text class="year" x="{x}" y="{base + 28}">{month.year}</text>')
    out.append(f'<line class="base" x1="0" y1="{base}" x2="{width}" y2="{base}"/></svg>')
    return "".join(out)


def _roles(cohort: Cohort) -> str:
    return ", ".join(f"{role} {n}" for role, n in cohort.by_role.items())


def cohort_table(calendar: Calendar, now: float) -> str:
    """The next cohorts: date, computers, role mix and the first few computers of each."""
    rows = []
    for cohort in calendar.upcoming[:NEXT_COHORTS]:
        names = calendar.members.get(cohort.day, ())
        links = ", ".join(
            f'<a href="{computer_href(n)}">{esc(n)}</a>' for n in names[:FIRST_COMPUTERS]
        )
        more = len(names) - FIRST_COMPUTERS
        if more > 0:
            links += f" and {more} more"
        day = cohort.day.isoformat()
        new_year = cohort.day.month == 1 and cohort.day.day == 1
        when = f"{day} (1 January)" if new_year else day
        days = (cohort.expires_at - now) / 86400.0
        css = ' class="newyear"' if new_year else ""
        rows.append(
            f"<tr{css}><td>{when}<td>{days:.0f}<td>{cohort.left}<td>{esc(_roles(cohort))}"
            f"<td>{links}</tr>"
        )
    if not rows:
        return "<p>No certificate is due to expire.</p>"
    return (
        '<table class="cohorts"><caption>The next cohorts: computers whose certificates '
        "expire on the same day</caption><thead><tr><th>expires on (UTC)<th>days left"
        "<th>computers<th>roles<th>first computers</thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def section(fleet: Fleet, now: float) -> str:
    calendar = build(fleet, now)
    last: Sequence[Month] = calendar.months
    note = ""
    if calendar.later:
        note = f" {calendar.later} more expire after {last[-1].label} (not drawn)."
    return (
        '<section id="calendar"><h2>Expiry calendar</h2>'
        "<p>Computers whose current certificate expires in each month (UTC) over the next "
        "three years, and those already expired. The purple part of a bar is a 1 January "
        f"cohort: VMM dates every certificate from 1 January of the year it was added.{note}</p>"
        f"{chart(calendar)}{cohort_table(calendar, now)}</section>"
    )
