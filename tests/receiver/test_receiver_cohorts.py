"""``vmm-cert-exporter cohorts`` against the lab: the cohorts the lab holds, then the same
after the receiver renewed one computer (renewed out of its cohort, into a new one, and the
renewal's duration measured from the journal)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vmm_cert_exporter.cli import main
from vmm_cert_exporter.cohorts import minute_utc
from vmm_cert_exporter.collection import Refresher
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.metrics import SnapshotCollector
from vmm_cert_exporter.receiver.service import Receiver, start_receiver
from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import lab_host
from vmm_cert_lab.promstack import Promtool
from vmm_cert_lab.receiver_testing import Harness, alert, auth, http, payload, receiver_config

HEALTHY = Faults().to_dict()


def lab_cohorts(harness: Harness) -> Counter[str]:
    """Computers per NotAfter day, as the lab holds them, of those the exporter can read."""
    days: Counter[str] = Counter()
    for computer in harness.lab.model.list_computers():
        faults = harness.describe(computer["fqdn"])["faults"]
        # a fault switched on; the listener's auth policy is a setting, not a fault
        unreadable = any(v != HEALTHY[k] for k, v in faults.items() if k != "language_mode")
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

    host = lab_host("hv36")
    day = harness.describe(host)["not_after"][:10]
    # the renewal takes 4 minutes on the receiver's clock (registering runs on the VMM server)
    vmm = lab_host("vmm01")
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
    assert cap["measured_seconds_by_procedure"] == {"remove-register": 240.0}
    # as the receiver: the measured procedure's median and the assumed 300 s of the one not
    # measured yet (the VMM server's), weighted by the computers left to renew with each
    left = cap["left_by_procedure"]
    assert (
        set(left) == {"remove-register", "update-vmm-certificate"}
        and left["update-vmm-certificate"]
    )
    weighted = (240.0 * left["remove-register"] + 300.0 * left["update-vmm-certificate"]) / sum(
        left.values()
    )
    assert cap["renewal_seconds"] == round(weighted, 1)
    assert cap["measured_per_day"] == cap["per_day"] == round(2 * 86400 / weighted, 1)
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


def test_the_exporter_publishes_the_same_cohorts(
    harness_factory: Callable[..., Harness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    promtool: Promtool,
) -> None:
    """vmm_cert_cohort_* on /metrics (promtool-valid) hold what `cohorts` prints."""
    harness = harness_factory()
    config = tmp_path / "receiver0" / "receiver.yml"
    _, report = cohorts(config, capsys)
    refresher = Refresher(load_config(config))
    refresher.refresh_once()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: refresher.snapshot))
    text = generate_latest(registry).decode()
    assert promtool.check_metrics(text).returncode == 0
    computers: dict[str, dict[str, int]] = {}
    expiry: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vmm_cert_cohort_computers":
                by_role = computers.setdefault(sample.labels["cohort"], {})
                by_role[sample.labels["role"]] = int(sample.value)
            elif sample.name == "vmm_cert_cohort_expiry_timestamp_seconds":
                expiry[sample.labels["cohort"]] = minute_utc(sample.value) or ""
    assert computers == {c["day"]: c["by_role"] for c in report["cohorts"]}
    assert expiry == {c["day"]: c["expires_at"] for c in report["cohorts"]}
    assert sum(map(sum, (r.values() for r in computers.values()))) == sum(
        lab_cohorts(harness).values()
    )


_CAPACITY_FAMILIES = (
    "vmm_renewal_capacity_per_day",
    "vmm_renewal_duration_seconds",
    "vmm_renewal_cohort_margin_seconds",
)


def receiver_samples(
    receiver: Receiver, promtool: Promtool, families: tuple[str, ...] = _CAPACITY_FAMILIES
) -> dict[str, float]:
    """``name/label value`` -> value for the samples of ``families`` on /metrics."""
    status, text = http("GET", receiver.url + "/metrics")
    assert status == 200 and isinstance(text, str)
    assert promtool.check_metrics(text).returncode == 0
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in families:
                label = sample.labels.get("duration_source") or sample.labels.get("cohort")
                out[sample.name + (f"/{label}" if label else "")] = sample.value
    return out


def test_the_receiver_publishes_its_capacity(
    lab: RunningLab, tmp_path: Path, promtool: Promtool
) -> None:
    hour = datetime.now(UTC).hour  # a 4-hour window open now, so the renewal below may run
    config = receiver_config(
        lab,
        tmp_path,
        max_concurrent=2,
        max_concurrent_per_vmm_server=2,
        maintenance_windows=[{"start": f"{hour:02d}:00", "end": f"{(hour + 4) % 24:02d}:00"}],
        assumed_renewal_duration="5m",
        cohort_margin="10d",
    )
    receiver = start_receiver(config, background=False)
    try:
        receiver.inventory.refresh()
        # before any renewal: the assumed 5 minutes, 2 at once, 4 hours a night
        assert receiver_samples(receiver, promtool) == {
            "vmm_renewal_capacity_per_day/assumed": 96.0,
            "vmm_renewal_duration_seconds/assumed": 300.0,
            "vmm_renewal_cohort_margin_seconds": 864000.0,
        }
        status, _ = http("POST", receiver.url + "/api/pause", headers=auth())
        assert status == 200
        assert receiver_samples(receiver, promtool)["vmm_renewal_capacity_per_day/assumed"] == 0
        http("POST", receiver.url + "/api/resume", headers=auth())
        # one renewal
        status, answer = http(
            "POST",
            receiver.url + "/alertmanager",
            json.dumps(payload(alert(lab_host("hv36")))).encode(),
            auth(),
        )
        assert status == 200, answer
        receiver.engine.tick(wait=True)
        job = receiver.journal.get(answer["alerts"][0]["job_id"])
        assert job is not None and job.status == "succeeded", job
        # measured now: what the attempt took by the journal (under a second counts as one)
        (attempt,) = receiver.journal.attempts(job.id)
        assert attempt.finished_at is not None
        took = max(1.0, attempt.finished_at - attempt.started_at)
        # per procedure, weighted by what the census has left to renew: procedure 1
        # measured, the VMM server's procedure 2 still at the assumed 5 minutes
        mix = receiver.app._procedure_mix()
        assert set(mix) == {"remove-register", "update-vmm-certificate"}, mix
        duration = (mix["remove-register"] * took + mix["update-vmm-certificate"] * 300) / sum(
            mix.values()
        )
        samples = receiver_samples(receiver, promtool)
        assert samples["vmm_renewal_duration_seconds/measured"] == pytest.approx(duration)
        assert samples["vmm_renewal_capacity_per_day/measured"] == pytest.approx(
            2 * 240 * 60 / duration
        )
    finally:
        receiver.stop()


def census_days(lab: RunningLab) -> Counter[str]:
    """Computers per NotAfter day as the census reads them: VMM's TrustedPeople copy, or a
    VMM server's own certificate when VMM keeps no copy of it."""
    days: Counter[str] = Counter()
    for computer in lab.model.list_computers():
        described = lab.model.describe(computer["fqdn"])
        if described["trusted"] is not None:
            days[described["trusted"]["not_after"][:10]] += 1
        elif "vmm" in described and computer["not_after"]:
            days[computer["not_after"][:10]] += 1
    return days


_COHORT_FAMILIES = (
    "vmm_renewal_cohort_computers_left",
    "vmm_renewal_cohort_projected_finish_timestamp_seconds",
    "vmm_renewal_cohort_must_start_by_timestamp_seconds",
)


def test_the_receiver_publishes_its_upcoming_cohorts(
    lab: RunningLab, tmp_path: Path, promtool: Promtool
) -> None:
    """The census (VMM's TrustedPeople, the VMM server read itself) holds what the lab holds;
    each upcoming cohort is published with what is left and its projection, which moves when
    a computer is renewed out of it."""
    config = receiver_config(lab, tmp_path, max_concurrent=2, max_concurrent_per_vmm_server=2)
    receiver = start_receiver(config, background=False)
    try:
        receiver.inventory.refresh()
        now = time.time()
        expected = {
            day: n
            for day, n in census_days(lab).items()
            if datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 86400 > now
        }
        samples = receiver_samples(receiver, promtool, _COHORT_FAMILIES)
        left = {
            k.split("/")[1]: int(v)
            for k, v in samples.items()
            if k.startswith("vmm_renewal_cohort_computers_left/")
        }
        assert left == expected
        projections = {p.cohort.day.isoformat(): p for p in receiver.app.projections()}
        assert set(projections) == set(left)
        for day, p in projections.items():
            # projected from "now" at each call: the scrape came a moment earlier
            assert samples[
                f"vmm_renewal_cohort_projected_finish_timestamp_seconds/{day}"
            ] == pytest.approx(p.finish, abs=60)
            assert samples[f"vmm_renewal_cohort_must_start_by_timestamp_seconds/{day}"] == (
                p.must_start_by
            )
        host = lab_host("hv36")
        day = lab.model.describe(host)["not_after"][:10]
        status, answer = http(
            "POST",
            receiver.url + "/alertmanager",
            json.dumps(payload(alert(host))).encode(),
            auth(),
        )
        assert status == 200, answer
        receiver.engine.tick(wait=True)
        receiver.inventory.refresh()
        after = receiver_samples(receiver, promtool, _COHORT_FAMILIES)
        assert after.get(f"vmm_renewal_cohort_computers_left/{day}", 0) == left[day] - 1
    finally:
        receiver.stop()
