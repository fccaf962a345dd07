"""``lab --replay DIR``: serve what ``vmm-cert-exporter capture`` recorded, read-only.

A ``FleetModel`` whose computers are the capture's: each read-only call, recognised by its
contract header (this package's own ``powershell.parse_script``), gets the stdout, stderr and
exit code recorded for that computer and operation, byte for byte. A computer whose every
recorded call failed before a script ran fails the same way on the wire (connection reset,
no answer, 401, WS-Man AccessDenied, broken TLS); a single such call among answered ones
fails at its command (a WS-Management fault for ``auth`` and ``wsman_fault``, otherwise a
script error naming what was recorded). Every change operation is refused like a script that
throws. The capture layout is read with this module's own code (docs/capture.md).
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vmm_cert_lab.fleet import powershell as ps
from vmm_cert_lab.fleet.interfaces import Account, Execution, Faults
from vmm_cert_lab.fleet.scenario import DEFAULT_ACCOUNT
from vmm_cert_lab.fleet.wsman import WSManFault, access_denied

if TYPE_CHECKING:
    from vmm_cert_lab.fleet.runner import RunningLab

FORMAT = "vmm-cert-exporter-capture"
FORMAT_VERSION = 1
READ_ONLY = frozenset(
    {
        "collect-certificates",
        "list-managed-computers",
        "list-trusted-certificates",
        "find-run-as-account",
    }
)
# operations that print a status document on stdout before failing (docs/powershell-contract.md)
_STATUS_DOCUMENT = frozenset({"register-managed-computer", "update-vmm-certificate"})
_MAX_FILE = 64 << 20  # what the exporter's runner accepts from one call


class ReplayError(ValueError):
    """A directory that is not a capture this lab can serve; the message says why."""


@dataclass(frozen=True)
class Recorded:
    """One recorded call: the script's output, or why it failed before the script ran."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    reason: str | None = None
    detail: str = ""

    def summary(self) -> dict[str, Any]:
        if self.exit_code is None:
            return {"failure": {"reason": self.reason, "detail": self.detail}}
        return {
            "exit_code": self.exit_code,
            "stdout_bytes": len(self.stdout),
            "stderr_bytes": len(self.stderr),
        }


@dataclass
class _Computer:
    fqdn: str
    role: str | None
    vmm_server: str | None
    calls: dict[str, Recorded]
    faults: Faults = field(default_factory=Faults)


def _transport_faults(calls: dict[str, Recorded]) -> Faults:
    """The wire fault of a computer whose every call failed the same way before its script."""
    reasons = {c.reason for c in calls.values()}
    if not calls or any(c.exit_code is not None for c in calls.values()) or len(reasons) != 1:
        return Faults()
    reason = reasons.pop()
    if reason == "connect":
        return Faults(connection_refused=True)
    if reason == "timeout":
        return Faults(black_hole=True)
    if reason == "tls":
        return Faults(tls_error=True)
    if reason == "auth":
        denied = all(c.detail.lower().startswith("access denied") for c in calls.values())
        return Faults(access_denied=True) if denied else Faults(http_401=True)
    return Faults()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReplayError(f"{path}: not valid JSON: {exc}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_FILE:
            raise ReplayError(f"{path}: larger than {_MAX_FILE} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _recorded(path: Path) -> tuple[str, str, Recorded]:
    """(computer, operation, call) of one ``<operation>.json`` and its output files."""
    record = _read_json(path)
    if not isinstance(record, dict):
        raise ReplayError(f"{path}: expected a JSON object")
    computer, operation = record.get("computer"), record.get("operation")
    if not isinstance(computer, str) or not computer:
        raise ReplayError(f"{path}: 'computer' must be the computer's name")
    if operation != path.stem:
        raise ReplayError(f"{path}: 'operation' must be {path.stem!r}, got {operation!r}")
    exit_code, failure = record.get("exit_code"), record.get("failure")
    if isinstance(exit_code, int) and not isinstance(exit_code, bool):
        stdout = _read_bytes(path.with_suffix(".stdout"))
        stderr = _read_bytes(path.with_suffix(".stderr"))
        return computer, operation, Recorded(exit_code, stdout, stderr)
    if isinstance(failure, dict) and isinstance(failure.get("reason"), str):
        detail = failure.get("detail")
        return computer, operation, Recorded(None, reason=failure["reason"], detail=str(detail))
    raise ReplayError(f"{path}: expected 'exit_code' (an integer) or 'failure' with a 'reason'")


class ReplayFleet:
    """A capture, served as a fleet; implements ``interfaces.FleetModel``. Thread-safe."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        manifest = _read_json(self.directory / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ReplayError(f"{self.directory}: not a capture (manifest.json has no format)")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ReplayError(
                f"{self.directory}: capture format version {manifest.get('format_version')!r}; "
                f"this lab reads version {FORMAT_VERSION}"
            )
        self.manifest = manifest
        self._lock = threading.Lock()
        self._computers: dict[str, _Computer] = {}
        members = {
            str(m["fqdn"]).lower(): m
            for m in manifest.get("computers", [])
            if isinstance(m, dict) and isinstance(m.get("fqdn"), str)
        }
        folder = self.directory / "computers"
        for path in sorted(folder.glob("*/*.json")) if folder.is_dir() else []:
            name, operation, call = _recorded(path)
            key = name.lower()
            if key not in self._computers:
                member = members.get(key, {})
                self._computers[key] = _Computer(
                    name, member.get("role"), member.get("vmm_server"), {}
                )
            self._computers[key].calls[operation] = call
        if not self._computers:
            raise ReplayError(f"{self.directory}: the capture holds no recorded call")
        for computer in self._computers.values():
            computer.faults = _transport_faults(computer.calls)

    # --- what the runner and --write-config read -----------------------------------------

    def vmm_servers(self) -> list[tuple[str, bool]]:
        """The configured VMM servers of the capture: (host, discover)."""
        return [
            (str(s["host"]), bool(s.get("discover", True)))
            for s in self.manifest.get("vmm_servers", [])
            if isinstance(s, dict) and isinstance(s.get("host"), str)
        ]

    def static_hosts(self) -> list[tuple[str, str]]:
        return [
            (str(h["host"]), str(h.get("role", "hyperv_host")))
            for h in self.manifest.get("hosts", [])
            if isinstance(h, dict) and isinstance(h.get("host"), str)
        ]

    def vmm_server_fqdns(self) -> list[str]:
        return [host for host, _ in self.vmm_servers()]

    # --- FleetModel: identity, accounts, faults ------------------------------------------

    def accounts(self) -> list[Account]:
        return [DEFAULT_ACCOUNT]

    def has_computer(self, fqdn: str) -> bool:
        return fqdn.lower() in self._computers

    def _get(self, fqdn: str) -> _Computer:
        try:
            return self._computers[fqdn.lower()]
        except KeyError:
            raise KeyError(f"unknown computer {fqdn!r}") from None

    def faults(self, fqdn: str) -> Faults:
        with self._lock:
            return replace(self._get(fqdn).faults)

    def set_faults(self, fqdn: str, faults: Faults) -> None:
        with self._lock:
            self._get(fqdn).faults = replace(faults)

    # --- the script contract -------------------------------------------------------------

    def run_powershell(self, fqdn: str, script: str) -> Execution:
        with self._lock:
            computer = self._get(fqdn)
            faults = replace(computer.faults)
        try:
            call = ps.parse_script(script)
        except ps.ScriptFailure as failure:
            return failure.execution
        if call.operation not in READ_ONLY:
            return _refused(call)
        if faults.script_error:
            return ps.drive_not_found(script)
        recorded = computer.calls.get(call.operation)
        if recorded is None:
            return ps.thrown_error(
                f"vmm-cert-exporter replay: the capture holds no answer of {computer.fqdn} "
                f"to {call.operation}",
                script,
            )
        if recorded.exit_code is None:
            return _failed_before_script(recorded, script)
        stdout = ps.garbage_stdout() if faults.garbage_stdout else recorded.stdout
        stderr = ps.clixml_progress() if faults.progress_only_stderr else recorded.stderr
        return Execution(stdout=stdout, stderr=stderr, exit_code=recorded.exit_code)

    def run_command(self, fqdn: str, command: str, arguments: list[str]) -> Execution:
        real = self._get(fqdn).fqdn
        if command.strip().lower().removesuffix(".exe") == "powershell":
            script = ps.decode_encoded_command(arguments)
            if script is not None:
                return self.run_powershell(fqdn, script)
        return ps.run_cmd(real, command, arguments)

    # --- control API: read, never change -------------------------------------------------

    def clock_info(self) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return {
            "now": now,
            "offset_seconds": 0.0,
            "replay": str(self.directory),
            "captured_at": self.manifest.get("captured_at"),
        }

    def set_clock(self, *, offset_seconds: float | None, advance_seconds: float | None) -> None:
        raise ValueError(
            "a replay serves recorded certificates: moving the clock would change nothing they "
            "say (the exporter measures expiry against its own clock)"
        )

    def list_computers(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._summary(c) for c in self._computers.values()]

    def _summary(self, computer: _Computer) -> dict[str, Any]:
        return {
            "fqdn": computer.fqdn,
            "role": computer.role,
            "managed_by": computer.vmm_server,
            "calls": {op: call.summary() for op, call in sorted(computer.calls.items())},
        }

    def describe(self, fqdn: str) -> dict[str, Any]:
        with self._lock:
            computer = self._get(fqdn)
            return {**self._summary(computer), "faults": computer.faults.to_dict()}

    def add_computer(self, spec: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(_READ_ONLY_CONTROL)

    def remove_computer(self, fqdn: str) -> None:
        self._get(fqdn)
        raise ValueError(_READ_ONLY_CONTROL)

    def delete_certificates(self, fqdn: str) -> list[str]:
        self._get(fqdn)
        raise ValueError(_READ_ONLY_CONTROL)

    def renew(self, fqdn: str) -> dict[str, Any]:
        self._get(fqdn)
        raise ValueError(_READ_ONLY_CONTROL)

    def set_trusted_mismatch(self, fqdn: str) -> None:
        self._get(fqdn)
        raise ValueError(_READ_ONLY_CONTROL)


_READ_ONLY_CONTROL = "a replay is read-only: it serves what the capture recorded (faults excepted)"


def _refused(call: ps.ContractCall) -> Execution:
    """A change refused as a script that throws; status operations print their document too."""
    message = (
        f"vmm-cert-exporter replay: {call.operation} would change the computer; "
        "this lab replays a capture and is read-only"
    )
    failed = ps.thrown_error(message, call.script)
    if call.operation in _STATUS_DOCUMENT:
        document = {"schema": ps.SCHEMA, "status": "Failed", "error": message}
        return replace(failed, stdout=ps.json_stdout(document))
    return failed


def _failed_before_script(recorded: Recorded, script: str) -> Execution:
    """A recorded transport failure of one call among answered ones, at its command."""
    if recorded.reason == "auth":
        raise access_denied()
    if recorded.reason == "wsman_fault":
        raise WSManFault(
            "w:InternalError",
            f"replayed from the capture: {recorded.detail} ",
            sender=False,
        )
    return ps.thrown_error(
        f"vmm-cert-exporter replay: when captured, this call failed before its script ran "
        f"({recorded.reason}: {recorded.detail})",
        script,
    )


def load_replay(directory: str | Path) -> ReplayFleet:
    path = Path(directory)
    if not path.is_dir():
        raise ReplayError(f"{path}: not a directory (expected a capture's directory)")
    return ReplayFleet(path)


def replay_from_args(args: argparse.Namespace) -> ReplayFleet | None:
    """The fleet of ``--replay DIR``, or None without it; ReplayError for a bad combination."""
    directory = getattr(args, "replay", None)
    if directory is None:
        return None
    if getattr(args, "hosts", None) is not None or getattr(args, "scenario", "demo") != "demo":
        raise ReplayError(
            "a replay serves a capture: it cannot be combined with --scenario or --hosts"
        )
    if getattr(args, "locale", None) is not None:
        raise ReplayError("a replay answers with the recorded text: --locale does not apply")
    return load_replay(directory)


def write_replay_config(lab: RunningLab, replay: ReplayFleet, path: str | Path) -> Path:
    """The lab's usual config (account, endpoint, receiver), with the capture's VMM servers
    and static hosts: the exporter then asks the replay what it asked the fleet."""
    target = lab.write_config(path)
    header, _, body = target.read_text(encoding="utf-8").partition("\n")
    config = yaml.safe_load(body)
    config["vmm_servers"] = [{"host": h, "discover": d} for h, d in replay.vmm_servers()]
    hosts = replay.static_hosts()
    if hosts:
        config["hosts"] = [{"host": h, "role": r} for h, r in hosts]
    note = f"# Replaying the capture in {replay.directory.resolve()}\n"
    target.write_text(header + "\n" + note + yaml.safe_dump(config, sort_keys=False), "utf-8")
    return target
