"""What to do for one computer, and whether there is anything to do: pure decisions, no I/O.

The support article's two procedures (docs/renewal.md):

- ``remove-register`` (procedure 1, any managed computer, the VMM server included): delete
  the SCVMM certificate(s) from the computer's ``LocalMachine\\My`` by thumbprint, then
  ``Register-SCVMMManagedComputer`` on its VMM server with a Run As account named in VMM.
- ``update-vmm-certificate`` (procedure 2, the VMM server only, on versions that have
  ``Update-SCVMMCertificate``). For a highly available VMM server it is the only supported
  method: without it, nothing is done.

"Fresh" is defined once, here, for preflight and verification alike: exactly one SCVMM
certificate, NotAfter at least ``min_validity`` away, and VMM's TrustedPeople copy matching
its thumbprint (for the VMM server only when VMM keeps a self-copy; see collection.trust_of).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from vmm_cert_exporter.inventory import Computer, VmmView
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

NO_PROCEDURE_HA: Final = (
    "no supported procedure: a highly available VMM server can only be renewed with "
    "Update-SCVMMCertificate (VMM 2016 UR10+, 2019 UR2+, 2022, 2025), which this VMM version "
    "does not have; upgrade VMM, then renew (never remove and re-add a VMM server)"
)


def choose_procedure(computer: Computer, view: VmmView | None) -> tuple[str | None, str]:
    """The procedure for ``computer`` given its VMM server's view: (procedure, why).

    ``None`` means no procedure may be used. Without a view (discovery has not reached the
    VMM server yet) a VMM server gets procedure 1 provisionally: preflight re-decides with
    a fresh view before anything changes.
    """
    if not computer.is_vmm_server:
        return REMOVE_REGISTER, "managed computer: procedure 1 (remove, then re-register)"
    if view is None:
        return REMOVE_REGISTER, "VMM server, version not known yet: decided again at preflight"
    if view.supports_update_certificate:
        return UPDATE_CERTIFICATE, (
            f"VMM server {view.version} has Update-SCVMMCertificate: procedure 2"
        )
    if view.high_availability:
        return None, NO_PROCEDURE_HA
    return REMOVE_REGISTER, (
        f"VMM server {view.version} without Update-SCVMMCertificate (or it did not say): "
        "procedure 1 on itself"
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

    ``trusted`` is ``collection.trust_of``'s verdict: None means "nothing to compare", which
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
