"""Reading a computer's renewal state and running one change step, over WinRM.

Everything that reaches PowerShell goes through ``powershell.render_script``: parameters
travel as base64 JSON on the script's second line, never as PowerShell text. Reading reuses
the exporter's parsers, its TrustedPeople logic (``trust.py``) and its reading of a store
(``sources.winrm.stored_certificates``), so the receiver judges a certificate exactly as the
exporter that raised the alert did.

Nothing here touches the journal: ``engine`` journals around these calls, and
``renew`` (dry run) uses them without a journal at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from vmm_cert_exporter import failures
from vmm_cert_exporter.failures import CollectError
from vmm_cert_exporter.inventory import Computer, VmmView, fqdn_key, view_from_result
from vmm_cert_exporter.powershell import MAX_THUMBPRINTS, render_script, validate_params
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
    parse_run_as_matches,
    parse_trusted_certificates,
)
from vmm_cert_exporter.snapshot import StoredCertificate
from vmm_cert_exporter.sources.winrm import stored_certificates
from vmm_cert_exporter.trust import TrustedCopies, trust_of

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

    host: str  # the name the certificates were read from (and are removed on)
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
            # the invariant State decides; its translated StateString is for people only
            "vmm_state": self.computer.vmm_state,
            "vmm_state_display": self.computer.vmm_state_display,
            "certificates": self.certificates_json(),
            "trusted": self.trusted,
            "trusted_people_thumbprints": list(self.trusted_thumbprints),
        }


def vmm_state_text(computer: Computer) -> str:
    """VMM's state of ``computer`` for a person: the invariant name, and VMM's own
    (possibly translated) text beside it when that differs."""
    state = computer.vmm_state or "unknown"
    display = computer.vmm_state_display
    return f"{state} ({display})" if display and display != state else state


def _read(runner: ScriptRunner, step: str, host: str, operation: str, **params: object) -> str:
    try:
        output = runner.run(host, render_script(operation, params or None))
    except CollectError as exc:
        raise StepFailed(step, f"{operation} on {host}: {exc}") from exc
    failure = output.failure()
    if failure is not None:
        raise StepFailed(step, f"{operation} on {host}: {failure}")
    return output.stdout


def _only(name: str) -> dict[str, object]:
    """The per-computer filter of the VMM server's lists, so that a renewal's reads do not
    grow with the fleet. The scripts keep a superset of what concerns ``name`` (the VMM
    server's own entries included) and the decisions stay here, on the whole rule. A name
    the filter cannot carry (not a DNS name) reads the whole lists, as the exporter does."""
    key = fqdn_key(name)
    try:
        validate_params("list-managed-computers", {"computer": key})
    except ValueError:
        return {}
    return {"computer": key}


def _find(view: VmmView, host: str) -> Computer | None:
    """``host`` as VMM lists it now. A name of the VMM server that VMM does not list (the
    configured alias, the clustered role name) stands for VMM's own entry when there is
    one, so that a register names the computer as VMM knows it. (``view_from_result`` has
    marked every listed name of the VMM server as such.)"""
    key = fqdn_key(host)
    listed = next((c for c in view.managed if c.key == key), None)
    if listed is not None or not view.is_server_name(host):
        return listed
    if not view.is_highly_available:
        own = fqdn_key(view.reported_name)
        listed = next((c for c in view.managed if c.key == own), None)
        if listed is not None:
            return listed
    # Whether VMM lists itself among its managed computers is not verified: do not
    # require it for the VMM server.
    return Computer(fqdn=host, role="vmm_server", vmm_server=view.vmm_server, is_vmm_server=True)


def read_state(
    runner: ScriptRunner, host: str, vmm_server: str, *, step: str = planner.STEP_PREFLIGHT
) -> HostState:
    """Read the VMM server's view and TrustedPeople, then the computer's store.

    Raises ``StepFailed`` naming ``step`` when either end cannot be read, or when the VMM
    server no longer manages the computer.
    """
    try:
        managed = parse_managed_computers(
            _read(runner, step, vmm_server, "list-managed-computers", **_only(host))
        )
        view = view_from_result(vmm_server, managed)
        computer = _find(view, host)
        # TrustedPeople is searched for the name VMM lists the computer by: the one the
        # copies are matched to.
        trusted_result = parse_trusted_certificates(
            _read(
                runner,
                step,
                vmm_server,
                "list-trusted-certificates",
                **_only(computer.fqdn if computer is not None else host),
            )
        )
        collected = parse_collect_certificates(_read(runner, step, host, "collect-certificates"))
    except ScriptOutputError as exc:
        raise StepFailed(step, f"output broke the script contract: {exc}") from exc
    if computer is None:
        raise StepFailed(
            step,
            f"{vmm_server} does not manage {host} (any more): nothing to re-register",
            permanent=True,
        )
    try:
        certificates = stored_certificates(collected)
    except CollectError as exc:
        raise StepFailed(step, f"collect-certificates on {host}: {exc}") from exc
    copies = TrustedCopies.from_result(trusted_result)
    current = max(certificates, key=lambda c: c.info.not_after) if certificates else None
    trusted = trust_of(computer, current, copies)
    return HostState(
        host=host,
        computer=computer,
        view=view,
        certificates=certificates,
        trusted=trusted,
        trusted_thumbprints=tuple(sorted(copies.by_name.get(computer.key, frozenset()))),
    )


def check_run_as_account(
    runner: ScriptRunner, vmm_server: str, name: str, *, step: str = planner.STEP_PREFLIGHT
) -> None:
    """``find-run-as-account`` on the VMM server: ``StepFailed`` (permanent) unless exactly
    one account carries ``name``. Read-only, so preflight runs it before anything is deleted:
    a register that cannot pick its account would otherwise fail behind the delete."""
    try:
        found = parse_run_as_matches(
            _read(runner, step, vmm_server, "find-run-as-account", run_as_account=name)
        )
    except ScriptOutputError as exc:
        raise StepFailed(step, f"output broke the script contract: {exc}") from exc
    problem = planner.run_as_problem(name, found.matches)
    if problem is not None:
        raise StepFailed(step, f"{problem} (find-run-as-account on {vmm_server})", permanent=True)


def problems(state: HostState, *, now: float, min_validity: float) -> list[str]:
    return planner.freshness_problems(
        state.certificates,
        state.trusted,
        is_vmm_server=state.computer.is_vmm_server,
        now=now,
        min_validity=min_validity,
    )


def plan_steps(state: HostState, procedure: str, run_as_account: str) -> list[PlannedStep]:
    """The change steps of ``procedure`` for what ``state`` found, with their exact scripts.

    The certificates are removed on the name they were read from; the register names the
    computer as VMM lists it.
    """
    server = state.view.vmm_server
    host = state.host
    if procedure == planner.UPDATE_CERTIFICATE:
        params: dict[str, object] = {"vmm_server": server}
        return [
            PlannedStep(
                planner.STEP_UPDATE, server, params, render_script("update-vmm-certificate", params)
            )
        ]
    if state.computer.is_vmm_server and state.view.is_highly_available:
        # the last point before a script is rendered: never procedure 1 on an HA VMM server
        raise StepFailed(planner.STEP_PREFLIGHT, planner.NO_PROCEDURE_HA, permanent=True)
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
    register: dict[str, object] = {
        "computer": state.computer.fqdn,
        "run_as_account": run_as_account,
    }
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
        failure = output.failure()
        if failure is not None:
            raise StepFailed(step.name, f"on {step.target}: {failure}")
        try:
            removed = parse_remove_result(output.stdout)
        except ScriptOutputError as exc:
            raise StepFailed(step.name, f"on {step.target}: {exc}", unknown=True) from exc
        return {"removed": list(removed.removed)}
    # register / update print {"status": "Failed", ...} and exit 1: stdout first.
    try:
        job = parse_job_result(output.stdout, step.name)
    except ScriptOutputError as exc:
        failure = output.failure()
        if failure is not None:
            raise StepFailed(step.name, f"on {step.target}: {failure}") from exc
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
