"""Reading a computer's renewal state and running one change step, over WinRM.

Everything that reaches PowerShell goes through ``powershell.render_script``: parameters
travel as base64 JSON on the script's second line, never as PowerShell text. Reading reuses
the exporter's parsers and its TrustedPeople logic (``collection.TrustedCopies``,
``trust_of``, ``stored_certificates``), so the receiver judges a certificate exactly as the
exporter that raised the alert did.

Nothing here touches the journal: ``engine`` journals around these calls, and
``renew`` (dry run) uses them without a journal at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from vmm_cert_exporter import failures
from vmm_cert_exporter.collection import TrustedCopies, stored_certificates, trust_of
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import Computer, VmmView, fqdn_key, view_from_result
from vmm_cert_exporter.powershell import MAX_THUMBPRINTS, render_script
from vmm_cert_exporter.receiver import planner
from vmm_cert_exporter.receiver.journal import iso
from vmm_cert_exporter.receiver.planner import PlannedStep
from vmm_cert_exporter.remoting import ScriptOutput
from vmm_cert_exporter.results import (
    ScriptOutputError,
    parse_collect_certificates,
    parse_job_result,
    parse_managed_computers,
    parse_remove_result,
    parse_trusted_certificates,
)
from vmm_cert_exporter.snapshot import StoredCertificate

# Failure reasons that mean the script never started on the computer: the step did not
# happen. Any other failure after sending (timeout, fault, broken output) leaves its outcome
# unknown until the computer is read again.
_NOT_SENT: Final = frozenset({failures.CONNECT, failures.AUTH, failures.TLS})


class ScriptRunner(Protocol):
    """What the runbook needs from ``remoting.WinRMRunner``."""

    def run(self, host: str, script: str, timeout: float | None = None) -> ScriptOutput: ...


class StepFailed(Exception):
    """A step failed: ``step`` names it, ``reason`` says why; ``unknown`` when the script
    may have run (its effect must be read back, never assumed)."""

    def __init__(
        self, step: str, reason: str, *, unknown: bool = False, permanent: bool = False
    ) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.unknown = unknown
        self.permanent = permanent


@dataclass(frozen=True)
class HostState:
    """What one read of both ends found."""

    computer: Computer  # as VMM reports it now (fresh role, state, spelling)
    view: VmmView
    certificates: tuple[StoredCertificate, ...]
    trusted: bool | None
    trusted_thumbprints: tuple[str, ...]

    def certificates_json(self) -> list[dict[str, Any]]:
        return [
            {
                "thumbprint": c.info.thumbprint,
                "not_before": iso(c.info.not_before.timestamp()),
                "not_after": iso(c.info.not_after.timestamp()),
                "friendly_name": c.friendly_name,
                "trusted": c.info.thumbprint.upper() in self.trusted_thumbprints,
            }
            for c in self.certificates
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "vmm_server": self.view.vmm_server,
            "vmm_version": self.view.version,
            "high_availability": self.view.high_availability,
            "supports_update_certificate": self.view.supports_update_certificate,
            "vmm_state": self.computer.vmm_state,
            "certificates": self.certificates_json(),
            "trusted": self.trusted,
            "trusted_people_thumbprints": list(self.trusted_thumbprints),
        }


def _output(step: str, output: ScriptOutput) -> str:
    first = (output.stderr or output.stdout).strip().splitlines()
    return first[0][:300] if first else "(no error text)"


def _read(runner: ScriptRunner, step: str, host: str, operation: str) -> str:
    try:
        output = runner.run(host, render_script(operation))
    except CollectError as exc:
        raise StepFailed(step, f"{operation} on {host}: {exc}") from exc
    if output.exit_code != 0:
        raise StepFailed(
            step, f"{operation} on {host}: exit code {output.exit_code}: {_output(step, output)}"
        )
    return output.stdout


def read_state(
    runner: ScriptRunner, host: str, vmm_server: str, *, step: str = planner.STEP_PREFLIGHT
) -> HostState:
    """Read the VMM server's view and TrustedPeople, then the computer's store.

    Raises ``StepFailed`` naming ``step`` when either end cannot be read, or when the VMM
    server no longer manages the computer.
    """
    try:
        managed = parse_managed_computers(_read(runner, step, vmm_server, "list-managed-computers"))
        view = view_from_result(vmm_server, managed)
        trusted_result = parse_trusted_certificates(
            _read(runner, step, vmm_server, "list-trusted-certificates")
        )
        collected = parse_collect_certificates(_read(runner, step, host, "collect-certificates"))
    except ScriptOutputError as exc:
        raise StepFailed(step, f"output broke the script contract: {exc}") from exc
    key = fqdn_key(host)
    is_server = key == fqdn_key(vmm_server)
    computer = next((c for c in view.managed if c.key == key), None)
    if computer is None:
        if not is_server:
            raise StepFailed(
                step,
                f"{vmm_server} does not manage {host} (any more): nothing to re-register",
                permanent=True,
            )
        # Whether VMM lists itself among its managed computers is not verified: do not
        # require it for the VMM server.
        computer = Computer(fqdn=host, role="vmm_server", vmm_server=vmm_server, is_vmm_server=True)
    elif is_server and not computer.is_vmm_server:
        computer = Computer(
            fqdn=computer.fqdn,
            role="vmm_server",
            vmm_server=vmm_server,
            vmm_state=computer.vmm_state,
            is_vmm_server=True,
        )
    try:
        certificates = stored_certificates(collected)
    except CollectError as exc:
        raise StepFailed(step, f"collect-certificates on {host}: {exc}") from exc
    copies = TrustedCopies.from_result(trusted_result)
    current = max(certificates, key=lambda c: c.info.not_after) if certificates else None
    trusted = trust_of(computer, current, copies)
    return HostState(
        computer=computer,
        view=view,
        certificates=certificates,
        trusted=trusted,
        trusted_thumbprints=tuple(sorted(copies.by_name.get(key, frozenset()))),
    )


def problems(state: HostState, *, now: float, min_validity: float) -> list[str]:
    return planner.freshness_problems(
        state.certificates,
        state.trusted,
        is_vmm_server=state.computer.is_vmm_server,
        now=now,
        min_validity=min_validity,
    )


def plan_steps(state: HostState, procedure: str, run_as_account: str) -> list[PlannedStep]:
    """The change steps of ``procedure`` for what ``state`` found, with their exact scripts."""
    server = state.view.vmm_server
    host = state.computer.fqdn
    if procedure == planner.UPDATE_CERTIFICATE:
        params: dict[str, object] = {"vmm_server": server}
        return [
            PlannedStep(
                planner.STEP_UPDATE, server, params, render_script("update-vmm-certificate", params)
            )
        ]
    thumbprints = [c.info.thumbprint.upper() for c in state.certificates]
    if len(thumbprints) > MAX_THUMBPRINTS:
        raise StepFailed(
            planner.STEP_PREFLIGHT,
            f"{len(thumbprints)} SCVMM certificates on {host}: more than the "
            f"{MAX_THUMBPRINTS} one call may remove; clean the store by hand",
            permanent=True,
        )
    steps: list[PlannedStep] = []
    if thumbprints:
        remove_params: dict[str, object] = {"thumbprints": thumbprints}
        steps.append(
            PlannedStep(
                planner.STEP_REMOVE,
                host,
                remove_params,
                render_script("remove-certificates", remove_params),
            )
        )
    else:
        steps.append(
            PlannedStep(
                planner.STEP_REMOVE,
                host,
                {},
                "",
                skip_reason="no SCVMM certificate in LocalMachine\\My: nothing to remove",
            )
        )
    register: dict[str, object] = {"computer": host, "run_as_account": run_as_account}
    steps.append(
        PlannedStep(
            planner.STEP_REGISTER,
            server,
            register,
            render_script("register-managed-computer", register),
        )
    )
    return steps


def run_step(runner: ScriptRunner, step: PlannedStep, timeout: float) -> dict[str, Any]:
    """Run one change step; its parsed result, or ``StepFailed``."""
    try:
        output = runner.run(step.target, step.script, timeout=timeout)
    except CollectError as exc:
        raise StepFailed(
            step.name, f"on {step.target}: {exc}", unknown=exc.reason not in _NOT_SENT
        ) from exc
    if step.name == planner.STEP_REMOVE:
        if output.exit_code != 0:
            raise StepFailed(
                step.name,
                f"on {step.target}: exit code {output.exit_code}: {_output(step.name, output)}",
            )
        try:
            removed = parse_remove_result(output.stdout)
        except ScriptOutputError as exc:
            raise StepFailed(step.name, f"on {step.target}: {exc}", unknown=True) from exc
        return {"removed": list(removed.removed)}
    # register / update print {"status": "Failed", ...} and exit 1: stdout first.
    try:
        job = parse_job_result(output.stdout, step.name)
    except ScriptOutputError as exc:
        if output.exit_code != 0:
            raise StepFailed(
                step.name,
                f"on {step.target}: exit code {output.exit_code}: {_output(step.name, output)}",
            ) from exc
        raise StepFailed(step.name, f"on {step.target}: {exc}", unknown=True) from exc
    if job.status != "Completed":
        raise StepFailed(step.name, f"on {step.target}: VMM reported: {job.error}")
    if output.exit_code != 0:
        raise StepFailed(
            step.name,
            f"on {step.target}: status Completed but exit code {output.exit_code}",
            unknown=True,
        )
    return {"status": job.status}


def describe_certificates(certificates: Sequence[StoredCertificate]) -> str:
    if not certificates:
        return "no SCVMM certificate"
    return ", ".join(
        f"{c.info.thumbprint} (NotAfter {iso(c.info.not_after.timestamp())})" for c in certificates
    )
