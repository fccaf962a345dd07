"""The landing page (``/``): header counts, the computers problems first, the calendar.

It works without JavaScript: the filter is a GET form whose query parameters (``q``,
``role``, ``page``) the server applies; ``static/pages.js`` filters the rows as one types.
Computers that need attention are listed open; healthy ones follow collapsed, and past
``ONE_PAGE`` rows the list is paged (docs/pages.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlencode

from vmm_cert_exporter.config_values import ROLES
from vmm_cert_exporter.pages import calendar
from vmm_cert_exporter.pages.layout import age, computer_href, esc, page, utc
from vmm_cert_exporter.pages.prepared import Fleet
from vmm_cert_exporter.pages.status import (
    DEFAULT_LIMITS,
    HEALTHY,
    OK,
    STATUSES,
    Assessment,
    Thresholds,
    assess,
    problems_first,
)
from vmm_cert_exporter.snapshot import Snapshot

# Up to ONE_PAGE computers (after filtering) are listed on one page (under 200 KB with
# names of 35 characters); a longer list is paged PAGE_SIZE at a time, which keeps a page
# of problems, whose rows are longer, under 200 KB as well.
ONE_PAGE: Final = 1000
PAGE_SIZE: Final = 500
MAX_QUERY: Final = 200
HEADINGS: Final = ("computer", "status", "problems", "role", "days left", "NotAfter", "VMM state")


@dataclass(frozen=True)
class Filter:
    """The form's query parameters, checked: what was not usable is said in ``notes``."""

    text: str = ""
    role: str = ""
    page: int = 1
    notes: tuple[str, ...] = ()

    @staticmethod
    def parse(query: str) -> Filter:
        values = parse_qs(query, keep_blank_values=True)
        notes = []
        text = (values.get("q") or [""])[0].strip()
        if len(text) > MAX_QUERY:
            notes.append(f"filter: only the first {MAX_QUERY} characters are used")
            text = text[:MAX_QUERY]
        role = (values.get("role") or [""])[0]
        if role and role not in ROLES:
            notes.append(f"role: expected one of {', '.join(ROLES)}; showing every role")
            role = ""
        raw_page = (values.get("page") or ["1"])[0]
        try:
            number = int(raw_page)
            if number < 1:
                raise ValueError
        except ValueError:
            notes.append("page: expected a whole number from 1; showing page 1")
            number = 1
        return Filter(text, role, number, tuple(notes))

    def query(self, **changes: object) -> str:
        params = {"q": self.text, "role": self.role, "page": self.page, **changes}
        return "?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})


def searchable(a: Assessment) -> str:
    """What the filter box matches: the name, status, problems, role and VMM state cells,
    joined as ``pages.js`` joins them."""
    computer = a.entry.host.computer
    return " ".join(
        (
            computer.fqdn,
            a.status.upper(),
            "; ".join(a.problems),
            computer.role,
            computer.vmm_state_text,
        )
    ).lower()


def _days_left(days: float) -> str:
    # tenths where they matter (within a month of expiry), whole days beyond
    return f"{days:.1f}" if days <= 31 else f"{math.floor(days)}"


def _row(a: Assessment) -> str:
    host = a.entry.host
    left = "" if a.days_left is None else _days_left(a.days_left)
    not_after = "" if a.entry.not_after is None else utc(a.entry.not_after)[:10]
    fqdn = host.computer.fqdn
    # healthy rows are most of a fleet: no class (their table has one) and no end tags, which
    # HTML does not need, keep 1,000 of them under 200 KB
    css = "" if a.status == OK else f' class="{a.status}"'
    return (
        f'<tr{css}><td><a href="{computer_href(fqdn)}">{esc(fqdn)}</a>'
        f"<td>{a.status.upper()}<td>{esc('; '.join(a.problems))}<td>{esc(host.computer.role)}"
        f"<td>{left}<td>{not_after}<td>{esc(host.computer.vmm_state_text)}"
    )


def _table(rows: list[Assessment], caption: str, css: str) -> str:
    head = "".join(f"<th>{h}" for h in HEADINGS)
    body = "\n".join(_row(a) for a in rows)
    return (
        f'<table class="computers {css}"><caption>{caption}</caption>'
        f"<thead><tr>{head}</thead><tbody>\n{body}\n</tbody></table>"
    )


def _header(snapshot: Snapshot, now: float, counts: dict[str, int]) -> str:
    items = "".join(f'<li class="{s}"><b>{counts[s]}</b> {s}</li>' for s in STATUSES)
    if snapshot.complete:
        data_age = now - snapshot.completed_at
        stale = (
            ' <strong class="stale">stale: older than two refresh intervals</strong>'
            if data_age > 2 * snapshot.interval
            else ""
        )
        refresh = (
            f"last refresh {utc(snapshot.completed_at)}, data age {age(data_age)}{stale}; "
            f"refreshed every {age(snapshot.interval)}"
        )
    else:
        refresh = "no data yet: the first refresh is running"
    return (
        f'<header><h1>SCVMM certificates</h1><ul class="counts">{items}</ul>'
        f'<p class="refresh">{len(snapshot.hosts)} computers; {refresh}.</p></header>'
    )


def _form(chosen: Filter) -> str:
    options = "".join(
        f'<option value="{r}"{" selected" if r == chosen.role else ""}>{r}</option>' for r in ROLES
    )
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in chosen.notes)
    return (
        '<form id="filter" method="get" action="" role="search">'
        '<label>Filter <input type="search" name="q" '
        f'value="{esc(chosen.text)}" placeholder="name, problem or state"></label> '
        f'<label>Role <select name="role"><option value="">every role</option>{options}'
        '</select></label> <button type="submit">Filter</button></form>'
        f"{notes}"
    )


def _pager(chosen: Filter, pages: int, shown: int, total: int) -> str:
    if pages <= 1:
        return f'<p id="shown">{shown} of {total} computers shown.</p>'
    links = " ".join(
        f"<b>{n}</b>" if n == chosen.page else f'<a href="{esc(chosen.query(page=n))}">{n}</a>'
        for n in range(1, pages + 1)
    )
    return (
        f'<p id="shown">{shown} of {total} computers on this page (page {chosen.page} of '
        f'{pages}, problems first).</p><nav class="pager">Pages: {links}</nav>'
    )


def render(fleet: Fleet, now: float, query: str = "", limits: Thresholds = DEFAULT_LIMITS) -> str:
    """The landing page of ``fleet`` at ``now``; ``query``: the request's query string."""
    chosen = Filter.parse(query)
    ordered, counts = problems_first(fleet, now, limits)
    if chosen.role:
        ordered = [e for e in ordered if e.host.computer.role == chosen.role]
    text = chosen.text.lower()
    if text:
        ordered = [e for e in ordered if text in searchable(assess(e, now, limits))]
    size = ONE_PAGE if len(ordered) <= ONE_PAGE else PAGE_SIZE
    pages = max(1, math.ceil(len(ordered) / size))
    number = min(chosen.page, pages)
    chosen = Filter(chosen.text, chosen.role, number, chosen.notes)
    shown = [assess(e, now, limits) for e in ordered[(number - 1) * size : number * size]]
    attention = [a for a in shown if a.rank != HEALTHY]
    healthy = [a for a in shown if a.rank == HEALTHY]
    snapshot = fleet.snapshot
    parts = [_header(snapshot, now, counts), _form(chosen)]
    parts.append(_pager(chosen, pages, len(shown), len(ordered)))
    if attention:
        parts.append(
            _table(attention, f"Needing attention: {len(attention)} (problems first)", "attention")
        )
    elif not ordered:
        parts.append("<p>No computer matches.</p>")
    elif counts[OK] == len(fleet.entries):
        parts.append("<p>No computer needs attention.</p>")
    if healthy:
        opened = " open" if chosen.text or chosen.role or not attention else ""
        parts.append(
            f'<details class="healthy"{opened}><summary>Healthy: {len(healthy)} computers, '
            f"soonest expiry first</summary>"
            + _table(healthy, f"Healthy: {len(healthy)}", "healthy")
            + "</details>"
        )
    parts.append(calendar.section(fleet, now))
    return page("vmm-cert-exporter", "\n".join(parts))
