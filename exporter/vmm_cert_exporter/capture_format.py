"""A capture directory: what one run of every read-only operation recorded, and its layout.

The layout is a contract (docs/capture.md) read by ``lab --replay`` with the lab's own code:

    DIR/manifest.json                                   the run: version, time, fleet, summary
    DIR/computers/<computer>/<operation>.json           one call: exit code, or why it failed
    DIR/computers/<computer>/<operation>.stdout|.stderr the bytes the script wrote (if it ran)

A capture is written into a sibling temporary directory (mode 0700, like the capture it becomes)
and renamed into place at the end, so an interrupted run never leaves something that looks like
a complete capture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

FORMAT: Final = "vmm-cert-exporter-capture"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
COMPUTERS: Final = "computers"
# the read-only operations a capture runs; find-run-as-account needs a parameter, so it is not
OPERATIONS: Final = ("list-managed-computers", "list-trusted-certificates", "collect-certificates")


class CaptureDirError(Exception):
    """The output directory cannot take a capture; the message says why and what to do."""


@dataclass(frozen=True)
class Call:
    """One operation on one computer: the script's output, or why no script ran."""

    computer: str
    operation: str
    duration: float
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None  # None: the call failed before the script ran
    failure_reason: str | None = None
    failure_detail: str | None = None

    @property
    def answered(self) -> bool:
        return self.exit_code is not None


@dataclass(frozen=True)
class Member:
    """A computer of the inventory the capture read, with what the exporter knows of it."""

    fqdn: str
    role: str
    vmm_server: str | None
    method: str


@dataclass(frozen=True)
class Skipped:
    computer: str
    operation: str
    why: str


@dataclass
class Capture:
    """Everything one capture recorded, in memory until it is written."""

    captured_at: float
    duration: float
    exporter_version: str
    winrm: dict[str, Any]  # transport, https, timeout: no endpoint, no account
    concurrency: int
    vmm_servers: list[tuple[str, bool]]  # configured: (host, discover)
    hosts: list[tuple[str, str]]  # configured static hosts: (host, role)
    members: list[Member]
    calls: list[Call]
    skipped: list[Skipped] = field(default_factory=list)
    redacted: bool = False

    def summary(self) -> dict[str, Any]:
        failed = Counter(str(c.failure_reason) for c in self.calls if not c.answered)
        return {
            "computers": len({c.computer.lower() for c in self.calls}),
            "calls": len(self.calls),
            "answered": sum(1 for c in self.calls if c.answered),
            "exit_nonzero": sum(1 for c in self.calls if c.answered and c.exit_code != 0),
            "failed": dict(sorted(failed.items())),
            "skipped": len(self.skipped),
        }

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "exporter_version": self.exporter_version,
            "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.captured_at)),
            "duration_seconds": round(self.duration, 3),
            "redacted": self.redacted,
            "operations": list(OPERATIONS),
            "winrm": self.winrm,
            "concurrency": self.concurrency,
            "vmm_servers": [{"host": h, "discover": d} for h, d in self.vmm_servers],
            "hosts": [{"host": h, "role": r} for h, r in self.hosts],
            "computers": [
                {"fqdn": m.fqdn, "role": m.role, "vmm_server": m.vmm_server, "method": m.method}
                for m in self.members
            ],
            "skipped": [
                {"computer": s.computer, "operation": s.operation, "why": s.why}
                for s in self.skipped
            ],
            "summary": self.summary(),
        }


def call_record(call: Call) -> dict[str, Any]:
    record: dict[str, Any] = {
        "computer": call.computer,
        "operation": call.operation,
        "duration_seconds": round(call.duration, 3),
    }
    if call.answered:
        record["exit_code"] = call.exit_code
    else:
        record["failure"] = {"reason": call.failure_reason, "detail": call.failure_detail}
    return record


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _is_capture(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def prepare(directory: Path, *, force: bool) -> Path:
    """Check that ``directory`` may receive a capture, before the fleet is contacted.

    Returns the temporary sibling the capture is written into. A directory that is not empty
    is refused, except an earlier capture with ``force``: nothing else is ever overwritten.
    """
    if directory.exists():
        if not directory.is_dir():
            raise CaptureDirError(f"{directory}: exists and is not a directory")
        if any(directory.iterdir()):
            if not _is_capture(directory):
                raise CaptureDirError(
                    f"{directory}: not empty and not a capture: choose a new or empty directory"
                )
            ours = (MANIFEST, COMPUTERS)
            extra = sorted(p.name for p in directory.iterdir() if p.name not in ours)
            if extra:
                raise CaptureDirError(
                    f"{directory}: holds an earlier capture and other files ({', '.join(extra)}): "
                    "choose a new directory"
                )
            if not force:
                raise CaptureDirError(
                    f"{directory}: holds an earlier capture: add --force to replace it, "
                    "or choose a new directory"
                )
    parent = directory.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=parent))
    except OSError as exc:
        raise CaptureDirError(f"{directory}: cannot write there: {exc.strerror or exc}") from None


def write(capture: Capture, staging: Path, directory: Path) -> None:
    """Write the capture into ``staging``, then put it in place of ``directory``."""
    for call in capture.calls:
        folder = staging / COMPUTERS / safe_name(call.computer)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{call.operation}.json").write_bytes(_dump(call_record(call)))
        if call.answered:
            (folder / f"{call.operation}.stdout").write_bytes(call.stdout)
            (folder / f"{call.operation}.stderr").write_bytes(call.stderr)
    (staging / MANIFEST).write_bytes(_dump(capture.manifest()))
    if directory.exists():
        # an empty directory, or an earlier capture (checked by prepare)
        shutil.rmtree(directory)
    os.replace(staging, directory)


def safe_name(computer: str) -> str:
    """The folder of a computer: its name in lower case (FQDNs are validated DNS names)."""
    name = computer.strip().rstrip(".").lower()
    if not name or name in (".", "..") or any(ch in name for ch in "/\\\0"):
        raise ValueError(f"not a computer name: {computer!r}")
    return name
