"""The alerting rules: generator, shipped files, and the real ``promtool`` on every test file.

Besides running the shipped unit tests, these tests prove the unit tests can fail: a wrong
expectation, naive (un-held) expressions and shorter ``for:`` durations each make promtool
report a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmm_cert_exporter import rules
from vmm_cert_lab.promstack import Promtool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILE = ALERTS / "vmm-certificates.rules.yml"
MANIFEST = ALERTS / "kubernetes" / "vmm-certificates.prometheusrule.yaml"
TEST_FILES = sorted((ALERTS / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"

# The contract of the issue: alert name -> severity.
CONTRACT = {
    "VMMCertificateExpiringSoon": "warning",
    "VMMCertificateExpiringCritical": "critical",
    "VMMCertificateExpired": "critical",
    "VMMCertificateMissing": "critical",
    "VMMCertificateNotTrusted": "critical",
    "VMMCertificateDuplicate": "warning",
    "VMMCertificateCollectionFailing": "warning",
    "VMMCertificateExporterDown": "critical",
    "VMMCertificateExporterStale": "warning",
    "VMMCertificateRenewalFailed": "warning",
    "VMMCertificateCohortAtRisk": "warning",
}
# alerts that are also a second rule of the same name at this severity
ALSO = {"VMMCertificateCohortAtRisk": "critical"}
PER_HOST = set(CONTRACT) - {
    "VMMCertificateExporterDown",
    "VMMCertificateExporterStale",
    "VMMCertificateCohortAtRisk",  # per cohort
}


def all_rules(text: str) -> list[dict[str, Any]]:
    data = yaml.safe_load(text)
    groups = data["spec"]["groups"] if "spec" in data else data["groups"]
    return [r for g in groups for r in g["rules"]]


def copy_test(tmp_path: Path, test_file: Path, rule_text: str, edit: str = "") -> Path:
    """Copy a unit-test file next to ``rule_text`` (as the rule file it loads)."""
    (tmp_path / "rules.yml").write_text(rule_text)
    text = test_file.read_text().replace("../vmm-certificates.rules.yml", "rules.yml")
    assert "rules.yml" in text
    if edit:
        old, new = edit.split(" => ")
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
    dest = tmp_path / test_file.name
    dest.write_text(text)
    return dest


# ---- the shipped unit tests --------------------------------------------------------------


def test_there_are_unit_test_files() -> None:
    names = {p.name for p in TEST_FILES}
    assert {
        "expiry.test.yml",
        "store.test.yml",
        "collection.test.yml",
        "restart.test.yml",
        "stale.test.yml",
    } <= names


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path, promtool: Promtool) -> None:
    # the timeout only guards against a hang: cohort.test.yml evaluates every rule for eight
    # days of minutes (the 7-day margin's boundaries), ~45 s of CPU, more on a busy machine
    res = promtool.run("test", "rules", test_file.name, cwd=test_file.parent, timeout=600)
    assert res.returncode == 0, res.stdout
    assert "SUCCESS" in res.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test_file in TEST_FILES:
        for group in yaml.safe_load(test_file.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert firing == set(CONTRACT)
    assert silent == set(CONTRACT)


def test_shipped_rules_pass_promtool_lint(promtool: Promtool) -> None:
    res = promtool.run("check", "rules", "--lint=all", "--lint-fatal", str(RULE_FILE))
    assert res.returncode == 0, res.stdout
    assert f"SUCCESS: {len(CONTRACT) + len(ALSO)} rules found" in res.stdout


# ---- proof that the unit tests can fail --------------------------------------------------


def test_a_wrong_expectation_makes_promtool_fail(tmp_path: Path, promtool: Promtool) -> None:
    # claim the wrong time left for the certificate 7 days and 1 second from expiry
    dest = copy_test(
        tmp_path,
        ALERTS / "tests" / "expiry.test.yml",
        RULE_FILE.read_text(),
        edit="expires in 7d 0h 0m 1s => expires in 7d 0h 0m 2s",
    )
    res = promtool.run("test", "rules", dest.name, cwd=tmp_path)
    assert res.returncode == 1, res.stdout
    assert "FAILED" in res.stdout and "hv7d1s.corp.example" in res.stdout


def test_a_boundary_off_by_one_second_makes_promtool_fail(
    tmp_path: Path, promtool: Promtool
) -> None:
    # a rule that used < instead of <= would miss the certificate at exactly 30 days
    text = RULE_FILE.read_text().replace("<= 2592000", "< 2592000")
    assert text != RULE_FILE.read_text()
    dest = copy_test(tmp_path, ALERTS / "tests" / "expiry.test.yml", text)
    res = promtool.run("test", "rules", dest.name, cwd=tmp_path)
    assert res.returncode == 1
    assert "hv30d.corp.example" in res.stdout


def naive_rules() -> str:
    """The rules without held values: what a first attempt would write."""
    groups = rules.rule_groups()
    for group in groups:
        for rule in group["rules"]:
            for metric in (
                "vmm_cert_expiry_seconds",
                "vmm_cert_present",
                "vmm_cert_trusted",
                "vmm_cert_certificates",
            ):
                rule["expr"] = rule["expr"].replace(rules.held(metric), metric)
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


def test_naive_expressions_flap_across_a_restart(tmp_path: Path, promtool: Promtool) -> None:
    dest = copy_test(tmp_path, ALERTS / "tests" / "restart.test.yml", naive_rules())
    assert promtool.run("check", "rules", "rules.yml", cwd=tmp_path).returncode == 0
    res = promtool.run("test", "rules", dest.name, cwd=tmp_path)
    assert res.returncode == 1
    # resolved during the gap, and the pending Missing lost its for: clock
    assert "alertname: VMMCertificateExpiringSoon, time: 1h12m" in res.stdout
    assert "alertname: VMMCertificateMissing, time: 1h15m" in res.stdout


@pytest.mark.parametrize(
    ("alert", "duration", "test_name", "symptom"),
    [
        # an exporter restart (3 failed scrapes) would page
        ("VMMCertificateExporterDown", "2m", "restart.test.yml", "VMMCertificateExporterDown"),
        # one wrong read during a renewal (one 15m refresh) would page
        ("VMMCertificateMissing", "10m", "store.test.yml", "hv-renewing.corp.example"),
        ("VMMCertificateNotTrusted", "10m", "store.test.yml", "hv-renewing.corp.example"),
        ("VMMCertificateDuplicate", "10m", "store.test.yml", "hv-renewing.corp.example"),
        # the first refresh after an exporter restart (10 minutes at scale) would warn
        ("VMMCertificateExporterStale", "5m", "stale.test.yml", "ExporterStale, time: 1h11m"),
    ],
)
def test_shorter_for_durations_fail_the_unit_tests(
    tmp_path: Path, alert: str, duration: str, test_name: str, symptom: str, promtool: Promtool
) -> None:
    text = rules.render_rules(for_durations={alert: duration})
    dest = copy_test(tmp_path, ALERTS / "tests" / test_name, text)
    res = promtool.run("test", "rules", dest.name, cwd=tmp_path)
    assert res.returncode == 1, res.stdout
    assert symptom in res.stdout


# ---- the shipped files are the generator's output ----------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "exporter")}
    return subprocess.run(
        [sys.executable, "-m", "vmm_cert_exporter", "rules", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_shipped_rule_file_is_the_default_output() -> None:
    res = cli()
    assert res.returncode == 0, res.stderr
    assert res.stdout == RULE_FILE.read_text()
    assert rules.render_rules() == RULE_FILE.read_text()


def test_shipped_manifest_is_the_kubernetes_output() -> None:
    res = cli("--format", "kubernetes")
    assert res.returncode == 0, res.stderr
    assert res.stdout == MANIFEST.read_text()
    assert rules.render_prometheus_rule() == MANIFEST.read_text()


def test_output_is_stable_and_round_trips() -> None:
    text = rules.render_rules()
    assert text == rules.render_rules()
    assert text.startswith("# Generated by `vmm-cert-exporter rules`")
    assert "Regenerate: vmm-cert-exporter rules > FILE" in text
    assert yaml.safe_load(text)["groups"] == rules.rule_groups()
    keys = [list(r) for r in all_rules(text)]
    assert all(k == ["alert", "expr", "for", "labels", "annotations"] for k in keys)


def test_manifest_holds_the_same_groups(tmp_path: Path, promtool: Promtool) -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"]
    assert manifest["spec"]["groups"] == yaml.safe_load(RULE_FILE.read_text())["groups"]
    extracted = tmp_path / "from-manifest.yml"
    extracted.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    res = promtool.run("check", "rules", str(extracted))
    assert res.returncode == 0, res.stdout


# ---- the contract: names, labels, annotations, runbooks ----------------------------------


def test_alert_names_and_severities_are_the_contract() -> None:
    found = [(r["alert"], r["labels"]["severity"]) for r in all_rules(RULE_FILE.read_text())]
    assert sorted(found) == sorted([*CONTRACT.items(), *ALSO.items()])
    assert set(rules.ALERT_NAMES) == set(CONTRACT)


@pytest.mark.parametrize("rule", all_rules(RULE_FILE.read_text()), ids=lambda r: r["alert"])
def test_every_alert_has_labels_annotations_and_a_runbook(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert set(rule["labels"]) == {"severity"}  # host comes through from the series
    ann = rule["annotations"]
    assert set(ann) == {"summary", "description", "runbook_url"}
    assert all(ann[k].strip() for k in ann)
    assert ann["runbook_url"] == f"{rules.DEFAULT_RUNBOOK_BASE_URL}{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"missing {runbook}"
    assert name in runbook.read_text()
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    if name in PER_HOST:
        assert "$labels.host" in ann["summary"] and "$labels.host" in ann["description"]
        # no aggregation may drop the host label on the way
        aggregations = re.findall(
            r"\b(?:sum|count|min|max|avg)\s*(?:by|without)?\s*\(", rule["expr"]
        )
        assert all(a.startswith("sum by (") for a in aggregations), aggregations
        assert rule["expr"].count("sum by (instance, job, host) (") == len(aggregations)
    if name.startswith("VMMCertificateExpir"):
        assert "humanizeDuration" in ann["summary"]
        assert "humanizeDuration" in ann["description"]


def test_alerts_overview_links_every_runbook() -> None:
    text = (ROOT / "docs" / "alerts.md").read_text()
    for name in CONTRACT:
        assert f"(runbooks/{name}.md)" in text
        assert rules.FOR_DURATIONS[name] in text


def test_runbook_base_url_can_be_changed() -> None:
    text = rules.render_rules(runbook_base_url="https://wiki.example.org/runbooks")
    urls = [r["annotations"]["runbook_url"] for r in all_rules(text)]
    names = [r["alert"] for r in all_rules(text)]
    assert urls == [f"https://wiki.example.org/runbooks/{n}.md" for n in names]
    assert set(names) == set(rules.ALERT_NAMES)
    assert "--runbook-base-url https://wiki.example.org/runbooks" in text.splitlines()[0]


# ---- other thresholds --------------------------------------------------------------------


def test_other_thresholds_change_only_the_numbers(tmp_path: Path, promtool: Promtool) -> None:
    text = rules.render_rules(60, 14)
    assert "<= 5184000  # 60 days" in text and "<= 1209600  # 14 days" in text
    assert "--warn-days 60 --critical-days 14" in text.splitlines()[0]
    (tmp_path / "rules.yml").write_text(text)
    res = promtool.run("check", "rules", "--lint=all", "--lint-fatal", "rules.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    # and they really fire at the new marks, to the second
    scrape = 'instance="e:9868",job="vmm-cert-exporter"'
    series = [
        {"series": f"up{{{scrape}}}", "values": "1x70"},
        {
            "series": f'vmm_cert_collect_success{{{scrape},host="a",role="hyperv_host"}}',
            "values": "1x70",
        },
    ]
    for host, left in (("a", 5184000), ("b", 5184001), ("c", 1209600), ("d", 1209601)):
        series.append(
            {
                "series": f'vmm_cert_expiry_seconds{{{scrape},host="{host}",role="hyperv_host"}}',
                "values": f"{left}x70",
            }
        )

    def firing(alert: str, host: str, severity: str, role: str = "hyperv_host") -> dict[str, Any]:
        labels = (
            f'alertname="{alert}",alertstate="firing",host="{host}",{scrape},'
            f'role="{role}",severity="{severity}"'
        )
        return {"labels": f"ALERTS{{{labels}}}", "value": 1}

    soon, crit = "VMMCertificateExpiringSoon", "VMMCertificateExpiringCritical"
    expected = [
        firing(soon, "a", "warning"),
        firing(soon, "c", "warning"),
        firing(soon, "d", "warning"),
        firing(crit, "c", "critical", role="critical"),
    ]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": "60m",
                        "exp_samples": expected,
                    }
                ],
            }
        ],
    }
    (tmp_path / "t.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    # the last expected sample has a deliberate typo (role="critical"): promtool must fail ...
    res = promtool.run("test", "rules", "t.test.yml", cwd=tmp_path)
    assert res.returncode == 1 and 'host="c"' in res.stdout
    # ... and pass once it is right
    fixed = (tmp_path / "t.test.yml").read_text().replace('role="critical"', 'role="hyperv_host"')
    (tmp_path / "t.test.yml").write_text(fixed)
    res = promtool.run("test", "rules", "t.test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize(
    ("warn", "critical", "message"),
    [
        (7, 7, "must be less than"),
        (7, 30, "must be less than"),
        (30, 0, "must be positive"),
        (-1, -5, "must be positive"),
    ],
)
def test_bad_thresholds_exit_2(
    warn: int, critical: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=message):
        rules.render_rules(warn, critical)
    args = argparse.Namespace(warn_days=warn, critical_days=critical, format="prometheus")
    assert rules.rules_command(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err


def test_bad_thresholds_exit_2_from_the_command_line() -> None:
    res = cli("--warn-days", "7", "--critical-days", "14")
    assert res.returncode == 2
    assert res.stdout == ""
    assert "--critical-days (14) must be less than --warn-days (7)" in res.stderr


def test_for_duration_overrides_are_checked() -> None:
    fast = rules.render_rules(for_durations={n: "0s" for n in rules.ALERT_NAMES})
    assert all(r["for"] == "0s" for r in all_rules(fast))
    with pytest.raises(ValueError, match="unknown alert"):
        rules.render_rules(for_durations={"VMMCertificateNope": "1m"})
    with pytest.raises(ValueError):
        rules.render_rules(for_durations={"VMMCertificateExpired": "5 minutes"})
