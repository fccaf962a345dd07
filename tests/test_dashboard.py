"""The Grafana dashboard: generated from code, every expression parsed and run by promtool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import dashboard
from vmm_cert_lab.promstack import Promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "vmm-certificates.json"
GENERATOR = ROOT / "exporter" / "tools" / "dashboard.py"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "vmm-certificates.yaml"

# The exporter's metric names (a contract: docs/metrics.md), histogram series included.
METRICS = {
    "vmm_cert_expiry_seconds",
    "vmm_cert_not_after_timestamp_seconds",
    "vmm_cert_not_before_timestamp_seconds",
    "vmm_cert_present",
    "vmm_cert_certificates",
    "vmm_cert_trusted",
    "vmm_cert_info",
    "vmm_managed_computer_state",
    "vmm_cert_collect_success",
    "vmm_cert_collect_timestamp_seconds",
    "vmm_cert_collect_duration_seconds",
    "vmm_cert_collect_errors_total",
    "vmm_cert_exporter_refresh_duration_seconds_bucket",
    "vmm_cert_exporter_refresh_duration_seconds_sum",
    "vmm_cert_exporter_refresh_duration_seconds_count",
    "vmm_cert_exporter_hosts",
    "vmm_cert_exporter_build_info",
    "vmm_cert_exporter_refresh_interval_seconds",
    "vmm_cert_exporter_last_refresh_timestamp_seconds",
    "vmm_cert_exporter_refresh_process_restarts_total",
    # the renewal receiver's own
    "vmm_renewal_jobs_total",
    "vmm_renewal_jobs_in_progress",
    "vmm_renewal_last_success_timestamp_seconds",
    "vmm_receiver_webhooks_total",
    "vmm_renewal_capacity_per_day",
    "vmm_renewal_cohort_projected_finish_timestamp_seconds",
    # cohorts, from the exporter
    "vmm_cert_cohort_computers",
    "vmm_cert_cohort_expiry_timestamp_seconds",
}


def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data["panels"] if p["type"] != "row"]


# ---- the committed file is the generator's output ----------------------------------------


def test_committed_json_is_the_generator_output() -> None:
    assert DASHBOARD.read_text() == dashboard.render_dashboard()


def test_the_script_prints_the_committed_json() -> None:
    res = subprocess.run(
        [sys.executable, str(GENERATOR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == DASHBOARD.read_text()


def test_output_is_stable_sorted_and_ends_with_a_newline() -> None:
    text = dashboard.render_dashboard()
    assert text == dashboard.render_dashboard()
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---- panels and targets ------------------------------------------------------------------


def test_every_panel_has_prometheus_targets_with_ref_ids() -> None:
    data = committed()
    assert data["uid"] == dashboard.DASHBOARD_UID
    ids = [p["id"] for p in data["panels"]]
    assert ids == list(range(1, len(ids) + 1))
    for panel in panels(data):
        targets = panel.get("targets") or []
        assert targets, panel["title"]
        ref_ids = [t.get("refId") for t in targets]
        assert all(ref_ids) and len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in targets:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert 0 <= x and x + w <= 24, panel["title"]


def by_title_of(data: dict[str, Any]) -> dict[str, Any]:
    return {p["title"]: p for p in panels(data)}


def test_the_required_panels_are_there() -> None:
    data = committed()
    titles = [p["title"] for p in panels(data)]
    stats = [p["title"] for p in panels(data) if p["type"] == "stat"]
    assert stats == [
        "Computers monitored",
        "Expiring within 30 days",
        "Within 7 days",
        "Expired",
        "Missing",
        "Not trusted",
        "Collection failing",
        "Data age",  # the Collection health row: is the exporter still refreshing?
        "Refresh process restarts",
        "Renewals running",  # the Renewals row, last
    ]
    assert "Renewal jobs finished, by procedure and result" in titles
    cohorts = by_title_of(data)["Cohorts: projected finish at the receiver's capacity"]
    cohort_exprs = [t["expr"] for t in cohorts["targets"]]
    # the one definition of a cohort, and the alert's projection
    assert cohort_exprs[0] == "sum by (cohort) (vmm_cert_cohort_computers)"
    assert all("vmm_renewal_capacity_per_day" in e for e in cohort_exprs[2:])
    by_title = {p["title"]: p for p in panels(data)}
    computers = by_title["Computers by days left"]
    assert computers["type"] == "table"
    assert computers["options"]["sortBy"] == [{"desc": False, "displayName": "Days left"}]
    days = next(
        o for o in computers["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Days left"
    )
    thresholds = next(p["value"] for p in days["properties"] if p["id"] == "thresholds")
    assert [s["value"] for s in thresholds["steps"]] == [None, 7, 30]
    calendar = by_title["Expiry calendar"]
    assert calendar["targets"][0]["expr"].startswith('count_values("not_after", ')
    assert "vmm_cert_not_after_timestamp_seconds" in calendar["targets"][0]["expr"]
    assert any(t == "Days left over time (the 25 soonest)" for t in titles)
    assert "Managed computers by VMM state" in titles
    assert "Refresh duration" in titles and "Failed calls per hour, by reason" in titles
    age = by_title["Data age"]
    assert age["targets"][0]["expr"] == "time() - vmm_cert_exporter_last_refresh_timestamp_seconds"
    assert age["fieldConfig"]["defaults"]["unit"] == "s"
    # fixed for the default 15m interval: one refresh missed, then VMMCertificateExporterStale's 3
    steps = age["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "green"),
        (1800, "orange"),
        (2700, "red"),
    ]
    assert "docs/runbooks/VMMCertificateExporterStale.md" in age["description"]
    restarts = by_title["Refresh process restarts"]
    assert restarts["targets"][0]["expr"] == (
        "sum by (instance) (increase(vmm_cert_exporter_refresh_process_restarts_total[1h]))"
    )
    exprs = " ".join(dashboard.panel_expressions(data))
    assert "histogram_quantile(" in exprs and "sum by (reason)" in exprs
    # cohorts are 1 January 00:00 UTC: a browser zone west of UTC would show 31 December
    assert data["timezone"] == "utc"


def test_other_thresholds_move_the_stats_and_colours() -> None:
    data = json.loads(dashboard.render_dashboard(45, 10))
    stats = [p["title"] for p in panels(data) if p["type"] == "stat"]
    assert "Expiring within 45 days" in stats and "Within 10 days" in stats
    exprs = dashboard.panel_expressions(data)
    assert any("<= 3888000 > 0" in e for e in exprs)
    assert any("<= 864000 > 0" in e for e in exprs)


def test_every_metric_used_is_one_the_exporter_publishes() -> None:
    text = " ".join(dashboard.panel_expressions(committed()))
    used = set(re.findall(r"\b(vmm_[a-z_]+)\b", text)) - {"vmm_server"}  # a label
    assert "vmm_server=~" in text
    assert used, "no metric found"
    assert used <= METRICS, used - METRICS


# ---- variables and provisioning ----------------------------------------------------------


def test_variables() -> None:
    variables = {v["name"]: v for v in committed()["templating"]["list"]}
    assert list(variables) == ["datasource", "vmm_server", "role", "host"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == dashboard.DATASOURCE_UID
    assert (
        variables["vmm_server"]["query"] == "label_values(vmm_managed_computer_state, vmm_server)"
    )
    assert "role" in variables["role"]["query"]
    assert '{role=~"$role"}' in variables["host"]["query"]
    for name in ("vmm_server", "role", "host"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*"
        assert v["datasource"]["uid"] == "${datasource}"


def test_provisioned_datasource_is_the_dashboards_default() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert [s["uid"] for s in prometheus] == [dashboard.DATASOURCE_UID]
    assert prometheus[0]["url"] == "http://prometheus:9090"


def test_dashboard_provider_points_at_a_directory() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert len(providers) == 1
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/vmm-cert-exporter"


# ---- panel_expressions -------------------------------------------------------------------


def test_panel_expressions_substitutes_every_variable() -> None:
    exprs = dashboard.panel_expressions(committed())
    assert len(exprs) == sum(len(p["targets"]) for p in panels(committed()))
    assert all("$" not in e and "[[" not in e for e in exprs)
    assert any('host=~".*"' in e for e in exprs)
    assert any("[5m]" in e for e in exprs)  # $__rate_interval
    # the text form works too, and substitutions can be overridden
    fast = dashboard.panel_expressions(DASHBOARD.read_text(), {"__rate_interval": "30s"})
    assert any("[30s]" in e for e in fast) and not any("[5m]" in e for e in fast)
    one = dashboard.panel_expressions(committed(), {"host": "hv01.lab.example"})
    assert any('host=~"hv01.lab.example"' in e for e in one)


def test_panel_expressions_handles_every_variable_syntax_and_refuses_unknown_ones() -> None:
    fake = {
        "panels": [
            {
                "type": "row",
                "panels": [
                    {
                        "title": "t",
                        "targets": [
                            {"refId": "A", "expr": 'a{h=~"${host:regex}"}[$__range]'},
                            {"refId": "B", "expr": 'b{h=~"[[host]]"}[$__interval]'},
                        ],
                    }
                ],
            }
        ]
    }
    assert dashboard.panel_expressions(fake) == ['a{h=~".*"}[1h]', 'b{h=~".*"}[1m]']
    with pytest.raises(KeyError, match="nope"):
        dashboard.panel_expressions({"panels": [{"targets": [{"expr": "x{a=~'$nope'}"}]}]})


# ---- every expression parsed and run by promtool -----------------------------------------


def recording_rules(exprs: list[str]) -> str:
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False)


def test_every_expression_parses(tmp_path: Path, promtool: Promtool) -> None:
    exprs = dashboard.panel_expressions(committed())
    (tmp_path / "exprs.yml").write_text(recording_rules(exprs))
    res = promtool.run("check", "rules", "exprs.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


def test_a_broken_expression_fails_the_parse(tmp_path: Path, promtool: Promtool) -> None:
    exprs = [*dashboard.panel_expressions(committed()), "sum by (reason (vmm_cert_present)"]
    (tmp_path / "exprs.yml").write_text(recording_rules(exprs))
    res = promtool.run("check", "rules", "exprs.yml", cwd=tmp_path)
    assert res.returncode == 1
    assert "dashboard:expr_" in res.stdout or "parse error" in res.stdout


SCRAPE = 'instance="exporter:9868",job="vmm-cert-exporter"'


def fleet_series() -> list[dict[str, str]]:
    """Two hours of a small fleet at a 1m scrape interval, refreshes every 15m."""
    series: list[dict[str, str]] = []

    def add(metric: str, labels: str, values: str) -> None:
        series.append({"series": f"{metric}{{{SCRAPE}{labels}}}", "values": values})

    hosts = [
        ("vmm01.lab.example", "vmm_server", 2160000, "Responding"),
        ("hv01.lab.example", "hyperv_host", 86400 * 700, "Responding"),
        ("hv36.lab.example", "hyperv_host", 432000, "Responding"),
        ("hv37.lab.example", "hyperv_host", -864000, "NotResponding"),
    ]
    for host, role, left, state in hosts:
        h = f',host="{host}",role="{role}"'
        add("vmm_cert_expiry_seconds", h, f"{left}-60x120")
        add("vmm_cert_not_after_timestamp_seconds", h, f"{1767225600 + left}x120")
        add("vmm_cert_present", h, "1x120")
        add("vmm_cert_certificates", h, "1x120")
        add("vmm_cert_trusted", h, "1x120")
        add("vmm_cert_collect_success", h, "1x120")
        add("vmm_cert_collect_timestamp_seconds", h, "0+60x120")
        add("vmm_cert_collect_duration_seconds", h, "0.05x120")
        add("vmm_cert_collect_errors_total", f'{h},reason="connect"', "0+1x120")
        add(
            "vmm_managed_computer_state",
            f'{h},state="{state}",vmm_server="vmm01.lab.example"',
            "1x120",
        )
    # a static host that no VMM server reports: the dashboard must still show it
    add("vmm_cert_collect_success", ',host="hv99.corp.example",role="other"', "0x120")
    for le, per_min in (("1", "0"), ("5", "1"), ("+Inf", "1")):
        add("vmm_cert_exporter_refresh_duration_seconds_bucket", f',le="{le}"', f"0+{per_min}x120")
    add("vmm_cert_exporter_refresh_duration_seconds_sum", "", "0+3x120")
    add("vmm_cert_exporter_refresh_duration_seconds_count", "", "0+1x120")
    add("vmm_cert_exporter_refresh_interval_seconds", "", "900x120")
    # a refresh finishes every 15m; the refresh process died once, at 100m
    add(
        "vmm_cert_exporter_last_refresh_timestamp_seconds",
        "",
        " ".join(f"{900 * k}x14" for k in range(8)) + " 7200",
    )
    add("vmm_cert_exporter_refresh_process_restarts_total", "", "0x100 1x20")
    add("up", "", "1x120")
    add("vmm_cert_cohort_computers", ',cohort="2028-01-01",role="hyperv_host"', "2000x120")
    add("vmm_cert_cohort_expiry_timestamp_seconds", ',cohort="2028-01-01"', "1830297600x120")
    # the renewal receiver, scraped as another job
    receiver = 'instance="r:9869",job="vmm-cert-receiver"'
    series.append({"series": f"vmm_renewal_jobs_in_progress{{{receiver}}}", "values": "1x120"})
    series.append(
        {
            "series": f'vmm_renewal_capacity_per_day{{{receiver},duration_source="assumed"}}',
            "values": "96x120",
        }
    )
    series.append(
        {
            "series": "vmm_renewal_jobs_total"
            f'{{{receiver},procedure="remove-register",result="succeeded"}}',
            "values": "0+1x120",
        }
    )
    series.append(
        {
            "series": "vmm_renewal_last_success_timestamp_seconds"
            f'{{{receiver},host="hv36.lab.example"}}',
            "values": "1767225600x120",
        }
    )
    series.append(
        {
            "series": f'vmm_receiver_webhooks_total{{{receiver},outcome="accepted"}}',
            "values": "0+1x120",
        }
    )
    return series


def test_the_cohorts_finish_is_the_receivers_projection_else_the_per_day_estimate(
    tmp_path: Path, promtool: Promtool
) -> None:
    """As VMMCertificateCohortAtRisk: the receiver's projected finish where it publishes one,
    else the computers left at its capacity per day (2,000 at 96 a day, from 120m)."""
    cohorts = by_title_of(committed())["Cohorts: projected finish at the receiver's capacity"]
    exprs = {t["refId"]: t["expr"] for t in cohorts["targets"]}
    expiry = 1830297600.0
    estimate = 7200 + 86400 * 2000 / 96
    projected = expiry - 3 * 86400  # three days to spare, by the receiver's own walk
    receiver = 'instance="r:9869",job="vmm-cert-receiver"'
    projection = {
        "series": "vmm_renewal_cohort_projected_finish_timestamp_seconds"
        f'{{{receiver},cohort="2028-01-01"}}',
        "values": f"{projected:.0f}x120",
    }

    def case(ref: str, value: float) -> dict[str, Any]:
        sample = {"labels": '{cohort="2028-01-01"}', "value": value}
        return {"expr": exprs[ref], "eval_time": "120m", "exp_samples": [sample]}

    tests = [
        {
            "interval": "1m",
            "input_series": fleet_series(),
            "promql_expr_test": [
                case("C", 1000 * estimate),
                case("D", (expiry - estimate) / 86400),
            ],
        },
        {
            "interval": "1m",
            "input_series": [*fleet_series(), projection],
            "promql_expr_test": [case("C", 1000 * projected), case("D", 3.0)],
        },
    ]
    (tmp_path / "finish.test.yml").write_text(
        yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    res = promtool.run("test", "rules", "finish.test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout


def test_every_expression_returns_data_for_a_small_fleet(
    tmp_path: Path, promtool: Promtool
) -> None:
    """Each panel expression wrapped in absent(): an alert means the panel would be empty."""
    exprs = dashboard.panel_expressions(committed())
    alerts = [{"alert": f"Empty{i}", "expr": f"absent({e})"} for i, e in enumerate(exprs)]
    (tmp_path / "empty.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "empty", "rules": alerts}]}, sort_keys=False)
    )
    cases = [{"eval_time": "120m", "alertname": a["alert"], "exp_alerts": []} for a in alerts]

    def run_with(series: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
        test = {
            "rule_files": ["empty.yml"],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
        }
        (tmp_path / "empty.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
        return promtool.run("test", "rules", "empty.test.yml", cwd=tmp_path)

    res = run_with(fleet_series())
    assert res.returncode == 0, "\n".join(
        [res.stdout, *(f"Empty{i}: {e}" for i, e in enumerate(exprs))]
    )

    # the same check sees an empty panel: drop the VMM state series
    res = run_with(
        [s for s in fleet_series() if not s["series"].startswith("vmm_managed_computer_state")]
    )
    assert res.returncode == 1
    assert "alertname: Empty" in res.stdout


def test_the_scope_keeps_static_hosts_and_filters_by_vmm_server(
    tmp_path: Path, promtool: Promtool
) -> None:
    """$vmm_server keeps the computers it manages plus those no VMM server reports."""
    exprs = dashboard.panel_expressions(committed(), {"vmm_server": "vmm02.lab.example"})
    monitored = exprs[0]
    assert monitored.startswith("count((vmm_cert_collect_success")
    (tmp_path / "empty.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "vector(1)"}]}]})
    )
    test = {
        "rule_files": ["empty.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": fleet_series(),
                "promql_expr_test": [
                    # vmm02 manages none of them: only the static host hv99 is left
                    {
                        "expr": monitored,
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                    {
                        "expr": dashboard.panel_expressions(committed())[0],
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 5}],
                    },
                ],
            }
        ],
    }
    (tmp_path / "scope.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = promtool.run("test", "rules", "scope.test.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout
