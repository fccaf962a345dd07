"""Shared lab fixtures: a light in-test FleetModel and running LabServers around it.

The light model answers canned executions so transport tests do not depend on the real
Windows/VMM model; tests of the real model run the demo scenario through the same server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from vmm_cert_lab.fleet.interfaces import Account, Execution, Faults, FleetModel
from vmm_cert_lab.fleet.server import LabServer

ACCOUNT = Account("LAB", "svc-vmmcert", "Lab-Passw0rd!")

CLIXML_ERROR = (
    b"#< CLIXML\r\n"
    b'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<S S="Error">boom: the script failed_x000D__x000A_</S>'
    b'<S S="Error">at line 1_x000D__x000A_</S></Objs>'
)


class LightFleet:
    """A FleetModel with canned answers: enough to exercise every transport path.

    Scripts understood by ``run_powershell``:
    ``big:N`` -> N bytes of stdout; ``fail`` -> CLIXML error record, exit 1; ``exit:N`` ->
    exit code N; ``both:N`` -> N bytes on stdout and N on stderr; anything else -> JSON echo.
    """

    def __init__(self, hosts: int = 3, accounts: list[Account] | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = {f"hv{i:04d}.lab.example": Faults() for i in range(1, hosts + 1)}
        self._accounts = accounts or [ACCOUNT]
        self.offset = 0.0
        self.commands: list[tuple[str, str, list[str]]] = []

    def accounts(self) -> list[Account]:
        return list(self._accounts)

    def has_computer(self, fqdn: str) -> bool:
        return fqdn.lower() in self._faults

    def faults(self, fqdn: str) -> Faults:
        with self._lock:
            return self._faults[fqdn.lower()]

    def set_faults(self, fqdn: str, faults: Faults) -> None:
        with self._lock:
            if fqdn.lower() not in self._faults:
                raise KeyError(fqdn)
            self._faults[fqdn.lower()] = faults

    def run_powershell(self, fqdn: str, script: str) -> Execution:
        if script.startswith("big:"):
            n = int(script[4:])
            return Execution(bytes((i % 26) + 65 for i in range(n)))
        if script.startswith("both:"):
            n = int(script[5:])
            return Execution(b"o" * n, b"e" * n, 0)
        if script == "fail":
            return Execution(b"", CLIXML_ERROR, 1)
        if script.startswith("exit:"):
            return Execution(b"", b"", int(script[5:]))
        doc = {"computer": fqdn, "script": script}
        return Execution(json.dumps(doc).encode() + b"\r\n")

    def run_command(self, fqdn: str, command: str, arguments: list[str]) -> Execution:
        self.commands.append((fqdn, command, arguments))
        return Execution(f"{command}|{' '.join(arguments)}\r\n".encode(), b"", 0)

    def clock_info(self) -> dict[str, Any]:
        return {"offset_seconds": self.offset}

    def set_clock(self, *, offset_seconds: float | None, advance_seconds: float | None) -> None:
        if offset_seconds is not None:
            self.offset = offset_seconds
        if advance_seconds is not None:
            if advance_seconds < 0:
                raise ValueError("advance_seconds must be >= 0")
            self.offset += advance_seconds

    def list_computers(self) -> list[dict[str, Any]]:
        return [{"fqdn": f} for f in sorted(self._faults)]

    def describe(self, fqdn: str) -> dict[str, Any]:
        if fqdn.lower() not in self._faults:
            raise KeyError(fqdn)
        return {"fqdn": fqdn.lower(), "faults": self._faults[fqdn.lower()].to_dict()}

    def add_computer(self, spec: dict[str, Any]) -> dict[str, Any]:
        fqdn = spec.get("fqdn")
        if not isinstance(fqdn, str) or not fqdn:
            raise ValueError("spec needs an fqdn")
        with self._lock:
            self._faults[fqdn.lower()] = Faults()
        return {"fqdn": fqdn.lower()}

    def remove_computer(self, fqdn: str) -> None:
        with self._lock:
            del self._faults[fqdn.lower()]

    def delete_certificates(self, fqdn: str) -> list[str]:
        self.describe(fqdn)
        return ["AB" * 20]

    def renew(self, fqdn: str) -> dict[str, Any]:
        self.describe(fqdn)
        return {"status": "Completed", "error": None}

    def set_trusted_mismatch(self, fqdn: str) -> None:
        self.describe(fqdn)


@pytest.fixture
def light_fleet() -> LightFleet:
    return LightFleet()


@pytest.fixture
def make_fleet() -> Callable[[int], LightFleet]:
    """A factory for light fleets of any size (the 1,000-computer test)."""
    return lambda hosts: LightFleet(hosts=hosts)


@pytest.fixture
def make_server() -> Iterator[Callable[..., LabServer]]:
    """``make_server(fleet, **options)``: a started LabServer, stopped when the test ends."""
    with ExitStack() as stack:

        def make(fleet: FleetModel, **options: Any) -> LabServer:
            return stack.enter_context(LabServer(fleet, **options))

        yield make


@pytest.fixture
def lab(light_fleet: LightFleet, make_server: Callable[..., LabServer]) -> LabServer:
    """A plain-HTTP lab over the light fleet, with small Receive chunks and short waits."""
    return make_server(light_fleet, receive_chunk=1000, max_operation_wait=1.0)
