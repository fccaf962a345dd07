"""Which certificate each computer holds, as the receiver plans cohorts from it.

One ``list-trusted-certificates`` per VMM server gives the NotAfter of every managed
computer's copy in VMM's TrustedPeople (the same matching as the exporter's, ``trust``);
the VMM server's own names, of which VMM may keep no copy, are read with
``collect-certificates``. So a census costs two scripts per VMM server, not one per
computer: the receiver plans with it and never changes anything from it. A copy that lags
behind the computer's own certificate only makes a job that preflight (which reads the
computer itself) ends as already fresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vmm_cert_exporter.certificate import CertificateError, parse_certificate
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import Computer, Inventory
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.receiver.runbook import ScriptRunner
from vmm_cert_exporter.results import (
    ScriptOutputError,
    parse_collect_certificates,
    parse_trusted_certificates,
)
from vmm_cert_exporter.sources.winrm import stored_certificates
from vmm_cert_exporter.trust import is_copy_candidate, trusted_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holding:
    """A computer of the inventory and the NotAfter of the certificate it holds."""

    computer: Computer
    not_after: float


def _run(runner: ScriptRunner, host: str, operation: str) -> str:
    output = runner.run(host, render_script(operation))
    failure = output.failure()
    if failure is not None:
        raise failure
    return output.stdout


def trusted_not_afters(stdout: str) -> dict[str, float]:
    """The latest NotAfter among the TrustedPeople copies of each computer name."""
    latest: dict[str, float] = {}
    for record in parse_trusted_certificates(stdout).certificates:
        try:
            info = parse_certificate(record.der)
        except CertificateError:
            continue
        if not is_copy_candidate(record, info):
            continue
        stamp = info.not_after.timestamp()
        for name in trusted_names(record, info):
            latest[name] = max(latest.get(name, stamp), stamp)
    return latest


def own_not_after(runner: ScriptRunner, host: str) -> float | None:
    """The NotAfter of the SCVMM certificate ``host`` holds (the latest, if several)."""
    certificates = stored_certificates(
        parse_collect_certificates(_run(runner, host, "collect-certificates"))
    )
    if not certificates:
        return None
    return max(c.info.not_after.timestamp() for c in certificates)


def read_census(runner: ScriptRunner, inventory: Inventory) -> tuple[list[Holding], dict[str, str]]:
    """(holdings, errors by host): every computer of ``inventory`` whose NotAfter could be
    learnt; a VMM server that cannot be read is reported and its computers left out."""
    known: dict[str, float] = {}
    errors: dict[str, str] = {}
    for view in inventory.vmm_views.values():
        try:
            known.update(
                trusted_not_afters(_run(runner, view.vmm_server, "list-trusted-certificates"))
            )
        except (CollectError, ScriptOutputError) as exc:
            errors[view.vmm_server] = str(exc)
    holdings: list[Holding] = []
    for computer in inventory.computers:
        not_after = known.get(computer.key)
        if not_after is None and computer.is_vmm_server:
            try:
                not_after = own_not_after(runner, computer.fqdn)
            except (CollectError, ScriptOutputError) as exc:
                errors[computer.fqdn] = str(exc)
        if not_after is not None:
            holdings.append(Holding(computer, not_after))
    if errors:
        log.warning("census incomplete", extra={"failed": ", ".join(sorted(errors))})
    return holdings, errors
