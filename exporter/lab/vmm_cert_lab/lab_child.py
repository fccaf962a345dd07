"""A lab in a process of its own: ``vmm-cert-exporter lab ... --write-config PATH``.

For a test whose own side (the receiver's engine and its WinRM client) fills this process:
the lab's work then runs beside it instead of taking turns with it under one interpreter
lock, as a real fleet's computers do their own work. A harness needs from it what it needs
from an in-process ``RunningLab``: the configuration it wrote and its URL; the fleet's state
is read through the control API (``/lab/``), the one way into another process.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vmm_cert_lab.processes import Process, Processes

# what the lab prints last once it serves (fleet/cli.py)
_READY = "computers:"


class LabChild:
    """A started lab process: where it listens and what it wrote."""

    def __init__(self, process: Process, config: Path) -> None:
        self.process = process
        self.config = config
        written = yaml.safe_load(config.read_text(encoding="utf-8"))
        endpoint = str(written["winrm"]["endpoint"])
        self.url = endpoint[: endpoint.index("/wsman/")]
        self.control_url = self.url + "/lab"
        self._run_as_account = str(written["receiver"]["run_as_account"])

    @classmethod
    def start(
        cls, processes: Processes, directory: Path, *args: str, timeout: float = 120.0
    ) -> LabChild:
        """``vmm-cert-exporter lab ARGS`` (``--scenario big-cohort --hosts N``...), stopped
        with ``processes``; returns once it serves."""
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "lab.yml"
        process = processes.exporter(
            "lab", *args, "--write-config", str(config), log=directory / "lab.log"
        )
        process.wait_until(
            lambda: _printed(process, _READY) is not None, "the lab to serve", timeout
        )
        return cls(process, config)

    def write_config(self, path: str | os.PathLike[str]) -> Path:
        """The lab's configuration at ``path`` (its password file stays the lab's)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.config, target)
        return target

    def run_as_accounts(self) -> list[str]:
        """The Run As account the lab's configuration names (as ``Fleet.run_as_accounts``)."""
        return [self._run_as_account]

    def control(self, method: str, path: str) -> Any:
        """One control API request (``GET``, ``/computers``); the parsed JSON answer (an
        error status raises ``urllib.error.HTTPError``)."""
        request = urllib.request.Request(self.control_url + path, method=method)  # noqa: S310 - the lab's loopback URL
        with urllib.request.urlopen(request, timeout=60.0) as response:  # noqa: S310
            return json.loads(response.read())

    def list_computers(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "/computers"))

    def describe(self, host: str) -> dict[str, Any]:
        return dict(self.control("GET", "/computers/" + urllib.parse.quote(host, safe="")))


def _printed(process: Process, prefix: str) -> str | None:
    """The rest of the first line of the lab's log that starts with ``prefix``, if any."""
    if process.log_path is None or not process.log_path.exists():
        return None
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None
