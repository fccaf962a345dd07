"""What to do for one computer, and whether there is anything to do: pure decisions, no I/O.

It chooses between the support article's two procedures (``remove-register``,
``update-vmm-certificate``) and is the one place that says what "fresh" means, for
preflight and verification alike (VMM's TrustedPeople copy counts for the VMM server only
when VMM keeps one: ``trust.trust_of``): docs/renewal.md ("The runbooks")."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Protocol

from vmm_cert_exporter.inventory import Computer, VmmView, fqdn_key
from vmm_cert_exporter.snapshot import StoredCertificate

REMOVE_REGISTER: Final = "remove-register"
UPDATE_CERTIFICATE: Final = "update-vmm-certificate"
PROCEDURES: Final = (REMOVE_REGISTER, UPDATE_CERTIFICATE)

# Step names: the change steps are the contract operations they run.
STEP_PREFLIGHT: Final = "preflight"
STEP_REMOVE: Final = "remove-certificates"
STEP_REGISTER: Final = "register-managed-computer"
STEP_UPDATE: Final = "update-vmm-certificate"
STEP_VERIFY: Final = "verify"
STEPS: Final = (STEP_PREFLIGHT, STEP_REMOVE, STEP_REGISTER, STEP_UPDATE, STEP_VERIFY)

DAY: Final = 86400.0

# The versions from which Update-SCVMMCertificate exists (the support article).
UPDATE_ROLLUP: Final = "apply the update rollup (VMM 2016 UR10, 2019 UR2, 2022 RTM or later)"
NO_PROCEDURE_HA: Final = (
    "no supported procedure: a highly available VMM server may only be renewed with "
    "Update-SCVMMCertificate (removing and re-registering it must never run on any of its "
    f"names), and this VMM server does not have it or did not say: {UPDATE_ROLLUP}, "
    "then renew"
)


def deciding_view(computer: Computer, views: Mapping[str, VmmView]) -> VmmView | None:
    """The VMM view that decides for ``computer``: that of the VMM server it is a name of,
    else that of the VMM server managing it (None when neither is known).

    A name of one VMM server may be reported by another that manages it as a host; it is
    still that VMM server's, and only its own procedure applies.
    """
    for view in views.values():
        if view.is_server_name(computer.fqdn):
            return view
    if computer.vmm_server is None:
        return None
    return views.get(fqdn_key(computer.vmm_server))


def is_server_name(computer: Computer, view: VmmView | None) -> bool:
    """Whether ``computer`` is one of the names of ``view``'s VMM server."""
    return computer.is_vmm_server or (view is not None and view.is_server_name(computer.fqdn))


def choose_procedure(computer: Computer, view: VmmView | None) -> tuple[str | None, str]:
    """The procedure for ``computer`` given the deciding view: (procedure, why).

    ``None`` means no procedure may be used. Without a view (discovery has not reached the
    VMM server yet) a name of the VMM server is planned with procedure 2 provisionally:
    preflight re-decides with a fresh view before anything changes, so procedure 1 is
    only ever chosen from what VMM itself said.
    """
    if not is_server_name(computer, view):
        return REMOVE_REGISTER, "managed computer: procedure 1 (remove, then re-register)"
    if view is None:
        return UPDATE_CERTIFICATE, "VMM server, version not known yet: decided again at preflight"
    server = view.reported_name or view.vmm_server
    name = "" if fqdn_key(computer.fqdn) == fqdn_key(server) else f" ({computer.fqdn})"
    if view.supports_update_certificate:
        return UPDATE_CERTIFICATE, (
            f"VMM server {server}{name}, version {view.version}, has "
            "Update-SCVMMCertificate: procedure 2"
        )
    if view.is_highly_available:
        return None, (
            f"VMM server {server}{name} is highly available, version {view.version}: "
            f"{NO_PROCEDURE_HA}"
        )
    return REMOVE_REGISTER, (
        f"VMM server {server}{name}, version {view.version}, not highly available, without "
        "Update-SCVMMCertificate (or it did not say): procedure 1 on itself"
    )


@dataclass(frozen=True)
class RenewalTarget:
    """What the inventory says about renewing one computer, before anything is read."""

    computer: Computer  # a name of a VMM server as such (role vmm_server), whatever configured
    vmm_server: str | None  # the configured VMM server whose scripts renew it
    procedure: str | None
    why: str


def renewal_target(computer: Computer, views: Mapping[str, VmmView]) -> RenewalTarget:
    """Intake's (and ``renew``'s) decision for ``computer``; preflight decides again."""
    view = deciding_view(computer, views)
    if is_server_name(computer, view):
        # policy (allow_roles) sees a VMM server's every name as the VMM server
        computer = replace(computer, role="vmm_server", is_vmm_server=True)
    procedure, why = choose_procedure(computer, view)
    vmm_server = view.vmm_server if view is not None else computer.vmm_server
    return RenewalTarget(computer, vmm_server, procedure, why)


def run_as_problem(name: str, matches: int) -> str | None:
    """None when exactly one Run As account carries ``name``; else why procedure 1 may not
    start. Counted as the scripts select it: PowerShell's ``-eq`` (the whole name, any case,
    no wildcards), so the account that would be used is the one that was checked."""
    if matches == 1:
        return None
    if matches == 0:
        return (
            f"Run As account {name!r} not found: 0 accounts have exactly that name (whole "
            "name, any case, no wildcards); create it in VMM or correct "
            "receiver.run_as_account"
        )
    return (
        f"Run As account {name!r} is ambiguous: {matches} accounts have exactly that name "
        "(whole name, any case); rename all but one in VMM, or name a unique account in "
        "receiver.run_as_account"
    )


def _days(seconds: float) -> str:
    return f"{seconds / DAY:.1f} days"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def freshness_problems(
    certificates: Sequence[StoredCertificate],
    trusted: bool | None,
    *,
    is_vmm_server: bool,
    now: float,
    min_validity: float,
) -> list[str]:
    """Why the computer's certificate is not fresh; empty when it is.

    ``trusted`` is ``trust.trust_of``'s verdict: None means "nothing to compare", which
    is acceptable only for the VMM server (VMM may keep no copy of its own certificate).
    """
    problems: list[str] = []
    if not certificates:
        return ["no SCVMM certificate in LocalMachine\\My"]
    if len(certificates) != 1:
        problems.append(f"{len(certificates)} SCVMM certificates in LocalMachine\\My (expected 1)")
    current = max(certificates, key=lambda c: c.info.not_after)
    left = current.info.not_after.timestamp() - now
    if left < min_validity:
        problems.append(
            f"NotAfter {_iso(current.info.not_after)} is {_days(left)} away "
            f"(at least {_days(min_validity)} required)"
        )
    if trusted is False:
        problems.append(
            f"VMM's TrustedPeople holds no copy with thumbprint {current.info.thumbprint}"
        )
    elif trusted is None and not is_vmm_server:
        problems.append("VMM's TrustedPeople could not be compared")
    return problems


def host_allowed(
    fqdn: str,
    role: str,
    *,
    allow_hosts: Sequence[str],
    deny_hosts: Sequence[str],
    allow_roles: Sequence[str],
) -> str | None:
    """None when policy allows renewing ``fqdn``; else the reason it does not."""
    name = fqdn.lower()
    for pattern in deny_hosts:
        if fnmatch.fnmatchcase(name, pattern.lower()):
            return f"matches deny_hosts pattern {pattern!r}"
    if not any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in allow_hosts):
        return "matches no allow_hosts pattern"
    if role not in allow_roles:
        return f"role {role} is not in allow_roles ({', '.join(allow_roles) or 'none'})"
    return None


class HostPolicy(Protocol):
    """The receiver's allowlist: ``receiver.allow_hosts``, ``deny_hosts`` and ``allow_roles``."""

    @property
    def allow_hosts(self) -> Sequence[str]: ...
    @property
    def deny_hosts(self) -> Sequence[str]: ...
    @property
    def allow_roles(self) -> Sequence[str]: ...


def policy_refusal(policy: HostPolicy, computer: Computer) -> str | None:
    """``host_allowed`` for ``computer`` under the receiver's allowlist."""
    return host_allowed(
        computer.fqdn,
        computer.role,
        allow_hosts=policy.allow_hosts,
        deny_hosts=policy.deny_hosts,
        allow_roles=policy.allow_roles,
    )


@dataclass(frozen=True)
class PlannedStep:
    """One change step: the contract operation, where it runs, its parameters and script."""

    name: str
    target: str
    params: dict[str, object]
    script: str
    skip_reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "target": self.target,
            "params": self.params,
            "skip_reason": self.skip_reason,
            "script": self.script,
        }
