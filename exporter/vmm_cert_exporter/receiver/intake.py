"""From a valid webhook to jobs: each alert creates a job, joins one, or is rejected.

The checks an alert must pass, in order, and when it joins a job instead:
docs/renewal.md ("How a webhook becomes a renewal")."""

from __future__ import annotations

from dataclasses import dataclass

from vmm_cert_exporter.config import ReceiverConfig, validate_fqdn
from vmm_cert_exporter.inventory import Inventory
from vmm_cert_exporter.receiver import planner
from vmm_cert_exporter.receiver.journal import ActiveJobExists, Journal
from vmm_cert_exporter.receiver.webhook import WebhookAlert, WebhookPayload


@dataclass(frozen=True)
class Decision:
    alertname: str
    host: str | None
    outcome: str  # created | joined | rejected
    reason: str
    job_id: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "alertname": self.alertname[:200],
            "host": None if self.host is None else self.host[:200],
            "outcome": self.outcome,
            "reason": self.reason,
            "job_id": self.job_id,
        }


def _shown(value: str) -> str:
    # repr: control characters and look-alikes stay visible in the journal and the API
    return repr(value if len(value) <= 80 else value[:80] + "...")


def _reject(alert: WebhookAlert, host: str | None, reason: str) -> Decision:
    return Decision(alert.alertname, host, "rejected", reason)


def decide(
    alert: WebhookAlert,
    *,
    config: ReceiverConfig,
    inventory: Inventory,
    journal: Journal,
    now: float,
) -> Decision:
    host_label = alert.labels.get("host")
    if alert.status != "firing":
        return _reject(alert, host_label, "resolved: only firing alerts cause work")
    if alert.alertname not in config.trigger_alerts:
        return _reject(
            alert, host_label, f"alert {_shown(alert.alertname)} is not in trigger_alerts"
        )
    if host_label is None:
        return _reject(alert, None, "no host label: cannot tell which computer to renew")
    try:
        validate_fqdn(host_label)
    except ValueError as exc:
        return _reject(alert, host_label, f"host label is not a plain FQDN: {exc}")
    computer = inventory.find(host_label)
    # validate_fqdn admitted ASCII only, so lower() cannot fold a look-alike into a match
    if computer is None or computer.key != host_label.lower():
        return _reject(
            alert, host_label, f"host {_shown(host_label)} is not a computer of the inventory"
        )
    target = planner.renewal_target(computer, inventory.vmm_views)
    refusal = planner.policy_refusal(config, target.computer)
    if refusal is not None:
        return _reject(alert, computer.fqdn, f"not allowed: {computer.fqdn} {refusal}")
    if target.vmm_server is None:
        return _reject(
            alert,
            computer.fqdn,
            f"no VMM server known to manage {computer.fqdn} (list its VMM server under "
            "vmm_servers): nowhere to re-register it",
        )
    if target.procedure is None:
        return _reject(alert, computer.fqdn, target.why)
    procedure, why = target.procedure, target.why

    mode = config.mode
    seen = journal.job_for_alert(alert.fingerprint, alert.starts_at, mode)
    if seen is not None:
        return Decision(
            alert.alertname, computer.fqdn, "joined", "repeat of an alert already handled", seen
        )
    active = journal.active_job(computer.fqdn)
    if active is not None:
        return Decision(
            alert.alertname,
            computer.fqdn,
            "joined",
            f"{computer.fqdn} already has an active job",
            active.id,
        )
    if mode == "dry-run" and config.cooldown > 0:
        recent = journal.recent_job(computer.fqdn, mode, now - config.cooldown)
        if recent is not None:
            return Decision(
                alert.alertname,
                computer.fqdn,
                "joined",
                "planned recently (within cooldown)",
                recent,
            )
    try:
        job = journal.create_job(
            host=computer.fqdn,
            role=target.computer.role,
            vmm_server=target.vmm_server,
            is_vmm_server=target.computer.is_vmm_server,
            procedure=procedure,
            mode=mode,
            source="alertmanager",
            reason=why,
        )
    except ActiveJobExists as exc:
        # another request (or a renew by hand) created it a moment ago
        return Decision(
            alert.alertname,
            computer.fqdn,
            "joined",
            f"{computer.fqdn} already has an active job",
            exc.job_id,
        )
    return Decision(alert.alertname, computer.fqdn, "created", why, job.id)


def intake(
    payload: WebhookPayload,
    *,
    config: ReceiverConfig,
    inventory: Inventory,
    journal: Journal,
    webhook_id: int | None,
    now: float,
) -> list[Decision]:
    """Decide every alert of ``payload`` and journal each decision."""
    decisions = []
    for alert in payload.alerts:
        decision = decide(alert, config=config, inventory=inventory, journal=journal, now=now)
        journal.record_alert(
            webhook_id=webhook_id,
            alertname=alert.alertname,
            host=alert.labels.get("host"),
            status=alert.status,
            fingerprint=alert.fingerprint,
            starts_at=alert.starts_at,
            mode=config.mode,
            outcome=decision.outcome,
            reason=decision.reason,
            job_id=decision.job_id,
        )
        decisions.append(decision)
    return decisions
