"""The exporter's pages without a browser: the problems-first order, the words, escaping of
what hosts send, the calendar against /metrics' cohort families, paging and page size, the
per-computer page, the static files and the authentication every path shares."""

from __future__ import annotations

import base64
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests

from vmm_cert_exporter.cohorts import cohort_day
from vmm_cert_exporter.inventory import Computer
from vmm_cert_exporter.metrics import Exposition, SnapshotCollector, cohort_families
from vmm_cert_exporter.pages import calendar, computer, landing
from vmm_cert_exporter.pages.prepared import FleetCache, prepare
from vmm_cert_exporter.pages.status import STATUSES, assess, problems_first
from vmm_cert_exporter.snapshot import HostSnapshot, Snapshot, StoredCertificate
from vmm_cert_exporter.web import make_app, make_server
from vmm_cert_exporter.webconfig import load_web_config
from vmm_cert_lab.stored import stored_certificate

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
HOSTILE = "<script>alert(1)</script>&\"'"


def cert(
    fqdn: str,
    not_after: datetime,
    *,
    issuer: str | None = None,
    thumbprint: str = "AB" * 20,
    friendly: str | None = None,
) -> StoredCertificate:
    return stored_certificate(
        fqdn, not_after, issuer=issuer, thumbprint=thumbprint, friendly=friendly
    )


def host(
    fqdn: str,
    days: float | None = 400.0,
    *,
    role: str = "hyperv_host",
    certificates: tuple[StoredCertificate, ...] | None = None,
    read: bool = True,
    ok: bool = True,
    trusted: bool | None = True,
    error: str | None = None,
    state: str | None = "Responding",
    display: str | None = None,
) -> HostSnapshot:
    if certificates is None and read:
        after = datetime.fromtimestamp(NOW, UTC) + timedelta(days=days or 0)
        certificates = (cert(fqdn, after),) if days is not None else ()
    return HostSnapshot(
        computer=Computer(fqdn, role, "vmm01.t.example", state, False, display),
        certificates=certificates if read else None,
        trusted=trusted,
        last_success=NOW - 60 if read else None,
        last_ok=ok,
        last_duration=0.1,
        last_error=error,
        last_error_reason=error.split(":")[0] if error else None,
    )


def snapshot(*hosts: HostSnapshot) -> Snapshot:
    return Snapshot(tuple(hosts), NOW - 30, 5.0, 900.0, True)


def every_problem() -> Snapshot:
    """One computer per problem, listed in no particular order, plus healthy ones."""
    hours_left = datetime.fromtimestamp(NOW, UTC) + timedelta(days=400)
    return snapshot(
        host("healthy-far.t.example", 900),
        host("within-30.t.example", 20),
        host("unreadable.t.example", 300, ok=False, error="timeout: no answer in 30 s"),
        host("never-read.t.example", None, read=False, ok=False, error="connect: refused"),
        host(
            "duplicates.t.example",
            certificates=(
                cert("duplicates.t.example", hours_left, thumbprint="11" * 20),
                cert("duplicates.t.example", hours_left.replace(year=2027), thumbprint="22" * 20),
            ),
        ),
        host("healthy-near.t.example", 100),
        host("within-7.t.example", 3),
        host("untrusted.t.example", 500, trusted=False),
        host("missing.t.example", None, trusted=None),
        host("expired.t.example", -10),
        host("expired-long-ago.t.example", -400),
        host("within-30-sooner.t.example", 10),
    )


EXPECTED_ORDER = [
    "expired-long-ago.t.example",  # 1. expired, most overdue first
    "expired.t.example",
    "missing.t.example",  # 2.
    "untrusted.t.example",  # 3.
    "within-7.t.example",  # 4.
    "duplicates.t.example",  # 5.
    "unreadable.t.example",  # 6. (read before: by days left)
    "never-read.t.example",  # 6. never read: no days left, last
    "within-30-sooner.t.example",  # 7.
    "within-30.t.example",
    "healthy-near.t.example",  # 8. the rest by days left
    "healthy-far.t.example",
]


def names_in(page: str) -> list[str]:
    """The computers of the tables of computers, in the order the page lists them."""
    tables = re.findall(r'<table class="computers.*?</table>', page, re.S)
    return [
        n for t in tables for n in re.findall(r'<tr(?: class="\w+")?><td><a [^>]*>([^<]*)</a>', t)
    ]


def test_the_order_is_problems_first() -> None:
    fleet = prepare(every_problem())
    ordered, counts = problems_first(fleet, NOW)
    assert [e.host.computer.fqdn for e in ordered] == EXPECTED_ORDER
    assert counts == {"critical": 5, "warning": 4, "ok": 2, "unread": 1}
    page = landing.render(fleet, NOW)
    assert names_in(page) == EXPECTED_ORDER


def test_the_fast_order_is_the_order_of_each_computers_problems() -> None:
    """``problems_first`` bisects the steady computers' NotAfters: the same order and counts
    as assessing every computer and sorting, at the thresholds' very instants too."""
    rng = random.Random(7)
    hosts = list(every_problem().hosts)
    for i in range(300):
        days = rng.choice([-1, 0, 1, 6.5, 7, 7.001, 29, 30, 31, 400]) + rng.choice([0, 0.25])
        hosts.append(host(f"r{i:03d}.t.example", days, trusted=rng.random() > 0.05))
    fleet = prepare(snapshot(*hosts))
    for now in (NOW, NOW + 0.25 * DAY, NOW - 7 * DAY, NOW + 23 * DAY, NOW + 30 * DAY):
        ordered, counts = problems_first(fleet, now)
        each = [assess(e, now) for e in fleet.entries]
        naive = sorted(
            each,
            key=lambda a: (
                a.rank,
                math.inf if a.days_left is None else a.days_left,
                a.entry.host.computer.key,
            ),
        )
        assert [e.host.computer.fqdn for e in ordered] == [
            a.entry.host.computer.fqdn for a in naive
        ]
        assert counts == dict(Counter(a.status for a in each)) | {
            s: 0 for s in STATUSES if s not in {a.status for a in each}
        }


def test_the_header_counts_each_status_in_words() -> None:
    page = landing.render(prepare(every_problem()), NOW)
    counts = dict(
        (status, int(n))
        for n, status in re.findall(r'<li class="\w+"><b>(\d+)</b> (\w+)</li>', page)
    )
    # critical: expired x2, missing, untrusted, within 7; warning: duplicates, unreadable,
    # within 30 x2; unread: never read; ok: the two healthy ones
    assert counts == {"critical": 5, "warning": 4, "ok": 2, "unread": 1}
    assert "last refresh 2026-12-02 11:59 UTC, data age 30 s" in page
    assert "vmm-cert-exporter 0." in page and 'href="metrics"' in page and "docs/pages.md" in page


def test_every_problem_is_said_in_words() -> None:
    page = landing.render(prepare(every_problem()), NOW)
    found = re.findall(r"<a [^>]*>([^<]*)</a><td>(\w+)<td>([^<]*)<td>", page)
    rows = {name: (word, problems) for name, word, problems in found}
    assert rows["expired.t.example"] == ("CRITICAL", "expired 10 days ago")
    assert rows["missing.t.example"] == ("CRITICAL", "missing: no SCVMM certificate in its store")
    assert rows["untrusted.t.example"][1].startswith("not trusted: ")
    assert rows["within-7.t.example"] == ("CRITICAL", "expires within 7 days")
    assert rows["duplicates.t.example"] == ("WARNING", "duplicates: 2 SCVMM certificates")
    assert rows["unreadable.t.example"] == ("WARNING", "unreadable (timeout)")
    assert rows["never-read.t.example"] == ("UNREAD", "unreadable (connect)")
    assert rows["within-30.t.example"] == ("WARNING", "expires within 30 days")
    assert rows["healthy-far.t.example"] == ("OK", "")


def test_healthy_computers_follow_collapsed() -> None:
    page = landing.render(prepare(every_problem()), NOW)
    attention, healthy = page.split('<details class="healthy">')
    assert "healthy-near.t.example" not in attention.split("Expiry calendar")[0]
    assert healthy.index("healthy-near") < healthy.index("healthy-far")
    filtered = landing.render(prepare(every_problem()), NOW, "q=healthy")
    assert '<details class="healthy" open>' in filtered  # a filter shows what it found


def test_strings_from_hosts_are_escaped() -> None:
    nasty = host(
        "nasty.t.example",
        certificates=(
            cert(
                "nasty.t.example",
                datetime.fromtimestamp(NOW, UTC) + timedelta(days=5),
                issuer=f"CN={HOSTILE}",
                friendly=f"SCVMM_CERTIFICATE_KEY_CONTAINER{HOSTILE}",
            ),
        ),
        ok=False,
        error=f"script: {HOSTILE}",
        state=HOSTILE,
        display=HOSTILE,
    )
    fleet = prepare(snapshot(nasty))
    pages = [
        landing.render(fleet, NOW, "q=" + HOSTILE),
        computer.render(nasty, NOW),
        computer.not_found(HOSTILE),
    ]
    for page in pages:
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;" in page


def test_the_calendar_counts_what_the_cohort_metric_counts() -> None:
    now_dt = datetime.fromtimestamp(NOW, UTC)
    hosts = [
        host(f"y{year}-{i}.t.example", role=role, certificates=(cert("x", after),))
        for year, count, role in ((2027, 3, "hyperv_host"), (2028, 4, "library_server"))
        for i in range(count)
        for after in [datetime(year, 1, 1, tzinfo=UTC)]
    ]
    hosts += [
        host("mid-month.t.example", 45),
        host("same-month.t.example", 46),
        host("expired.t.example", -3),
        host("far.t.example", 3000),  # beyond three years
        host("missing.t.example", None),
        host("never.t.example", read=False, ok=False),
    ]
    snap = snapshot(*hosts)
    drawn = calendar.build(prepare(snap), NOW)
    computers, expiry = cohort_families(snap)
    per_day: dict[str, int] = {}
    for sample in computers.samples:
        per_day[sample.labels["cohort"]] = per_day.get(sample.labels["cohort"], 0) + int(
            sample.value
        )
    first = {s.labels["cohort"]: s.value for s in expiry.samples}
    expired = sum(n for day, n in per_day.items() if first[day] <= NOW)
    by_month: dict[str, int] = {}
    for day, n in per_day.items():
        if first[day] > NOW:
            by_month[day[:7]] = by_month.get(day[:7], 0) + n
    assert drawn.expired == expired == 1
    assert len(drawn.months) == 36 and drawn.months[0].label == now_dt.strftime("%Y-%m")
    assert {m.label: m.count for m in drawn.months if m.count} == {
        k: v for k, v in by_month.items() if k <= drawn.months[-1].label
    }
    assert drawn.later == sum(v for k, v in by_month.items() if k > drawn.months[-1].label) == 1
    january = {m.label: m.new_year for m in drawn.months if m.new_year}
    assert january == {"2027-01": 3, "2028-01": 4}
    svg = calendar.chart(drawn)
    # 1 January 2027 and two days in the middle of the month: a bar of 5, 3 of them marked
    assert 'data-month="2027-01" data-count="5" data-new-year="3"' in svg
    assert 'data-month="expired" data-count="1"' in svg
    assert 'class="newyear"' in svg
    table = calendar.cohort_table(drawn, NOW)
    assert "2027-01-01 (1 January)" in table and "library_server 4" in table
    mid_month = cohort_day(NOW + 45 * DAY).isoformat()
    assert table.index("2027-01-01") < table.index(mid_month) < table.index("2028-01-01")


def test_the_next_cohorts_name_their_first_computers() -> None:
    after = datetime(2028, 1, 1, tzinfo=UTC)
    hosts = [host(f"h{i:02d}.t.example", certificates=(cert("x", after),)) for i in range(8)]
    drawn = calendar.build(prepare(snapshot(*reversed(hosts))), NOW)
    table = calendar.cohort_table(drawn, NOW)
    assert ">h00.t.example</a>, " in table and ">h04.t.example</a> and 3 more" in table
    assert "h05.t.example" not in table


def fleet_of(size: int, problems_every: int = 20) -> Snapshot:
    """Long realistic names; one computer in ``problems_every`` has a problem."""
    hosts = []
    for i in range(size):
        name = f"hyperv-{i:05d}.dc-east.corp.example.com"  # 35 characters
        if i % problems_every == 0:
            hosts.append(host(name, -5 if i % 3 else 12, state="NotResponding"))
        else:
            hosts.append(host(name, 200 + (i % 5) * 365))
    return snapshot(*hosts)


def test_a_page_of_a_thousand_computers_stays_under_200_kb() -> None:
    page = landing.render(prepare(fleet_of(1000)), NOW)
    assert len(names_in(page)) == 1000
    assert len(page.encode()) < 200_000, len(page.encode())
    assert 'class="pager"' not in page


def test_past_a_thousand_rows_the_list_is_paged() -> None:
    fleet = prepare(fleet_of(2500, problems_every=2))  # half of them with a problem
    first = landing.render(fleet, NOW)
    assert len(names_in(first)) == 500 and len(first.encode()) < 200_000
    assert 'href="?page=2"' in first and 'href="?page=5"' in first
    assert all(int(n[7:12]) % 2 == 0 for n in names_in(first))  # problems first
    last = landing.render(fleet, NOW, "page=5")
    assert len(names_in(last)) == 500 and "page 5 of 5" in last
    assert names_in(landing.render(fleet, NOW, "page=99")) == names_in(last)
    everyone = [n for p in range(1, 6) for n in names_in(landing.render(fleet, NOW, f"page={p}"))]
    assert sorted(everyone) == sorted(h.computer.fqdn for h in fleet.snapshot.hosts)


def test_the_filter_works_on_the_server() -> None:
    fleet = prepare(every_problem())
    assert names_in(landing.render(fleet, NOW, "q=EXPIRED")) == [
        "expired-long-ago.t.example",
        "expired.t.example",
    ]
    assert names_in(landing.render(fleet, NOW, "q=within-30")) == [
        "within-30-sooner.t.example",
        "within-30.t.example",
    ]
    lib = prepare(snapshot(host("lib01.t.example", role="library_server"), host("hv.t.example")))
    assert names_in(landing.render(lib, NOW, "role=library_server")) == ["lib01.t.example"]
    refused = landing.render(lib, NOW, "role=admin&page=x")
    assert "role: expected one of vmm_server, hyperv_host, library_server, other" in refused
    assert "page: expected a whole number from 1" in refused
    assert len(names_in(refused)) == 2
    assert 'value="library_server" selected' in landing.render(lib, NOW, "role=library_server")


def test_the_computer_page_shows_every_certificate_trust_state_error_and_last_read() -> None:
    after = datetime(2030, 1, 1, tzinfo=UTC)
    dup = host(
        "dup.t.example",
        certificates=(
            cert("dup.t.example", after, thumbprint="11" * 20),
            cert("dup.t.example", after.replace(year=2029), thumbprint="22" * 20),
        ),
        ok=False,
        error="timeout: no answer within 30 s",
        state="NotResponding",
        display="応答なし",
    )
    page = computer.render(dup, NOW)
    assert page.index("11" * 20) < page.index("22" * 20)  # the one in use first
    assert "Certificate 1 of 2: in use (the latest NotAfter)" in page
    assert "2030-01-01 00:00 UTC" in page and "2025-01-01 00:00 UTC" in page
    assert "CN=dup.t.example" in page
    assert "Matches: the TrustedPeople store of VMM server vmm01.t.example" in page
    assert "<dd>NotResponding</dd>" in page and "<dd>応答なし</dd>" in page
    assert "timeout: no answer within 30 s" in page and "<dd>timeout</dd>" in page
    assert "2026-12-02 11:59 UTC (60 s ago)" in page
    untrusted = computer.render(host("u.t.example", trusted=False), NOW)
    assert "Not trusted" in untrusted
    missing = computer.render(host("m.t.example", None, trusted=None), NOW)
    assert "Missing: its LocalMachine\\My store holds no SCVMM certificate" in missing


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The real HTTP layer serving the pages of ``every_problem()``, behind Basic auth."""
    snap = every_problem()
    collector = SnapshotCollector(lambda: snap, clock=lambda: NOW)
    exposition = Exposition(collector, lambda: snap, clock=lambda: NOW)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    server = make_server(
        make_app(exposition, lambda: snap, clock=lambda: NOW, fleets=FleetCache()),
        "127.0.0.1:0",
        web_config=load_web_config(web),
    ).start()
    try:
        token = base64.b64encode(b"alice:pw").decode()
        yield {"url": server.url, "auth": {"Authorization": f"Basic {token}"}}
    finally:
        server.stop()


def test_pages_share_the_authentication_of_metrics(served: dict[str, Any]) -> None:
    paths = ["/metrics", "/", "/computer/expired.t.example", "/static/pages.css", "/nothing"]
    for path in paths:
        refused = requests.get(served["url"] + path, timeout=10)
        assert refused.status_code == 401, path
        assert "expired.t.example" not in refused.text
    answered = {
        p: requests.get(served["url"] + p, headers=served["auth"], timeout=10) for p in paths
    }
    assert answered["/"].status_code == 200
    assert answered["/"].headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in answered["/"].headers["Content-Security-Policy"]
    assert answered["/"].headers["Cache-Control"] == "no-cache"
    assert answered["/computer/expired.t.example"].status_code == 200
    assert answered["/static/pages.css"].headers["Content-Type"].startswith("text/css")
    assert answered["/nothing"].status_code == 404


def test_an_unknown_computer_is_a_404_page(served: dict[str, Any]) -> None:
    url, auth = served["url"], served["auth"]
    found = requests.get(url + "/computer/EXPIRED.t.example", headers=auth, timeout=10)
    assert found.status_code == 200 and "<h1>expired.t.example</h1>" in found.text
    for name in ("nosuch.t.example", "a/b", "%3Cb%3E"):
        missing = requests.get(url + "/computer/" + name, headers=auth, timeout=10)
        assert missing.status_code == 404, name
        assert missing.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "No such computer" in missing.text and "<b>" not in missing.text
    assert (
        'href="../../static/pages.css"'
        in requests.get(url + "/computer/a/b", headers=auth, timeout=10).text
    )


def test_the_static_files_are_package_resources(served: dict[str, Any]) -> None:
    url, auth = served["url"], served["auth"]
    script = requests.get(url + "/static/pages.js", headers=auth, timeout=10)
    assert script.status_code == 200 and "addEventListener" in script.text
    assert script.headers["Content-Type"].startswith("text/javascript")
    for name in ("../web.py", "pages.py", "", "%2e%2e/__init__.py"):
        assert requests.get(url + "/static/" + name, headers=auth, timeout=10).status_code == 404
    head = requests.head(url + "/", headers=auth, timeout=10)
    assert head.status_code == 200 and head.text == "" and int(head.headers["Content-Length"]) > 0


def test_the_pages_view_is_prepared_once_per_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    fleets = FleetCache()
    first, second = every_problem(), every_problem()
    fleets.warm(first)
    assert fleets.get(first) is fleets.get(first)
    assert fleets.get(second).snapshot is second
    broken = Snapshot((None,), NOW, 1.0, 900.0, True)  # type: ignore[arg-type]
    fleets.warm(broken)  # a refresher's listener: logs, never raises into the refresh
    assert "preparing the pages' view of the snapshot failed" in caplog.text
    assert fleets.get(second).snapshot is second
