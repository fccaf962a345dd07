"""The closed loop: lab → exporter → Prometheus → Alertmanager → receiver → lab → resolved.

Runs the same stack as ``make demo`` (demo.running_stack) with short timings. In execute mode
the receiver renews every host whose alert it is sent and the alerts resolve by themselves;
in dry-run mode the same run changes nothing in the lab.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.dashboard import panel_expressions, render_dashboard
from vmm_cert_exporter.demo import Stack, running_stack
from vmm_cert_exporter.promstack import Process
from vmm_cert_exporter.rules import FOR_DURATIONS

D = ".lab.example"
# hosts whose alerts are renewal triggers in the demo (hv40 is unreachable: CollectionFailing;
# hv41's duplicate is a warning the receiver does not act on)
RENEWED = {f"hv{n}{D}" for n in range(31, 40)} | {f"vmm01{D}"}
FAST = {name: "3s" for name in FOR_DURATIONS} | {"VMMCertificateExporterDown": "1m"}


def _query(prometheus: Process, expr: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["promtool", "query", "instant", "-o", "json", prometheus.url, expr],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{expr}: {result.stderr}"
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def _firing(prometheus: Process) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in _query(prometheus, 'ALERTS{alertstate="firing"}'):
        out.setdefault(item["metric"]["alertname"], set()).add(item["metric"].get("host", ""))
    return out


def _wait(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out: {what()}")


def _thumbprints(stack: Stack) -> dict[str, list[str]]:
    return {
        c["fqdn"]: sorted(str(x["thumbprint"]) for x in c.get("certificates", []))
        for c in (stack.lab.model.describe(h["fqdn"]) for h in stack.lab.model.list_computers())
    }


@pytest.fixture()
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_stack(
        tmp_path / "stack",
        receiver_mode=request.param,
        interval="10s",
        scrape_interval="1s",
        for_durations=FAST,
        preferred_ports=False,
    ) as running:
        assert set(running.processes) == {"prometheus", "alertmanager"}
        yield running


@pytest.mark.parametrize("stack", ["execute"], indirect=True)
def test_execute_mode_renews_and_the_alerts_resolve(stack: Stack) -> None:
    prometheus = stack.processes["prometheus"]
    assert stack.receiver is not None
    journal = stack.receiver.journal

    def renewed() -> set[str]:
        return {j.host.lower() for j in journal.list_jobs() if j.status == "succeeded"}

    _wait(lambda: renewed() >= RENEWED, 90, lambda: f"renewed {sorted(renewed())}")
    # the exporter sees the new certificates, Prometheus resolves every renewal alert
    triggers = (
        "VMMCertificateExpiringSoon",
        "VMMCertificateExpiringCritical",
        "VMMCertificateExpired",
        "VMMCertificateMissing",
        "VMMCertificateNotTrusted",
    )
    _wait(
        lambda: not any(name in _firing(prometheus) for name in triggers),
        60,
        lambda: f"still firing: {_firing(prometheus)}",
    )
    jobs = journal.list_jobs()
    assert {j.status for j in jobs} <= {"succeeded", "already-fresh"}, [
        (j.host, j.status) for j in jobs
    ]
    # what is left is what a renewal does not fix (CollectionFailing needs three failed
    # refreshes, so it may come after the renewals on a busy machine)
    _wait(
        lambda: _firing(prometheus).get("VMMCertificateCollectionFailing") == {f"hv40{D}"},
        60,
        lambda: f"firing: {_firing(prometheus)}",
    )
    # refreshes kept finishing (every 10 s) throughout: the exporter was never stale
    stale = 'ALERTS{alertname="VMMCertificateExporterStale",alertstate="firing"}'
    assert _query(prometheus, f"count_over_time({stale}[1h])") == []

    # the dashboard: every expression parses and returns data, the renewal panels included
    expressions = panel_expressions(
        render_dashboard(), {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}
    )
    empty = [e for e in expressions if not _query(prometheus, e)]
    assert not empty, f"no data for: {empty}"


@pytest.mark.parametrize("stack", ["dry-run"], indirect=True)
def test_dry_run_changes_nothing(stack: Stack) -> None:
    before = _thumbprints(stack)
    assert stack.receiver is not None
    journal = stack.receiver.journal
    _wait(
        lambda: {j.host.lower() for j in journal.list_jobs()} >= RENEWED,
        90,
        lambda: f"planned {[(j.host, j.status) for j in journal.list_jobs()]}",
    )
    time.sleep(3)
    assert _thumbprints(stack) == before
    assert "VMMCertificateExpired" in _firing(stack.processes["prometheus"])
