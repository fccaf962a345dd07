"""``vmm-cert-exporter cohorts`` against the lab: the cohorts the lab holds, then the same
after the receiver renewed one computer (renewed out of its cohort, into a new one, and the
renewal's duration measured from the journal)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmm_cert_exporter.cli import main
from vmm_cert_lab.receiver_testing import Harness

D = ".lab.example"


def lab_cohorts(harness: Harness) -> Counter[str]:
    """Computers per NotAfter day, as the lab holds them, of those the exporter can read."""
    days: Counter[str] = Counter()
    for computer in harness.lab.model.list_computers():
        faults = harness.describe(computer["fqdn"])["faults"]
        unreadable = any(v for k, v in faults.items() if k != "language_mode")
        if computer["not_after"] and not unreadable:
            days[computer["not_after"][:10]] += 1
    return days


def cohorts(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["cohorts", "--config", str(config), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_cohorts_of_the_lab_before_and_after_a_renewal(
    harness_factory: Callable[..., Harness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = harness_factory(max_concurrent=2, max_concurrent_per_vmm_server=2)
    config = tmp_path / "receiver0" / "receiver.yml"
    expected = lab_cohorts(harness)

    code, before = cohorts(config, capsys)
    assert {c["day"]: c["computers"] for c in before["cohorts"]} == dict(expected)
    assert all(c["renewed"] == 0 for c in before["cohorts"])
    cap = before["capacity"]
    assert cap["renewal_duration_source"] == "assumed"
    assert cap["renewal_seconds"] == 300.0
    assert cap["measured_per_day"] is None
    assert cap["concurrency"] == 2
    assert cap["per_day"] == cap["configured_per_day"] == 2 * 288
    # the demo lab holds a cohort that already expired: critical
    assert before["cohorts"][0]["risk"] == "critical"
    assert code == 2

    host = f"hv36{D}"
    day = harness.describe(host)["not_after"][:10]
    # the renewal takes 4 minutes on the receiver's clock (registering runs on the VMM server)
    vmm = f"vmm01{D}"
    harness.runner.after[(vmm, "register-managed-computer")] = lambda: harness.clock.advance(240)
    decision = harness.submit(host)
    harness.tick()
    assert not harness.runner.after, "the renewal never registered on the VMM server"
    assert harness.job(decision.job_id).status == "succeeded"
    renewed_day = harness.describe(host)["not_after"][:10]

    _, after = cohorts(config, capsys)
    rows = {c["day"]: c for c in after["cohorts"]}
    assert (rows[day]["computers"], rows[day]["renewed"]) == (expected[day] - 1, 1)
    assert rows[renewed_day]["computers"] == expected[renewed_day] + 1
    cap = after["capacity"]
    assert cap["renewal_duration_source"] == "measured"
    assert cap["renewal_seconds"] == 240.0
    assert list(cap["measured_seconds_by_procedure"].values()) == [240.0]
    assert cap["measured_per_day"] == cap["per_day"] == 2 * 360
    assert cap["configured_per_day"] == 2 * 288


def test_the_table_and_a_paused_receiver(
    harness_factory: Callable[..., Harness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = harness_factory(require_approval=True)
    harness.journal.set_paused(True, by="test")
    config = tmp_path / "receiver0" / "receiver.yml"
    capsys.readouterr()
    assert main(["cohorts", "--config", str(config)]) == 2
    out = capsys.readouterr().out
    assert "the receiver is PAUSED" in out
    assert "require_approval is on" in out
    header = next(line for line in out.splitlines() if line.startswith("DAY"))
    assert header.split() == [
        "DAY", "COMPUTERS", "BY", "ROLE", "RENEWED", "MUST", "START", "BY", "PROJECTED", "FINISH",
        "RISK",
    ]  # fmt: skip
    _, report = cohorts(config, capsys)
    assert report["capacity"]["per_day"] == 0
    assert {c["projected_finish"] for c in report["cohorts"] if c["computers"]} == {None}
    assert {c["risk"] for c in report["cohorts"] if c["computers"]} == {"critical"}
