"""The Grafana dashboard, built from code with ``grafana-foundation-sdk`` (pinned ``==0.0.21``).

A generator, not part of the product: it runs from the repository (the SDK comes with the
test extra). Regenerate the committed JSON with ``make dashboard``, which runs::

    .venv/bin/python exporter/tools/dashboard.py > grafana/dashboards/vmm-certificates.json

(a test checks the committed file is byte-identical to :func:`render_dashboard`).
:func:`panel_expressions` returns every panel's PromQL with Grafana's variables substituted,
so tests can parse each one with promtool and run it against a real Prometheus.

Filters: ``$role`` and ``$host`` apply to every certificate panel; ``$vmm_server`` keeps the
computers the chosen VMM server(s) manage *plus* every computer no VMM server reports (static
``hosts:`` of the configuration), so a static host never silently disappears from the view.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

# The SDK warns that its v2 dashboard schema is preferred; Grafana's file provisioning loads
# the classic JSON this module writes, so the classic builders are the right ones here.
_SDK_WARNING = "Prefer using dashboardv2.Dashboard instead."
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_SDK_WARNING, category=DeprecationWarning)
    from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus as prom
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = [
    "DASHBOARD_UID",
    "DATASOURCE_UID",
    "DEFAULT_SUBSTITUTIONS",
    "build_dashboard",
    "main",
    "panel_expressions",
    "panel_targets",
    "render_dashboard",
]

DASHBOARD_UID = "vmm-cert-exporter"
# The uid of the Prometheus datasource in grafana/provisioning/datasources/prometheus.yaml;
# the datasource variable defaults to it.
DATASOURCE_UID = "vmm-cert-prometheus"
_DAY = 86400

_DS = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters every per-computer selector carries.
_FILTER = 'role=~"$role", host=~"$host"'
# The computers in scope for $vmm_server: managed by it, or by no VMM server at all.
_SCOPE = (
    '(vmm_managed_computer_state{vmm_server=~"$vmm_server"}'
    " or on (instance, job, host)"
    " (vmm_cert_collect_success unless on (instance, job, host) vmm_managed_computer_state))"
)


def _scoped(metric: str) -> str:
    """``metric`` for the computers the dashboard's variables select."""
    return f"({metric}{{{_FILTER}}} and on (instance, job, host) {_SCOPE})"


def _vmm_state(extra: str = "") -> str:
    return f'vmm_managed_computer_state{{vmm_server=~"$vmm_server", {_FILTER}{extra}}}'


def _query(expr: str, ref_id: str, legend: str = "", *, table_format: bool = False) -> Any:
    q = prom.Dataquery().expr(expr).ref_id(ref_id).datasource(_DS)
    if legend:
        q = q.legend_format(legend)
    if table_format:
        q = q.format(PromQueryFormat.TABLE).instant()
    return q


def _instant(expr: str, ref_id: str, legend: str = "") -> Any:
    q = prom.Dataquery().expr(expr).ref_id(ref_id).datasource(_DS).instant()
    if legend:
        q = q.legend_format(legend)
    return q


def _steps(*steps: tuple[float | None, str]) -> Any:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def _days_thresholds(warn_days: int, critical_days: int) -> Any:
    return _steps((None, "red"), (critical_days, "orange"), (warn_days, "green"))


def _yes_no(yes: str, no: str) -> list[Any]:
    return [
        model.ValueMap(
            options={
                "1": model.ValueMappingResult(text=yes, color="green", index=0),
                "0": model.ValueMappingResult(text=no, color="red", index=1),
            }
        )
    ]


def _prop(key: str, value: object) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val=key, value=value)


def _transform(kind: str, options: object) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val=kind, options=options)


def _stat(title: str, description: str, expr: str, width: int, color: str) -> Any:
    """A stat that counts computers: 0 is green, anything else ``color``."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_DS)
        .with_target(_instant(f"{expr} or vector(0)", "A"))
        .height(4)
        .span(width)
        .unit("none")
        .decimals(0)
        .thresholds(_steps((None, "green"), (1, color)))
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _overview(warn_days: int, critical_days: int) -> list[Any]:
    warn_s, crit_s = warn_days * _DAY, critical_days * _DAY
    expiry = _scoped("vmm_cert_expiry_seconds")
    return [
        _stat(
            "Computers monitored",
            "Computers in the exporter's inventory (VMM discovery plus static hosts).",
            f"count({_scoped('vmm_cert_collect_success')})",
            3,
            "blue",
        ).thresholds(_steps((None, "blue"))),
        _stat(
            f"Expiring within {warn_days} days",
            f"Certificates with 0 < time left <= {warn_days} days (VMM's warning 20583 mark), "
            "including those within the critical mark.",
            f"count({expiry} <= {warn_s} > 0)",
            3,
            "orange",
        ),
        _stat(
            f"Within {critical_days} days",
            f"Certificates with 0 < time left <= {critical_days} days.",
            f"count({expiry} <= {crit_s} > 0)",
            3,
            "red",
        ),
        _stat(
            "Expired",
            "Certificates past NotAfter: VMM can no longer manage these computers.",
            f"count({expiry} <= 0)",
            3,
            "red",
        ),
        _stat(
            "Missing",
            "Stores that were read and hold no SCVMM certificate.",
            f"count({_scoped('vmm_cert_present')} == 0)",
            4,
            "red",
        ),
        _stat(
            "Not trusted",
            "Computers whose certificate differs from VMM's TrustedPeople copy.",
            f"count({_scoped('vmm_cert_trusted')} == 0)",
            4,
            "red",
        ),
        _stat(
            "Collection failing",
            "Computers whose last read failed (the alert waits for 3 refresh intervals).",
            f"count({_scoped('vmm_cert_collect_success')} == 0)",
            4,
            "orange",
        ),
    ]


def _computers_table(warn_days: int, critical_days: int) -> Any:
    columns = [
        # ref_id, expression, column title
        ("A", f"{_scoped('vmm_cert_expiry_seconds')} / {_DAY}", "Days left"),
        ("B", f"{_scoped('vmm_cert_not_after_timestamp_seconds')} * 1000", "NotAfter"),
        ("C", _scoped("vmm_cert_present"), "Certificate"),
        ("D", _scoped("vmm_cert_trusted"), "Trusted by VMM"),
        ("E", _scoped("vmm_cert_certificates"), "Certificates"),
        ("F", _scoped("vmm_cert_collect_success"), "Last read"),
        ("G", f"time() - {_scoped('vmm_cert_collect_timestamp_seconds')}", "Since last success"),
    ]
    panel = (
        table.Panel()
        .title("Computers by days left")
        .description(
            "Every computer, soonest expiry first; red within "
            f"{critical_days} days (or expired), orange within {warn_days} days. An empty "
            "'Days left' means no certificate, or a store never read."
        )
        .datasource(_DS)
        .targets([_query(expr, ref, table_format=True) for ref, expr, _ in columns])
        .height(12)
        .span(24)
        .with_transformation(_transform("merge", {}))
        .with_transformation(
            _transform(
                "organize",
                {
                    "excludeByName": {"Time": True, "instance": True, "job": True},
                    "indexByName": {
                        "host": 0,
                        "role": 1,
                        **{f"Value #{ref}": i + 2 for i, (ref, _, _) in enumerate(columns)},
                    },
                    "renameByName": {
                        "host": "Computer",
                        "role": "Role",
                        **{f"Value #{ref}": title for ref, _, title in columns},
                    },
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Days left").desc(False)])
        .override_by_name(
            "Days left",
            [
                _prop("decimals", 1),
                _prop("thresholds", _days_thresholds(warn_days, critical_days).build()),
                _prop("color", {"mode": "thresholds"}),
                _prop("custom.cellOptions", {"type": "color-background"}),
            ],
        )
        .override_by_name("NotAfter", [_prop("unit", "dateTimeAsIso")])
        .override_by_name(
            "Certificate",
            [
                _prop("mappings", _yes_no("present", "MISSING")),
                _prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .override_by_name(
            "Trusted by VMM",
            [
                _prop("mappings", _yes_no("yes", "MISMATCH")),
                _prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .override_by_name(
            "Certificates",
            [
                _prop("thresholds", _steps((None, "red"), (1, "green"), (2, "orange")).build()),
                _prop("color", {"mode": "thresholds"}),
                _prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .override_by_name(
            "Last read",
            [
                _prop("mappings", _yes_no("ok", "FAILED")),
                _prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
        .override_by_name("Since last success", [_prop("unit", "s")])
    )
    return panel


def _calendar() -> Any:
    expr = f'count_values("not_after", {_scoped("vmm_cert_not_after_timestamp_seconds")} * 1000)'
    return (
        table.Panel()
        .title("Expiry calendar")
        .description(
            "Computers per NotAfter date. Every computer added to VMM in the same year expires "
            "on the same 1 January: each cohort is one row."
        )
        .datasource(_DS)
        .with_target(_query(expr, "A", table_format=True))
        .height(10)
        .span(9)
        .with_transformation(
            _transform(
                "convertFieldType",
                {"conversions": [{"targetField": "not_after", "destinationType": "number"}]},
            )
        )
        .with_transformation(
            _transform(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "indexByName": {"not_after": 0, "Value": 1},
                    "renameByName": {"not_after": "NotAfter", "Value": "Computers"},
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("NotAfter").desc(False)])
        .override_by_name("NotAfter", [_prop("unit", "time:YYYY-MM-DD")])
        .override_by_name(
            "Computers",
            [
                _prop("custom.cellOptions", {"type": "gauge", "mode": "basic"}),
                _prop("color", {"mode": "fixed", "fixedColor": "blue"}),
                _prop("decimals", 0),
            ],
        )
    )


def _days_left_over_time(warn_days: int, critical_days: int) -> Any:
    return (
        timeseries.Panel()
        .title("Days left over time (the 25 soonest)")
        .description("Days until NotAfter; a renewal shows as a jump up.")
        .datasource(_DS)
        .with_target(
            _query(
                f"bottomk(25, {_scoped('vmm_cert_expiry_seconds')} / {_DAY})",
                "A",
                "{{host}}",
            )
        )
        .height(10)
        .span(15)
        .unit("none")
        .decimals(1)
        .axis_label("days left")
        .thresholds(_days_thresholds(warn_days, critical_days))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.LINE_AND_AREA
            )
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
        )
    )


def _vmm_panels() -> list[Any]:
    by_state = (
        bargauge.Panel()
        .title("Managed computers by VMM state")
        .description("VMM's own view (Get-SCVMMManagedComputer): Responding, NotResponding, ...")
        .datasource(_DS)
        .with_target(_instant(f"count by (state) ({_vmm_state()})", "A", "{{state}}"))
        .height(8)
        .span(8)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .unit("none")
        .decimals(0)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
    )
    over_time = (
        timeseries.Panel()
        .title("VMM states over time")
        .datasource(_DS)
        .with_target(_query(f"count by (state) ({_vmm_state()})", "A", "{{state}}"))
        .height(8)
        .span(8)
        .unit("none")
        .decimals(0)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .fill_opacity(30)
    )
    not_responding = (
        table.Panel()
        .title("Computers VMM does not see as Responding")
        .description(
            "Needs Attention / Access Denied / Not Responding in the VMM console: an expired, "
            "deleted or mismatched certificate is one cause."
        )
        .datasource(_DS)
        .with_target(_query(_vmm_state(', state!="Responding"'), "A", table_format=True))
        .height(8)
        .span(8)
        .with_transformation(
            _transform(
                "organize",
                {
                    "excludeByName": {
                        "Time": True,
                        "Value": True,
                        "__name__": True,
                        "instance": True,
                        "job": True,
                    },
                    "indexByName": {"host": 0, "state": 1, "role": 2, "vmm_server": 3},
                    "renameByName": {
                        "host": "Computer",
                        "state": "VMM state",
                        "role": "Role",
                        "vmm_server": "VMM server",
                    },
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Computer").desc(False)])
    )
    return [by_state, over_time, not_responding]


def _histogram(quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le, instance) "
        "(rate(vmm_cert_exporter_refresh_duration_seconds_bucket[$__rate_interval])))"
    )


def _exporter_stat(title: str, description: str, expr: str, unit: str, thresholds: Any) -> Any:
    """A stat about the exporter itself: one value per exporter instance."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(_DS)
        .with_target(_instant(expr, "A", "{{instance}}"))
        .height(4)
        .span(12)
        .unit(unit)
        .thresholds(thresholds)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _freshness_panels() -> list[Any]:
    """Is the exporter still refreshing? (VMMCertificateExporterStale)"""
    age = _exporter_stat(
        "Data age",
        "Time since the exporter's last complete refresh finished, per exporter instance: how "
        "old the data it serves is. Refreshes start every refresh interval, so it stays below "
        "one interval while they keep finishing. Grafana thresholds cannot follow "
        "vmm_cert_exporter_refresh_interval_seconds, so they are fixed for the default 15m "
        "interval: orange from 30m (a refresh missed), red from 45m (3 intervals, the "
        "condition of VMMCertificateExporterStale, which fires 15m later). Decades mean no "
        "refresh has finished since the exporter started (the timestamp is 0). The runbook of "
        "VMMCertificateExporterStale (docs/runbooks/VMMCertificateExporterStale.md) says what "
        "to do.",
        "time() - vmm_cert_exporter_last_refresh_timestamp_seconds",
        "s",
        _steps((None, "green"), (1800, "orange"), (2700, "red")),
    )
    restarts = _exporter_stat(
        "Refresh process restarts",
        "Times in the last hour the refresh process (serve refreshes in a child process) died "
        "and was started again, per exporter instance; always 0 when the refresh runs "
        "in-process. The exporter keeps serving its last snapshot meanwhile: restarts that "
        "keep coming let the data age grow until VMMCertificateExporterStale fires.",
        "sum by (instance) (increase(vmm_cert_exporter_refresh_process_restarts_total[1h]))",
        "none",
        _steps((None, "green"), (1, "orange")),
    ).decimals(0)
    return [age, restarts]


def _collection_panels() -> list[Any]:
    refresh = (
        timeseries.Panel()
        .title("Refresh duration")
        .description(
            "Complete refreshes (discovery and every computer), from the exporter's histogram. "
            "The panel's minimum interval (15m, the default refresh interval) keeps at least "
            "one refresh in every rate window."
        )
        .datasource(_DS)
        .interval("15m")
        .targets(
            [
                _query(_histogram(0.5), "A", "p50 {{instance}}"),
                _query(_histogram(0.95), "B", "p95 {{instance}}"),
                _query(
                    "sum by (instance) "
                    "(rate(vmm_cert_exporter_refresh_duration_seconds_sum[$__rate_interval]))"
                    " / sum by (instance) "
                    "(rate(vmm_cert_exporter_refresh_duration_seconds_count[$__rate_interval]))",
                    "C",
                    "mean {{instance}}",
                ),
            ]
        )
        .height(8)
        .span(8)
        .unit("s")
    )
    errors = (
        timeseries.Panel()
        .title("Failed calls per hour, by reason")
        .description(
            "connect, timeout, auth, tls, wsman_fault, script, parse: the runbook of "
            "VMMCertificateCollectionFailing says where to look for each."
        )
        .datasource(_DS)
        .interval("15m")
        .with_target(
            _query(
                "3600 * sum by (reason) ("
                f"rate(vmm_cert_collect_errors_total{{{_FILTER}}}[$__rate_interval])"
                f" and on (instance, job, host) {_SCOPE})",
                "A",
                "{{reason}}",
            )
        )
        .height(8)
        .span(8)
        .unit("none")
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    )
    slowest = (
        bargauge.Panel()
        .title("Slowest computers (last read)")
        .datasource(_DS)
        .with_target(
            _instant(f"topk(10, {_scoped('vmm_cert_collect_duration_seconds')})", "A", "{{host}}")
        )
        .height(8)
        .span(8)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .unit("s")
    )
    return [refresh, errors, slowest]


def _renewal_panels() -> list[Any]:
    """The renewal receiver's own metrics (job vmm-cert-receiver), when it is deployed."""
    in_progress = (
        stat.Panel()
        .title("Renewals running")
        .description("vmm_renewal_jobs_in_progress: renewal jobs the receiver is running now.")
        .datasource(_DS)
        .with_target(_instant("sum(vmm_renewal_jobs_in_progress)", "A"))
        .height(8)
        .span(4)
        .unit("none")
        .color_mode(common.BigValueColorMode.VALUE)
    )
    results = (
        timeseries.Panel()
        .title("Renewal jobs finished, by procedure and result")
        .description(
            "vmm_renewal_jobs_total: succeeded, failed, already-fresh, planned (dry run), "
            "interrupted. A failed job is retried on the receiver's backoff "
            "(VMMCertificateRenewalFailed)."
        )
        .datasource(_DS)
        .with_target(
            _query(
                "sum by (procedure, result) (increase(vmm_renewal_jobs_total[$__rate_interval]))",
                "A",
                "{{procedure}} {{result}}",
            )
        )
        .height(8)
        .span(8)
        .unit("none")
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    )
    last = (
        table.Panel()
        .title("Last successful renewal per computer")
        .datasource(_DS)
        .with_target(
            _instant(
                '1000 * max by (host) (vmm_renewal_last_success_timestamp_seconds{host=~"$host"})',
                "A",
            )
        )
        .height(8)
        .span(6)
        .unit("dateTimeAsIso")
    )
    webhooks = (
        timeseries.Panel()
        .title("Alertmanager webhooks, by outcome")
        .description("vmm_receiver_webhooks_total: accepted, no_action, unauthorized, invalid...")
        .datasource(_DS)
        .with_target(
            _query(
                "sum by (outcome) (increase(vmm_receiver_webhooks_total[$__rate_interval]))",
                "A",
                "{{outcome}}",
            )
        )
        .height(8)
        .span(6)
        .unit("none")
    )
    return [in_progress, results, last, webhooks]


def _variables() -> list[Any]:
    def query_var(name: str, label: str, query: str) -> Any:
        return (
            dash.QueryVariable(name)
            .label(label)
            .datasource(_DS)
            .query(query)
            .definition(query)
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(text="All", value="$__all"))
        )

    return [
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(model.VariableOption(text="Prometheus", value=DATASOURCE_UID)),
        query_var(
            "vmm_server",
            "VMM server",
            "label_values(vmm_managed_computer_state, vmm_server)",
        ),
        query_var("role", "Role", "label_values(vmm_cert_collect_success, role)"),
        query_var(
            "host", "Computer", 'label_values(vmm_cert_collect_success{role=~"$role"}, host)'
        ),
    ]


def build_dashboard(warn_days: int = 30, critical_days: int = 7) -> Any:
    """The dashboard model (``grafana_foundation_sdk.models.dashboard.Dashboard``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SDK_WARNING, category=DeprecationWarning)
        return _build(warn_days, critical_days)


def _cohorts() -> Any:
    """The cohorts (vmm_cert_cohort_*, the one definition) against the receiver's capacity:
    the same projection as VMMCertificateCohortAtRisk."""
    left = "sum by (cohort) (vmm_cert_cohort_computers)"
    expiry = "min by (cohort) (vmm_cert_cohort_expiry_timestamp_seconds)"
    capacity = "max(vmm_renewal_capacity_per_day)"
    # as the alert: the receiver's own projection (windows walked minute by minute, cohorts
    # queued) where it publishes one, else the computers left at its capacity per day
    finish = (
        "(max by (cohort) (vmm_renewal_cohort_projected_finish_timestamp_seconds) or "
        f"(time() + {_DAY} * {left} / on () group_left () {capacity}))"
    )
    columns = [
        # ref_id, expression, column title
        ("A", left, "Computers"),
        ("B", f"1000 * {expiry}", "Expires"),
        ("C", f"1000 * {finish}", "Finish"),
        ("D", f"({expiry} - {finish}) / {_DAY}", "Days to spare"),
    ]
    return (
        table.Panel()
        .title("Cohorts: projected finish at the receiver's capacity")
        .description(
            "Computers per NotAfter day (vmm_cert_cohort_computers), when the last would be "
            "renewed (the receiver's projection, "
            "vmm_renewal_cohort_projected_finish_timestamp_seconds, where it publishes one; "
            "else at vmm_renewal_capacity_per_day), and the days between that and the day: "
            "orange within 7 days (the default receiver.cohort_margin, inside which "
            "VMMCertificateCohortAtRisk warns), red below 0. No finish: no receiver. "
            "vmm-cert-exporter cohorts shows the plan."
        )
        .datasource(_DS)
        .targets([_query(expr, ref, table_format=True) for ref, expr, _ in columns])
        .height(8)
        .span(24)
        .with_transformation(_transform("merge", {}))
        .with_transformation(
            _transform(
                "organize",
                {
                    "excludeByName": {"Time": True},
                    "indexByName": {
                        "cohort": 0,
                        **{f"Value #{ref}": i + 1 for i, (ref, _, _) in enumerate(columns)},
                    },
                    "renameByName": {
                        "cohort": "Cohort",
                        **{f"Value #{ref}": title for ref, _, title in columns},
                    },
                },
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("Cohort").desc(False)])
        .override_by_name("Expires", [_prop("unit", "dateTimeAsIso")])
        .override_by_name("Finish", [_prop("unit", "dateTimeAsIso")])
        .override_by_name(
            "Days to spare",
            [
                _prop("decimals", 1),
                _prop("thresholds", _steps((None, "red"), (0, "orange"), (7, "green")).build()),
                _prop("color", {"mode": "thresholds"}),
                _prop("custom.cellOptions", {"type": "color-text"}),
            ],
        )
    )


def _build(warn_days: int, critical_days: int) -> Any:
    builder = (
        dash.Dashboard("SCVMM certificates")
        .uid(DASHBOARD_UID)
        .description(
            "SCVMM self-signed certificates (SCVMM_CERTIFICATE_KEY_CONTAINER<FQDN>) of the VMM "
            "server and every managed computer, from vmm-cert-exporter."
        )
        .tags(["scvmm", "certificates", "vmm-cert-exporter"])
        .editable()
        # NotAfter is 00:00 UTC on 1 January: in a browser's zone the cohorts would show as
        # 31 December
        .timezone("utc")
        .time("now-7d", "now")
        .refresh("5m")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
        .link(
            dash.DashboardLink("Runbooks")
            .type(model.DashboardLinkType.LINK)
            .url("https://github.com/vmm-cert-exporter/vmm-cert-exporter/blob/main/docs/alerts.md")
            .target_blank(True)
            .icon("doc")
        )
    )
    builder = builder.with_row(dash.Row("Overview"))
    for panel in _overview(warn_days, critical_days):
        builder = builder.with_panel(panel)
    builder = builder.with_row(dash.Row("Certificates"))
    builder = builder.with_panel(_computers_table(warn_days, critical_days))
    builder = builder.with_panel(_calendar())
    builder = builder.with_panel(_days_left_over_time(warn_days, critical_days))
    builder = builder.with_row(dash.Row("VMM"))
    for panel in _vmm_panels():
        builder = builder.with_panel(panel)
    builder = builder.with_row(dash.Row("Collection health"))
    for panel in [*_freshness_panels(), *_collection_panels()]:
        builder = builder.with_panel(panel)
    builder = builder.with_row(dash.Row("Renewals"))
    for panel in [*_renewal_panels(), _cohorts()]:
        builder = builder.with_panel(panel)
    built = builder.build()
    for number, panel in enumerate(built.panels or [], start=1):  # stable ids, rows included
        panel.id_val = number
    return built


def render_dashboard(warn_days: int = 30, critical_days: int = 7) -> str:
    """The dashboard JSON: keys sorted, two-space indent, trailing newline (stable output)."""
    text = json.dumps(
        build_dashboard(warn_days, critical_days),
        cls=JSONEncoder,
        indent=2,
        sort_keys=True,
        ensure_ascii=False,
    )
    return text + "\n"


# ---- reading a dashboard back: the expressions ------------------------------------------

DEFAULT_SUBSTITUTIONS: Mapping[str, str] = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "datasource": DATASOURCE_UID,
    "vmm_server": ".*",
    "role": ".*",
    "host": ".*",
}

# $name, ${name}, ${name:format} and the legacy [[name]]
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def _panels(dashboard_json: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard_json.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def panel_targets(dashboard_json: Mapping[str, Any] | str) -> list[tuple[str, str, str]]:
    """``(panel title, ref_id, raw expression)`` for every Prometheus target, in panel order."""
    data = json.loads(dashboard_json) if isinstance(dashboard_json, str) else dashboard_json
    found: list[tuple[str, str, str]] = []
    for panel in _panels(data):
        for target in panel.get("targets", []) or []:
            if "expr" in target:
                found.append(
                    (str(panel.get("title", "")), str(target.get("refId", "")), target["expr"])
                )
    return found


def panel_expressions(
    dashboard_json: Mapping[str, Any] | str,
    substitutions: Mapping[str, str] | None = None,
) -> list[str]:
    """Every panel expression, in panel order, with Grafana's variables substituted.

    ``dashboard_json`` is the dashboard as parsed JSON (or its text). The defaults of
    ``DEFAULT_SUBSTITUTIONS`` (``$__rate_interval`` -> ``5m``, ``$__interval`` -> ``1m``,
    ``$__range`` -> ``1h``, ``$host``/``$role``/``$vmm_server`` -> ``.*``) can be overridden
    or extended with ``substitutions``, e.g. ``{"__rate_interval": "30s"}`` for a Prometheus
    that scrapes every second. A variable with no substitution raises ``KeyError``.
    """
    values = {**DEFAULT_SUBSTITUTIONS, **(substitutions or {})}

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name not in values:
            raise KeyError(f"no substitution for Grafana variable ${name} in {match.string!r}")
        return values[name]

    return [_VARIABLE.sub(replace, expr) for _, _, expr in panel_targets(dashboard_json)]


def main(argv: list[str] | None = None) -> int:
    """``python exporter/tools/dashboard.py``: print the dashboard JSON."""
    if argv:
        print("usage: python exporter/tools/dashboard.py > FILE", file=sys.stderr)
        return 2
    sys.stdout.write(render_dashboard())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
