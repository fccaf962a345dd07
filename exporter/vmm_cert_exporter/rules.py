"""The Prometheus alerting rules, generated from code.

``vmm-cert-exporter rules`` prints them; the shipped ``alerts/vmm-certificates.rules.yml`` and
``alerts/kubernetes/vmm-certificates.prometheusrule.yaml`` are its default output (a test
checks they are byte-identical). Alert names are a contract.

Two design choices make the alerts quiet across an exporter restart and a failed refresh:

* **Held values.** Every per-computer expression reads a metric through :func:`held`: the
  current sample, or - only while the exporter publishes no per-computer series at all (it
  is down, restarting, or has not finished its first refresh) - the last sample of the past
  ``HOLD`` (10 minutes). An alert that is firing stays firing through a restart, a pending
  one keeps its ``for`` clock, and a computer removed from the inventory resolves at once
  (the exporter still publishes its other computers, so nothing is held).
  A failed refresh needs nothing: the exporter keeps the last values it read.
* **``for:`` durations** therefore only have to ride out a single *wrong read*, which stays
  published for one whole refresh interval (15 minutes by default); see ``FOR_DURATIONS``.

``VMMCertificateExpiringSoon`` and ``VMMCertificateExpiringCritical`` overlap on purpose
(Soon covers 0 < left <= warn, Critical 0 < left <= critical): when a certificate crosses
the critical mark, Soon keeps firing until Critical has fired, and Alertmanager's
``inhibit_rules`` (deploy/alertmanager.yml) mute Soon while Critical fires, and both while
Expired fires, for the same host. Without the overlap, Soon would resolve (a notification)
and nothing would fire for Critical's whole ``for`` window.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from vmm_cert_exporter.durations import parse_duration

__all__ = [
    "ALERT_NAMES",
    "DEFAULT_JOB",
    "DEFAULT_RUNBOOK_BASE_URL",
    "FAILING_REFRESHES",
    "FOR_DURATIONS",
    "HISTORY",
    "HOLD",
    "RULE_GROUPS",
    "STALE_REFRESHES",
    "TRIGGER_ALERTS",
    "held",
    "render_prometheus_rule",
    "render_rules",
    "rule_groups",
    "rules_command",
    "validate_thresholds",
]

DEFAULT_RUNBOOK_BASE_URL = (
    "https://github.com/vmm-cert-exporter/vmm-cert-exporter/blob/main/docs/runbooks/"
)
DEFAULT_JOB = "vmm-cert-exporter"

# How long a per-computer value is held while the exporter publishes no per-computer series:
# an exporter restart (a couple of failed scrapes at a 60 s scrape interval, then the first
# refresh) fits well inside it. VMMCertificateExporterDown fires (after 5m) before it runs out.
HOLD = "10m"
# How far back the last successful read and the failed attempts are looked for; must exceed
# FAILING_REFRESHES refresh intervals (3 x 15m by default; 1d allows intervals up to 8h).
HISTORY = "1d"
# A computer counts as failing after this many refreshes without a successful read.
FAILING_REFRESHES = 3
# The exporter counts as stale after this many refresh intervals without a finished refresh.
STALE_REFRESHES = 3

# The seconds in a day, for the thresholds.
_DAY = 86400

# for: durations, and why (docs/alerts.md repeats this table).
FOR_DURATIONS: Mapping[str, str] = {
    # 30 days of lead time: an hour costs nothing, and the renewal receiver acts on this
    # alert, so it should act on a settled signal. The countdown cannot flap.
    "VMMCertificateExpiringSoon": "1h",
    # 7 days of lead time; 15 minutes is still nothing against that.
    "VMMCertificateExpiringCritical": "15m",
    # Already broken: page quickly. 5 minutes ride out a clock step on the exporter's host
    # (expiry is NotAfter minus the exporter's clock).
    "VMMCertificateExpired": "5m",
    # Longer than one refresh interval (15m by default): a read taken between procedure 1's
    # delete and its re-register stays published for one whole interval and must not page
    # (nor make the renewal receiver renew again).
    "VMMCertificateMissing": "20m",
    # Same: Register-SCVMMManagedComputer replaces the certificate and VMM's TrustedPeople
    # copy seconds apart; one read between them must not page.
    "VMMCertificateNotTrusted": "20m",
    # A warning; a renewal may briefly leave two certificates.
    "VMMCertificateDuplicate": "1h",
    # The expression already waits FAILING_REFRESHES refresh intervals; 10 more minutes let
    # a refresh in progress finish before anyone is told.
    "VMMCertificateCollectionFailing": "10m",
    # An exporter restart (2-3 failed scrapes at 60 s) stays well below 5 minutes; 5 minutes
    # is also shorter than HOLD, so there is no blind spot between the per-computer alerts
    # resolving and this one firing.
    "VMMCertificateExporterDown": "5m",
    # The expression already waits STALE_REFRESHES refresh intervals once refreshes stop.
    # Before the first refresh after a start the timestamp is 0 and the expression holds at
    # once: 15 minutes cover that first refresh (minutes even at 25,000 computers) plus the
    # spawn of the refresh process, and a first refresh that never finishes fires after them.
    "VMMCertificateExporterStale": "15m",
    # A renewal that failed is retried on the receiver's backoff; a failure fixed within 5
    # minutes (the resume after a receiver crash) is not worth a notification.
    "VMMCertificateRenewalFailed": "5m",
    # A projection weeks ahead moves slowly; an hour rides out a receiver restart, a pause
    # for a maintenance and a capacity re-measured after one slow renewal.
    "VMMCertificateCohortAtRisk": "1h",
}

ALERT_NAMES: tuple[str, ...] = tuple(FOR_DURATIONS)

# The alerts the renewal receiver acts on (deploy/alertmanager.yml routes only these to it).
TRIGGER_ALERTS: tuple[str, ...] = (
    "VMMCertificateExpiringSoon",
    "VMMCertificateExpiringCritical",
    "VMMCertificateExpired",
    "VMMCertificateMissing",
    "VMMCertificateNotTrusted",
)

# group name -> the alerts in it, in order
RULE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "vmm-certificates": (
        "VMMCertificateExpiringSoon",
        "VMMCertificateExpiringCritical",
        "VMMCertificateExpired",
        "VMMCertificateMissing",
        "VMMCertificateNotTrusted",
        "VMMCertificateDuplicate",
    ),
    "vmm-cert-exporter": (
        "VMMCertificateCollectionFailing",
        "VMMCertificateExporterDown",
        "VMMCertificateExporterStale",
    ),
    "vmm-cert-renewal": ("VMMCertificateRenewalFailed", "VMMCertificateCohortAtRisk"),
}


def held(metric: str, alive: str = "vmm_cert_collect_success") -> str:
    """``metric``, or its last value of the past HOLD while its publisher publishes nothing.

    ``vmm_cert_collect_success`` exists for every computer in the exporter's inventory, so
    its absence for an (instance, job) means the exporter is down or has not finished its
    first refresh since a restart - not that one computer went away. For the renewal
    receiver, ``vmm_receiver_info`` plays that part.
    """
    return (
        "(\n"
        f"  {metric}\n"
        "  or\n"
        f"  (last_over_time({metric}[{HOLD}]) unless on (instance, job) {alive})\n"
        ")"
    )


@dataclass(frozen=True)
class _Alert:
    name: str
    severity: str
    expr: str
    summary: str
    description: str


_HOST = "{{ $labels.host }}"
_LEFT = "{{ $value | humanizeDuration }}"
_AGO = '{{ $value | humanizeDuration | reReplaceAll "^-" "" }}'
_NOT_AFTER = (
    "{{ with printf "
    '"last_over_time(vmm_cert_not_after_timestamp_seconds{instance=%q,job=%q,host=%q}'
    f'[{HOLD}])" '
    "$labels.instance $labels.job $labels.host | query }}"
    " (NotAfter {{ . | first | value | humanizeTimestamp }}){{ end }}"
)


def _cohort_at_risk() -> list[_Alert]:
    """Per cohort (``vmm_cert_cohort_*`` summed over the exporter's shards): when its last
    computer would be renewed, minus its first NotAfter. When is the receiver's published
    projected finish for the cohort, else the exporter's count at the receiver's capacity.

    Warning once that is later than the day minus ``cohort_margin``, critical once it is
    after the day; a paused receiver (capacity 0) projects +Inf. Cohorts already past are
    VMMCertificateExpired's. Without a receiver there is no capacity, and no alert.
    """

    def aggregate(how: str, metric: str, alive: str = "vmm_cert_collect_success") -> str:
        return f"{how} (\n  {_indent(held(metric, alive=alive))}\n)"

    left = aggregate("sum by (cohort)", "vmm_cert_cohort_computers")
    expiry = aggregate("min by (cohort)", "vmm_cert_cohort_expiry_timestamp_seconds")
    capacity = aggregate("max", "vmm_renewal_capacity_per_day", "vmm_receiver_info")
    margin = aggregate("max", "vmm_renewal_cohort_margin_seconds", "vmm_receiver_info")
    # the receiver's own projection, walked minute by minute through the windows (+Inf when
    # paused); where no receiver publishes one for the cohort, the estimate from the
    # exporter's count and the receiver's capacity per day
    projected = aggregate(
        "max by (cohort)",
        "vmm_renewal_cohort_projected_finish_timestamp_seconds",
        "vmm_receiver_info",
    )
    estimate = (
        f"(\n  time() + {_DAY} * {_indent(left)}\n  / on () group_left ()\n  {_indent(capacity)}\n)"
    )
    # projected finish - first NotAfter, in seconds (the alert's value)
    late = f"(\n  {_indent(projected)}\n  or\n  {_indent(estimate)}\n)\n- on (cohort)\n{expiry}\n"
    upcoming = f"and on (cohort)\n{expiry} > time()"
    day = "{{ $labels.cohort }}"
    q_left = "sum(vmm_cert_cohort_computers{cohort=%q})"
    q_expiry = "min(vmm_cert_cohort_expiry_timestamp_seconds{cohort=%q})"
    q_per_day = "max(vmm_renewal_capacity_per_day)"
    q_capacity = "max by (duration_source) (vmm_renewal_capacity_per_day)"
    q_margin = "max(vmm_renewal_cohort_margin_seconds)"
    computers = (
        f'{{{{ with printf "{q_left}" $labels.cohort | query }}}}'
        "{{ . | first | value }}{{ end }}"
    )
    # the receiver's must-start-by for the cohort, else the estimate; no start date while
    # paused (+Inf from the receiver, a division by 0 capacity in the estimate)
    q_must = "max(vmm_renewal_cohort_must_start_by_timestamp_seconds{cohort=%q}) < +Inf"
    start_by = (
        f'{{{{ with printf "({q_must}) or ({q_expiry} - {q_margin} - {_DAY} * {q_left} / '
        f'({q_per_day} > 0))" '
        "$labels.cohort $labels.cohort $labels.cohort | query }} Renewals would have had to "
        "start by {{ . | first | value | humanizeTimestamp }}.{{ end }}"
    )
    capacity_text = (
        f'{{{{ with query "{q_capacity}" }}}}{{{{ with . | first }}}}'
        "{{ if eq .Value 0.0 }}0 computers a day (paused: nothing is renewed)"
        '{{ else }}{{ .Value | printf "%.0f" }} computers a day '
        "({{ .Labels.duration_source }} renewal duration){{ end }}{{ end }}{{ end }}"
    )
    margin_text = (
        f'{{{{ with query "{q_margin}" }}}}'
        "{{ . | first | value | humanizeDuration }}{{ end }}"
    )
    finish = (
        "{{ if gt $value 0.0 }}{{ $value | humanizeDuration }} after it expires"
        '{{ else }}{{ $value | humanizeDuration | reReplaceAll "^-" "" }} before it expires'
        "{{ end }}"
    )
    description = (
        f"{computers} computers expire on {day}; at the renewal receiver's capacity of "
        f"{capacity_text} the last of them would be renewed {finish} (margin: "
        f"{margin_text}).{start_by} Widen the maintenance windows, raise max_concurrent, "
        "approve in bulk or start early (vmm-cert-exporter cohorts --config FILE shows the "
        "plan)."
    )
    return [
        _Alert(
            "VMMCertificateCohortAtRisk",
            "warning",
            f"{late}> on () group_left ()\n-{margin}\n{upcoming}",
            f"Cohort {day} will not be renewed {margin_text} before it expires",
            description,
        ),
        _Alert(
            "VMMCertificateCohortAtRisk",
            "critical",
            f"{late}> 0\n{upcoming}",
            f"Cohort {day} will not be renewed before it expires",
            description,
        ),
    ]


def _alerts(
    warn_days: int, critical_days: int, job: str, durations: Mapping[str, str]
) -> dict[str, list[_Alert]]:
    warn_s = warn_days * _DAY
    crit_s = critical_days * _DAY
    expiry = held("vmm_cert_expiry_seconds")
    failing = held("vmm_cert_collect_success") + " == 0"
    who = f"{_HOST} ({{{{ $labels.role }}}})"
    renew = "Renew it: procedure 1, or procedure 2 (Update-SCVMMCertificate) on a VMM server."
    alerts = [
        _Alert(
            "VMMCertificateExpiringSoon",
            "warning",
            f"{expiry} > 0 <= {warn_s}  # {warn_days} days",
            f"SCVMM certificate on {_HOST} expires in {_LEFT}",
            f"The SCVMM certificate of {who} expires in {_LEFT}{_NOT_AFTER}. VMM warns "
            f"(event 20583) a month ahead; once it expires VMM can no longer manage the "
            f"computer. {renew}",
        ),
        _Alert(
            "VMMCertificateExpiringCritical",
            "critical",
            f"{expiry} > 0 <= {crit_s}  # {critical_days} days",
            f"SCVMM certificate on {_HOST} expires in {_LEFT}",
            f"The SCVMM certificate of {who} expires in {_LEFT}{_NOT_AFTER}. Then the host "
            f"goes to Needs Attention and VMM can no longer manage it. {renew}",
        ),
        _Alert(
            "VMMCertificateExpired",
            "critical",
            f"{expiry} <= 0",
            f"SCVMM certificate on {_HOST} expired {_AGO} ago",
            f"The SCVMM certificate of {who} expired {_AGO} ago{_NOT_AFTER}. VMM cannot "
            f"manage the computer (Needs Attention, Access Denied, Not Responding). {renew} "
            "Never remove and re-add the host.",
        ),
        _Alert(
            "VMMCertificateMissing",
            "critical",
            held("vmm_cert_present") + " == 0",
            f"No SCVMM certificate on {_HOST}",
            f"The LocalMachine\\My store of {who} was read and holds no "
            "SCVMM_CERTIFICATE_KEY_CONTAINER certificate (deleted by mistake?): VMM cannot "
            "manage the computer. Re-create it: procedure 1, or procedure 2 "
            "(Update-SCVMMCertificate) on a VMM server.",
        ),
        _Alert(
            "VMMCertificateNotTrusted",
            "critical",
            held("vmm_cert_trusted") + " == 0",
            f"VMM does not trust the SCVMM certificate on {_HOST}",
            f"The VMM server's TrustedPeople copy of the certificate of {who} does not match "
            "the certificate in its LocalMachine\\My store (thumbprints differ): communication "
            "breaks although nothing has expired (Access Denied). Re-register the computer: "
            "procedure 1.",
        ),
        _Alert(
            "VMMCertificateDuplicate",
            "warning",
            held("vmm_cert_certificates") + " > 1",
            f"{_HOST} holds {{{{ $value }}}} SCVMM certificates",
            f"The LocalMachine\\My store of {who} holds {{{{ $value }}}} "
            "SCVMM_CERTIFICATE_KEY_CONTAINER certificates: VMM, or the Network Controller host "
            "agent on SDN hosts, may pick the wrong one. vmm_cert_info lists their thumbprints.",
        ),
        _Alert(
            "VMMCertificateCollectionFailing",
            "warning",
            # A: the last successful read is older than FAILING_REFRESHES intervals;
            # B: no successful read within HISTORY, and FAILING_REFRESHES failed refreshes
            #    (the first failure makes the error series appear, each later one changes it).
            "(\n"
            f"  time() - max_over_time(vmm_cert_collect_timestamp_seconds[{HISTORY}])\n"
            "    > on (instance, job) group_left ()\n"
            f"  {FAILING_REFRESHES} * last_over_time("
            f"vmm_cert_exporter_refresh_interval_seconds[{HOLD}])\n"
            "  and on (instance, job, host)\n"
            f"  {_indent(failing)}\n"
            ")\n"
            "or\n"
            "(\n"
            f"  {_indent(failing)}\n"
            "  unless on (instance, job, host)\n"
            f"  max_over_time(vmm_cert_collect_timestamp_seconds[{HISTORY}])\n"
            "  and on (instance, job, host)\n"
            "  sum by (instance, job, host) ("
            f"changes(vmm_cert_collect_errors_total[{HISTORY}])) >= {FAILING_REFRESHES - 1}\n"
            ")",
            f"vmm-cert-exporter cannot read {_HOST}",
            f"{who} has not been read successfully "
            f"{{{{ if gt $value 0.0 }}}}for {_LEFT}"
            f"{{{{ else }}}}in {FAILING_REFRESHES} refreshes{{{{ end }}}}: its certificate "
            f'data is stale or unknown. vmm_cert_collect_errors_total{{host="{_HOST}"}} '
            "gives the reason.",
        ),
        _Alert(
            "VMMCertificateExporterDown",
            "critical",
            f'up{{job="{job}"}} == 0 or absent(up{{job="{job}"}})',
            f"Prometheus cannot scrape {job}{{{{ with $labels.instance }}}} at {{{{ . }}}}"
            "{{ end }}",
            f"The scrape job {job} has been down or missing for "
            f"{durations['VMMCertificateExporterDown']}: SCVMM certificates are not watched. "
            f"Certificate alerts keep their last values for {HOLD}, then resolve until the "
            "exporter is back.",
        ),
        _Alert(
            "VMMCertificateExporterStale",
            "warning",
            # 0 before the first refresh: true at once, so only the for: applies then
            "time() - vmm_cert_exporter_last_refresh_timestamp_seconds\n"
            f"  > {STALE_REFRESHES} * vmm_cert_exporter_refresh_interval_seconds",
            "vmm-cert-exporter at {{ $labels.instance }} is serving a stale snapshot",
            "vmm-cert-exporter at {{ $labels.instance }} "
            "{{ with printf "
            '"vmm_cert_exporter_last_refresh_timestamp_seconds{instance=%q,job=%q}" '
            "$labels.instance $labels.job | query }}"
            "{{ if eq (. | first | value) 0.0 }}has not finished its first refresh"
            f"{{{{ else }}}}has not finished a refresh for {_LEFT}{{{{ end }}}}{{{{ end }}}}, "
            f"more than {STALE_REFRESHES} refresh intervals: it serves its last snapshot, so "
            "every per-computer series (vmm_cert_collect_success included) and every "
            "certificate alert is frozen. The refresh process is crash-looping "
            "(vmm_cert_exporter_refresh_process_restarts_total rises), hung, or far too slow "
            "for collection.interval (vmm_cert_exporter_refresh_duration_seconds).",
        ),
        _Alert(
            "VMMCertificateRenewalFailed",
            "warning",
            held("vmm_renewal_host_failed", alive="vmm_receiver_info") + " == 1",
            f"Renewal of the SCVMM certificate of {_HOST} failed at {{{{ $labels.step }}}}",
            f"The renewal receiver's latest job for {_HOST} (procedure "
            "{{ $labels.procedure }}) failed at step {{ $labels.step }}; it retries on its "
            "backoff schedule unless it gave up (vmm-cert-exporter jobs --host "
            f"{_HOST})."
            '{{ if eq $labels.step "register-managed-computer" }} The host\'s certificate was '
            "deleted and not re-registered: VMM cannot manage it until it is.{{ end }}",
        ),
        *_cohort_at_risk(),
    ]
    by_name: dict[str, list[_Alert]] = {}
    for a in alerts:
        by_name.setdefault(a.name, []).append(a)
    return by_name


def _indent(text: str, by: str = "  ") -> str:
    """Indent every line but the first (the first follows an indented prefix already)."""
    return text.replace("\n", "\n" + by)


def validate_thresholds(warn_days: int, critical_days: int) -> None:
    """Raise ``ValueError`` unless 0 < critical_days < warn_days."""
    if warn_days <= 0 or critical_days <= 0:
        raise ValueError(
            f"--warn-days and --critical-days must be positive, got {warn_days} and {critical_days}"
        )
    if critical_days >= warn_days:
        raise ValueError(
            f"--critical-days ({critical_days}) must be less than --warn-days ({warn_days})"
        )


def _for_durations(overrides: Mapping[str, str] | None) -> dict[str, str]:
    durations = dict(FOR_DURATIONS)
    for name, value in (overrides or {}).items():
        if name not in durations:
            raise ValueError(f"unknown alert {name!r}; expected one of {sorted(durations)}")
        if value != "0s":
            parse_duration(value)  # ValueError on anything Prometheus would not take
        durations[name] = value
    return durations


def rule_groups(
    warn_days: int = 30,
    critical_days: int = 7,
    *,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    job: str = DEFAULT_JOB,
    for_durations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The rule groups as plain data (the ``groups:`` list of a Prometheus rule file).

    ``for_durations`` overrides some ``for:`` values (e.g. a fast end-to-end test); the
    shipped files use ``FOR_DURATIONS``.
    """
    validate_thresholds(warn_days, critical_days)
    durations = _for_durations(for_durations)
    alerts = _alerts(warn_days, critical_days, job, durations)
    base = runbook_base_url if runbook_base_url.endswith("/") else runbook_base_url + "/"
    groups: list[dict[str, Any]] = []
    for group, names in RULE_GROUPS.items():
        rules: list[dict[str, Any]] = []
        for name in names:
            rules.extend(
                {
                    "alert": a.name,
                    "expr": a.expr,
                    "for": durations[name],
                    "labels": {"severity": a.severity},
                    "annotations": {
                        "summary": a.summary,
                        "description": a.description,
                        "runbook_url": f"{base}{a.name}.md",
                    },
                }
                for a in alerts[name]
            )
        groups.append({"name": group, "rules": rules})
    return groups


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, long ones folded: readable diffs."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if len(value) > 80:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=">")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


def _dump(data: Any) -> str:
    text: str = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=96,
        indent=2,
    )
    return text


def _header(warn_days: int, critical_days: int, fmt: str, base: str) -> str:
    flags = ""
    if (warn_days, critical_days) != (30, 7):
        flags += f" --warn-days {warn_days} --critical-days {critical_days}"
    if fmt != "prometheus":
        flags += f" --format {fmt}"
    if base != DEFAULT_RUNBOOK_BASE_URL:
        flags += f" --runbook-base-url {base}"
    return (
        "# Generated by `vmm-cert-exporter rules"
        f"{flags}` (exporter/vmm_cert_exporter/rules.py): do not edit.\n"
        "# Regenerate: vmm-cert-exporter rules"
        f"{flags} > FILE\n"
        f"# Thresholds: warning at {warn_days} days left, critical at {critical_days} days left.\n"
        "# Alerts, for: durations and runbooks: docs/alerts.md\n"
    )


def render_rules(
    warn_days: int = 30,
    critical_days: int = 7,
    *,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    job: str = DEFAULT_JOB,
    for_durations: Mapping[str, str] | None = None,
) -> str:
    """A Prometheus rule file (YAML text, stable key order, generated-file header)."""
    groups = rule_groups(
        warn_days,
        critical_days,
        runbook_base_url=runbook_base_url,
        job=job,
        for_durations=for_durations,
    )
    return _header(warn_days, critical_days, "prometheus", runbook_base_url) + _dump(
        {"groups": groups}
    )


def render_prometheus_rule(
    warn_days: int = 30,
    critical_days: int = 7,
    *,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
    job: str = DEFAULT_JOB,
    for_durations: Mapping[str, str] | None = None,
    name: str = "vmm-cert-exporter",
) -> str:
    """The same groups as a Kubernetes ``monitoring.coreos.com/v1`` ``PrometheusRule``."""
    groups = rule_groups(
        warn_days,
        critical_days,
        runbook_base_url=runbook_base_url,
        job=job,
        for_durations=for_durations,
    )
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "vmm-cert-exporter",
                "app.kubernetes.io/component": "alerting-rules",
            },
        },
        "spec": {"groups": groups},
    }
    return _header(warn_days, critical_days, "kubernetes", runbook_base_url) + _dump(manifest)


def rules_command(args: argparse.Namespace) -> int:
    """``vmm-cert-exporter rules``: print the rules; exit 2 on bad thresholds."""
    warn_days: int = args.warn_days
    critical_days: int = args.critical_days
    fmt: str = getattr(args, "format", "prometheus")
    base: str = getattr(args, "runbook_base_url", None) or DEFAULT_RUNBOOK_BASE_URL
    try:
        validate_thresholds(warn_days, critical_days)
    except ValueError as exc:
        print(f"vmm-cert-exporter rules: {exc}", file=sys.stderr)
        return 2
    render = render_prometheus_rule if fmt == "kubernetes" else render_rules
    sys.stdout.write(render(warn_days, critical_days, runbook_base_url=base))
    return 0
