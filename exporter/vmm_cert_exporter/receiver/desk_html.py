"""The desk's HTML: pure functions from journal records to pages, no JavaScript needed.

Everything that came from a webhook, a host or the journal is escaped (``_e``): host names,
alert labels, reasons and step results are untrusted text. Forms carry the CSRF token of
the signed-in user; each action is a POST (``desk.py`` checks the token before anything
changes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Final

from vmm_cert_exporter import __version__
from vmm_cert_exporter.config import ReceiverConfig
from vmm_cert_exporter.receiver.csrf import FIELD
from vmm_cert_exporter.receiver.journal import Attempt, Job, PauseState, Step, iso

# A step's result is shown up to this many characters; the API has it whole.
_RESULT_CHARS: Final = 600


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(ts: float | None) -> str:
    return _stamp(iso(ts))


def _stamp(exact: str | None) -> str:
    """A journal time (ISO 8601, UTC) shown to the second; the exact value in ``datetime``."""
    if not exact:
        return "—"
    shown = exact[:19].replace("T", " ") + " UTC"
    return f'<time datetime="{_e(exact)}">{_e(shown)}</time>'


@dataclass(frozen=True)
class DeskJob:
    """A job as the desk lists it: the record and whether it waits for someone's approval."""

    job: Job
    awaiting_approval: bool

    @property
    def cancellable(self) -> bool:
        return self.job.active and self.job.status != "running"


@dataclass(frozen=True)
class Paging:
    """Which page of the job list this is, and the counts over all pages."""

    page: int
    pages: int
    active: int
    waiting: int


@dataclass(frozen=True)
class Banner:
    config: ReceiverConfig
    pause: PauseState
    computers: int
    inventory_loaded: bool


def page(title: str, body: str, *, identity: str | None) -> str:
    who = "" if identity is None else f'<span class="who">signed in as <b>{_e(identity)}</b></span>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        # no favicon request: it would ask the API, which answers a browser 401
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/desk.css"></head><body>'
        '<header class="top"><a class="brand" href="/">Renewal desk</a>'
        f"{who}"
        f'<span class="version">vmm-cert-exporter {_e(__version__)}</span></header>'
        f"<main>{body}</main>"
        # the JSON API takes the receiver's token, not a desk user: docs/renewal.md#api
        '<footer><a href="/metrics">/metrics</a></footer>'
        "</body></html>\n"
    )


def _form(action: str, label: str, token: str, *, danger: bool = False) -> str:
    css = "button danger" if danger else "button"
    return (
        f'<form method="post" action="{_e(action)}" class="inline">'
        f'<input type="hidden" name="{FIELD}" value="{_e(token)}">'
        f'<button type="submit" class="{css}">{_e(label)}</button></form>'
    )


def _list(items: Iterable[str]) -> str:
    return ", ".join(f"<code>{_e(i)}</code>" for i in items) or "<i>none</i>"


def banner(b: Banner, token: str) -> str:
    cfg = b.config
    mode = "EXECUTE" if cfg.execute else "DRY-RUN"
    mode_note = (
        "changes hosts: renews certificates over WinRM"
        if cfg.execute
        else "plans and journals every job, changes nothing"
    )
    if b.pause.paused:
        by = f" by {_e(b.pause.by)}" if b.pause.by else ""
        pause = (
            f'<span class="state paused">PAUSED</span>{by} since {_when(b.pause.at)}: '
            "no renewal starts until resumed " + _form("/resume", "Resume renewals", token)
        )
    else:
        pause = (
            '<span class="state running">RUNNING</span> renewals start when their guards allow '
            + _form("/pause", "Pause renewals", token, danger=True)
        )
    windows = len(cfg.maintenance_windows)
    approval = "required for every job" if cfg.require_approval else "not required"
    inventory = (
        f"{b.computers} computers" if b.inventory_loaded else "not loaded yet (discovery runs)"
    )
    return (
        f'<section class="banner mode-{"execute" if cfg.execute else "dry-run"}" id="banner">'
        f'<p><span class="mode">{mode}</span> {_e(mode_note)}</p>'
        f'<div id="pause">{pause}</div>'
        '<dl class="facts">'
        f"<dt>Allowed hosts</dt><dd>{_list(cfg.allow_hosts)}</dd>"
        f"<dt>Denied hosts</dt><dd>{_list(cfg.deny_hosts)}</dd>"
        f"<dt>Allowed roles</dt><dd>{_list(cfg.allow_roles)}</dd>"
        f"<dt>Approval</dt><dd>{approval}</dd>"
        f"<dt>Maintenance windows</dt><dd>{windows or 'none: any time'}</dd>"
        f"<dt>At once</dt><dd>{cfg.max_concurrent} (per VMM server "
        f"{cfg.max_concurrent_per_vmm_server})</dd>"
        f"<dt>Inventory</dt><dd>{_e(inventory)}</dd>"
        "</dl></section>"
    )


def status_words(item: DeskJob) -> str:
    """The status in words (never colour alone)."""
    if item.awaiting_approval and item.job.active and item.job.status != "running":
        return "awaiting approval"
    return item.job.status


def _actions(item: DeskJob, token: str) -> str:
    out = []
    job_id = item.job.id
    if item.awaiting_approval and item.cancellable:
        out.append(_form(f"/jobs/{job_id}/approve", "Approve", token))
    if item.cancellable:
        out.append(_form(f"/jobs/{job_id}/cancel", "Cancel", token, danger=True))
    return "".join(out)


def _status_cell(item: DeskJob) -> str:
    words = status_words(item)
    css = words.replace(" ", "-")
    return f'<span class="status s-{_e(css)}">{_e(words)}</span>'


Cell = str | tuple[str, str]  # the cell's HTML, or (its CSS class, its HTML)


def _tr(*cells: Cell, attrs: str = "") -> str:
    out = []
    for cell in cells:
        css, html = cell if isinstance(cell, tuple) else ("", cell)
        out.append(f'<td class="{css}">{html}</td>' if css else f"<td>{html}</td>")
    return f"<tr{attrs}>{''.join(out)}</tr>"


def _table(headers: Sequence[str], rows: Iterable[str], *, ident: str = "", css: str = "") -> str:
    """A table of ``rows`` (``_tr``); ``headers`` are plain text."""
    attrs = (f' id="{ident}"' if ident else "") + (f' class="{css}"' if css else "")
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def jobs_table(jobs: Sequence[DeskJob], token: str) -> str:
    if not jobs:
        return (
            '<p class="empty">No jobs yet: the receiver has not been sent an alert it acts on.</p>'
        )
    rows = (
        _tr(
            f'<a href="/jobs/{i.job.id}">#{i.job.id}</a>',
            _e(i.job.host),
            _status_cell(i),
            _e(i.job.mode),
            _e(i.job.procedure),
            ("reason", _e(i.job.reason or "")),
            _when(i.job.next_attempt_at) if i.job.active else "—",
            _when(i.job.updated_at),
            ("actions", _actions(i, token)),
            attrs=f' class="{"active" if i.job.active else "finished"}" data-job="{i.job.id}"',
        )
        for i in jobs
    )
    headers = ("Job", "Host", "Status", "Mode", "Procedure", "Reason", "Next attempt", "Updated")
    return _table((*headers, "Actions"), rows, ident="jobs", css="jobs")


def _pager(paging: Paging) -> str:
    if paging.pages == 1:
        return ""
    links = []
    if paging.page > 1:
        links.append(f'<a href="/?page={paging.page - 1}" rel="prev">← previous page</a>')
    links.append(f"page {paging.page} of {paging.pages}")
    if paging.page < paging.pages:
        links.append(f'<a href="/?page={paging.page + 1}" rel="next">next page →</a>')
    return f'<p class="pager" id="pager">{" · ".join(links)}</p>'


def refusals_table(alerts: Sequence[dict[str, Any]]) -> str:
    if not alerts:
        return '<p class="empty">No alert was refused.</p>'
    rows = (
        _tr(
            _stamp(a["received_at"]),
            _e(a["alertname"]),
            _e(a["host"]),
            _e(a["status"]),
            ("reason", _e(a["reason"])),
        )
        for a in alerts
    )
    return _table(("Received", "Alert", "Host", "Status", "Why refused"), rows, ident="refusals")


def events_table(events: Sequence[dict[str, Any]], *, with_job: bool = False) -> str:
    if not events:
        return '<p class="empty">Nothing journaled yet.</p>'
    rows = []
    for ev in reversed(events):  # newest first
        job_id = ev.get("job_id")
        job = f'<a href="/jobs/{int(job_id)}">#{int(job_id)}</a>' if job_id else "—"
        cells = (_stamp(ev["at"]), *((job,) if with_job else ()), _e(ev["kind"]))
        rows.append(_tr(*cells, _e(ev["message"])))
    headers = ("When", *(("Job",) if with_job else ()), "What", "Detail")
    return _table(headers, rows, css="events")


def desk_page(
    b: Banner,
    jobs: Sequence[DeskJob],
    paging: Paging,
    refusals: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    *,
    identity: str,
    token: str,
) -> str:
    active, waiting = paging.active, paging.waiting
    summary = (
        f'<p class="summary" id="summary"><b>{active}</b> active job{"" if active == 1 else "s"}, '
        f"<b>{waiting}</b> awaiting approval.</p>"
    )
    body = (
        "<h1>Renewal desk</h1>"
        + banner(b, token)
        + summary
        + '<h2>Jobs</h2><p class="hint">Active jobs and jobs awaiting approval first, then the '
        "latest finished ones.</p>"
        + jobs_table(jobs, token)
        + _pager(paging)
        + '<h2>Refused alerts</h2><p class="hint">Alerts the receiver was sent and did not act '
        "on, with the reason.</p>"
        + refusals_table(refusals)
        + "<h2>Journal</h2>"
        + events_table(events, with_job=True)
    )
    return page("Renewal desk", body, identity=identity)


def _certificates(certs: Sequence[dict[str, Any]] | None, ident: str) -> str:
    if not certs:
        return f'<p class="empty" id="{ident}">None read.</p>'
    rows = (
        _tr(
            f"<code>{_e(c.get('thumbprint'))}</code>",
            _e(c.get("not_before")),
            _e(c.get("not_after")),
            _e(c.get("friendly_name")),
            "yes" if c.get("trusted") else "no",
        )
        for c in certs
    )
    headers = ("Thumbprint", "NotBefore", "NotAfter", "Friendly name", "In VMM's TrustedPeople")
    return _table(headers, rows, ident=ident)


def _result(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) > _RESULT_CHARS:
        text = text[:_RESULT_CHARS] + " …"
    return f"<code>{_e(text)}</code>"


def _steps(steps: Sequence[Step]) -> str:
    if not steps:
        return '<p class="empty" id="steps">No step has run.</p>'
    rows = (
        _tr(
            str(s.attempt),
            _e(s.name),
            _e(s.target),
            f'<span class="status s-{_e(s.status)}">{_e(s.status)}</span>',
            ("reason", _e(s.detail or "")),
            _result(s.result),
            _when(s.started_at),
            _when(s.finished_at),
        )
        for s in steps
    )
    headers = ("Attempt", "Step", "Target", "Result", "Detail", "Read back", "Started", "Finished")
    return _table(headers, rows, ident="steps")


def _planned_steps(plan: dict[str, Any]) -> str:
    steps = [s for s in plan.get("steps") or [] if isinstance(s, dict)]
    if not steps:
        return ""
    rows = (
        _tr(
            _e(s.get("name")),
            _e(s.get("target")),
            ("reason", _e(s.get("skip_reason") or "runs")),
        )
        for s in steps
    )
    return "<h3>Planned steps</h3>" + _table(
        ("Step", "Target", "Runs or why skipped"), rows, ident="planned-steps"
    )


def _plan(job: Job) -> str:
    plan = job.plan or {}
    problems = plan.get("problems") or []
    problem_list = (
        "<ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>"
        if problems
        else "<p>No problem was read (the certificate was fresh).</p>"
        if job.plan is not None
        else "<p>Not planned yet: the host has not been read.</p>"
    )
    would = plan.get("execute_mode_would")
    return (
        '<section id="plan"><h2>Procedure and why</h2><dl class="facts">'
        f"<dt>Procedure</dt><dd>{_e(plan.get('procedure') or job.procedure)}</dd>"
        f"<dt>Why</dt><dd>{_e(plan.get('why') or '—')}</dd>"
        + (f"<dt>In execute mode</dt><dd>{_e(would)}</dd>" if would else "")
        + "</dl><h3>What was wrong</h3>"
        + problem_list
        + _planned_steps(plan)
        + "</section>"
    )


def _attempts(attempts: Sequence[Attempt]) -> str:
    if not attempts:
        return '<p class="empty">No attempt yet.</p>'
    rows = (
        _tr(
            str(a.attempt),
            _e(a.kind),
            _e(a.result or "running"),
            _e(a.failed_step or ""),
            ("reason", _e(a.reason or "")),
            _when(a.started_at),
            _when(a.finished_at),
        )
        for a in attempts
    )
    headers = ("#", "Kind", "Result", "Failed step", "Reason", "Started", "Finished")
    return _table(headers, rows, ident="attempts")


def _alerts(alerts: Sequence[dict[str, Any]]) -> str:
    if not alerts:
        return '<p class="empty">Started from the command line, not by an alert.</p>'
    rows = (
        _tr(
            _stamp(a["received_at"]),
            _e(a["alertname"]),
            _e(a["starts_at"]),
            _e(a["outcome"]),
            ("reason", _e(a["reason"] or "")),
        )
        for a in alerts
    )
    headers = ("Received", "Alert", "Firing since", "Outcome", "Reason")
    return _table(headers, rows, ident="alerts")


def job_page(
    item: DeskJob,
    steps: Sequence[Step],
    attempts: Sequence[Attempt],
    alerts: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    *,
    identity: str,
    token: str,
) -> str:
    job = item.job
    next_attempt = _when(job.next_attempt_at) if job.active else "none: finished"
    approved = f"by {_e(job.approved_by)} at {_when(job.approved_at)}" if job.approved_at else "no"
    body = (
        f'<p class="crumbs"><a href="/">← all jobs</a></p>'
        f"<h1>Job #{job.id}: {_e(job.host)}</h1>"
        f'<p class="job-status">{_status_cell(item)} '
        f'<span class="reason">{_e(job.reason or "")}</span></p>'
        f'<div class="actions">{_actions(item, token)}</div>'
        '<dl class="facts" id="job">'
        f"<dt>Host</dt><dd>{_e(job.host)} ({_e(job.role)})</dd>"
        f"<dt>VMM server</dt><dd>{_e(job.vmm_server or '—')}</dd>"
        f"<dt>Mode</dt><dd>{_e(job.mode)}</dd>"
        f"<dt>Started by</dt><dd>{_e(job.source)}</dd>"
        f"<dt>Attempts</dt><dd>{job.attempt} ({job.failures} failed)</dd>"
        f'<dt>Next attempt</dt><dd id="next-attempt">{next_attempt}</dd>'
        f"<dt>Approved</dt><dd>{approved}</dd>"
        f"<dt>Created</dt><dd>{_when(job.created_at)}</dd>"
        f"<dt>Finished</dt><dd>{_when(job.finished_at)}</dd>"
        "</dl>"
        + _plan(job)
        + "<h2>Steps</h2>"
        + _steps(steps)
        + "<h2>Certificates before</h2>"
        + _certificates(job.certificates_before, "certificates-before")
        + "<h2>Certificates after</h2>"
        + _certificates(job.certificates_after, "certificates-after")
        + "<h2>Alerts</h2>"
        + _alerts(alerts)
        + "<h2>Attempts</h2>"
        + _attempts(attempts)
        + "<h2>Journal</h2>"
        + events_table(events)
    )
    return page(f"Job #{job.id}: {job.host}", body, identity=identity)


def message_page(title: str, message: str, *, identity: str | None) -> str:
    """A refusal or an error, said in words, with the way back."""
    body = (
        f'<h1>{_e(title)}</h1><p class="refusal" id="message">{_e(message)}</p>'
        '<p><a href="/">Back to the desk</a></p>'
    )
    return page(title, body, identity=identity)
