"""The exporter's pages in Debian's chromium against the demo lab: the problems-first order,
the calendar's numbers against /metrics, the per-computer page, the filter with and without
JavaScript, and the pages without JavaScript."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page
from prometheus_client.parser import text_string_to_metric_families

from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.processes import Process, Processes

pytestmark = pytest.mark.e2e

# The demo scenario's problems, in the order the landing page must list them
PROBLEMS_FIRST = [
    "hv37",  # expired
    "hv38",  # missing
    "hv39",  # not trusted
    "hv36",  # within 7 days
    "hv41",  # duplicates
    "hv40",  # unreadable (connection refused)
    "hv31",  # within 30 days: the 20-day cohort by name, then the VMM server (25 days)
    "hv32",
    "hv33",
    "hv34",
    "hv35",
    "vmm01",
]


@pytest.fixture(scope="module")
def exporter(demo_lab: RunningLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """``vmm-cert-exporter serve`` on the demo lab, shared by this module's tests (none
    changes the lab)."""
    config = demo_lab.write_config(tmp_path_factory.mktemp("pages") / "c.yml")
    started = Processes()
    try:
        process = started.exporter("serve", "--config", str(config), listen=True)
        process.wait_ready()
        yield process
    finally:
        started.stop_all()


def _rows(page: Page) -> list[list[str]]:
    """Every row of the tables of computers, in page order, as cell texts."""
    texts: list[list[str]] = page.locator("table.computers tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
    )
    return texts


def _visible_names(page: Page) -> list[str]:
    return page.locator("table.computers tbody tr:visible td:first-child").all_inner_texts()


def _metrics(page: Page, url: str) -> str:
    response = page.request.get(f"{url}/metrics")  # the browser context's own request
    assert response.ok
    return response.text()


def test_problems_first_with_words_and_colour(
    exporter: Process, browser_page: Callable[..., Page]
) -> None:
    page = browser_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{exporter.url}/")
    rows = _rows(page)
    names = [r[0] for r in rows]
    assert names[: len(PROBLEMS_FIRST)] == [lab_host(h) for h in PROBLEMS_FIRST]
    assert len(names) == 43 and len(set(names)) == 43
    # the rest by days left
    rest = [float(r[4]) for r in rows[len(PROBLEMS_FIRST) :]]
    assert rest == sorted(rest) and rows[-1][1] == "OK"
    words = {r[0]: (r[1], r[2]) for r in rows}
    assert words[lab_host("hv37")] == ("CRITICAL", "expired 10 days ago")
    assert words[lab_host("hv38")][1].startswith("missing: ")
    assert words[lab_host("hv39")][1].startswith("not trusted: ")
    assert words[lab_host("hv41")] == ("WARNING", "duplicates: 2 SCVMM certificates")
    assert words[lab_host("hv40")] == ("UNREAD", "unreadable (connect)")
    counts = page.locator("ul.counts li").all_inner_texts()
    assert counts == ["4 critical", "7 warning", "31 ok", "1 unread"]
    assert "data age" in page.locator("p.refresh").inner_text()
    # colour as well as words: the rows' backgrounds differ by status
    background = "el => getComputedStyle(el).backgroundColor"
    critical = page.locator("table.computers tr.critical").first.evaluate(background)
    warning = page.locator("table.computers tr.warning").first.evaluate(background)
    assert len({critical, warning, "rgba(0, 0, 0, 0)"}) == 3
    assert page.locator('nav a[href="metrics"]').count() == 1
    assert page.locator('nav a[href$="docs/pages.md"]').count() == 1
    assert errors == []  # the script runs under the page's Content-Security-Policy


def test_the_calendar_counts_what_metrics_says(
    exporter: Process, browser_page: Callable[..., Page]
) -> None:
    page = browser_page()
    page.goto(f"{exporter.url}/")
    bars: list[dict[str, str]] = page.locator("svg.calendar g.month").evaluate_all(
        "gs => gs.map(g => ({...g.dataset}))"
    )
    now = time.time()
    computers: dict[str, int] = {}
    expires: dict[str, float] = {}
    for family in text_string_to_metric_families(_metrics(page, exporter.url)):
        for sample in family.samples:
            if sample.name == "vmm_cert_cohort_computers":
                day = sample.labels["cohort"]
                computers[day] = computers.get(day, 0) + int(sample.value)
            elif sample.name == "vmm_cert_cohort_expiry_timestamp_seconds":
                expires[sample.labels["cohort"]] = sample.value
    assert computers, "no cohorts in /metrics"
    assert bars[0] == {
        "month": "expired",
        "count": str(sum(n for d, n in computers.items() if expires[d] <= now)),
        "newYear": "0",
    }
    months = bars[1:]
    assert len(months) == 36
    for bar in months:
        due = {d: n for d, n in computers.items() if d[:7] == bar["month"] and expires[d] > now}
        assert int(bar["count"]) == sum(due.values()), bar
        assert int(bar["newYear"]) == sum(n for d, n in due.items() if d.endswith("-01-01")), bar
    drawn = sum(int(b["count"]) for b in bars)
    later = sum(n for d, n in computers.items() if d[:7] > months[-1]["month"])
    assert drawn + later == sum(computers.values()) == 41  # all but the missing and unread
    assert f"{later} more expire after {months[-1]['month']}" in page.inner_text("#calendar")
    assert any(int(b["newYear"]) for b in months)  # the 1 January cohorts stand out
    assert page.locator("svg.calendar rect.newyear").count() >= 1
    first = page.locator("table.cohorts tbody tr").first.locator("td")
    # the next cohort: hv36, alone, within 7 days
    assert first.nth(2).inner_text() == "1" and first.nth(4).inner_text() == lab_host("hv36")


def test_the_computer_page(exporter: Process, browser_page: Callable[..., Page]) -> None:
    page = browser_page()
    page.goto(f"{exporter.url}/")
    page.get_by_role("link", name=lab_host("hv41"), exact=True).first.click()
    assert page.url == f"{exporter.url}/computer/{lab_host('hv41')}"
    assert page.locator("h1").inner_text() == lab_host("hv41")
    tables = page.locator("table.certificate")
    assert tables.count() == 2
    shown = [
        t.locator("tr", has_text="Thumbprint").locator("td").inner_text() for t in tables.all()
    ]
    in_metrics = [
        s.labels["thumbprint"]
        for f in text_string_to_metric_families(_metrics(page, exporter.url))
        for s in f.samples
        if s.name == "vmm_cert_info" and s.labels["host"] == lab_host("hv41")
    ]
    assert sorted(shown) == sorted(in_metrics) and len(set(shown)) == 2
    assert "in use (the latest NotAfter)" in tables.first.locator("caption").inner_text()
    for field in ("NotBefore", "NotAfter", "Issuer"):
        assert tables.first.locator("tr", has_text=field).locator("td").inner_text()
    body = page.inner_text("body")
    assert "Matches: the TrustedPeople store of VMM server" in body
    state = page.locator("dt:text-is('State (invariant, what alerts use)') + dd")
    assert state.inner_text() == "Responding"
    assert "Last read successfully" in body and "UTC (" in body

    page.goto(f"{exporter.url}/computer/{lab_host('hv39')}")
    assert "Not trusted" in page.inner_text("body")
    page.goto(f"{exporter.url}/computer/{lab_host('hv40')}")
    reading = page.inner_text("body")
    assert "never" in reading and "connect" in reading
    assert state.inner_text() == "NotResponding"
    assert page.locator("dt:text-is('As VMM displays it') + dd").inner_text() == "Not Responding"
    response = page.goto(f"{exporter.url}/computer/nosuch.lab.example")
    assert response is not None and response.status == 404
    assert "No such computer" in page.inner_text("h1")


def test_the_filter_as_one_types(exporter: Process, browser_page: Callable[..., Page]) -> None:
    page = browser_page()
    page.goto(f"{exporter.url}/")
    loads: list[str] = []
    page.on("request", lambda r: loads.append(r.url) if r.resource_type == "document" else None)
    page.get_by_label("Filter").press_sequentially("hv3")
    expected = sorted(lab_host(f"hv{n}") for n in range(30, 40))
    assert sorted(_visible_names(page)) == expected  # hv30 is healthy: its table opened
    page.get_by_label("Filter").fill("")
    page.get_by_label("Role").select_option("library_server")
    assert _visible_names(page) == [lab_host("lib01")]
    page.get_by_label("Role").select_option("")
    page.get_by_label("Filter").fill("EXPIRED")
    assert _visible_names(page) == [lab_host("hv37")]
    assert loads == []  # no request: the page filtered itself
    assert "q=EXPIRED" in page.url  # and a reload keeps the filter


def test_the_filter_without_javascript(
    exporter: Process, browser_page: Callable[..., Page]
) -> None:
    page = browser_page(javascript=False)
    page.goto(f"{exporter.url}/")
    page.get_by_label("Filter").fill("expired")
    page.get_by_label("Filter").press("Enter")
    page.wait_for_url("**/?q=expired*")
    assert [r[0] for r in _rows(page)] == [lab_host("hv37")]
    page.get_by_label("Filter").fill("")
    page.get_by_label("Role").select_option("library_server")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**role=library_server*")
    assert [r[0] for r in _rows(page)] == [lab_host("lib01")]
    assert _visible_names(page) == [lab_host("lib01")]  # its healthy table is open


def test_the_pages_without_javascript(exporter: Process, browser_page: Callable[..., Page]) -> None:
    page = browser_page(javascript=False)
    page.goto(f"{exporter.url}/")
    assert page.locator("ul.counts li").count() == 4
    assert page.locator("svg.calendar g.month").count() == 37
    assert page.locator("table.cohorts tbody tr").count() >= 5
    assert _visible_names(page)[: len(PROBLEMS_FIRST)] == [lab_host(h) for h in PROBLEMS_FIRST]
    page.get_by_text("Healthy: 31 computers").click()  # <details> opens without a script
    assert len(_visible_names(page)) == 43
    page.goto(f"{exporter.url}/computer/{lab_host('hv38')}")
    assert "Missing" in page.inner_text("body")
    stylesheet = page.evaluate("getComputedStyle(document.body).fontFamily")
    assert "system-ui" in stylesheet  # the package's CSS loaded


def test_the_script_and_the_server_filter_alike(
    exporter: Process, browser_page: Callable[..., Page]
) -> None:
    live = browser_page()
    live.goto(f"{exporter.url}/")
    served = browser_page(javascript=False)
    for text, role in [
        ("critical", ""),
        ("NOT RESPONDING", ""),
        ("connect", ""),
        ("hv1", ""),
        ("access denied", "hyperv_host"),
        ("", "vmm_server"),
        ("lab.example", "library_server"),
    ]:
        live.get_by_label("Filter").fill(text)
        live.get_by_label("Role").select_option(role)
        served.goto(f"{exporter.url}/?{urlencode({'q': text, 'role': role})}")
        assert sorted(_visible_names(live)) == sorted(r[0] for r in _rows(served)), (text, role)
        assert _rows(served), (text, role)
