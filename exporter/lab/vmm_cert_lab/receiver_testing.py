"""Test support for the renewal receiver: a fake clock, a counting lab model, a hooked runner,
webhook payload builders and a harness that drives the engine step by step.

In the lab package so that the tests, ``make demo`` and benchmarks share them; the receiver
itself never uses them.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmm_cert_exporter.config import Config, load_config
from vmm_cert_exporter.powershell import decode_script
from vmm_cert_exporter.receiver.discovery import InventoryCache
from vmm_cert_exporter.receiver.engine import Engine
from vmm_cert_exporter.receiver.intake import Decision, decide
from vmm_cert_exporter.receiver.journal import Job, Journal, OwnerLock
from vmm_cert_exporter.receiver.webhook import WebhookAlert
from vmm_cert_exporter.remoting import ScriptOutput, WinRMRunner
from vmm_cert_lab.fleet.interfaces import Execution, FleetModel
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.lab_child import LabChild
from vmm_cert_lab.receiver_config import write_lab_receiver_config

TOKEN = "t0ken-for-tests-5b1f"  # noqa: S105 - tests and the lab only
# 2030-06-03 10:00 UTC, a Monday: far enough from any lab certificate date to be neutral
MONDAY_10_UTC = 1906884000.0


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


class CountingFleet:
    """The real lab model, counting every contract script each computer received."""

    def __init__(self, fleet: FleetModel) -> None:
        self._fleet = fleet
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet, name)

    def run_powershell(self, fqdn: str, script: str) -> Execution:
        try:
            operation = decode_script(script)[0]
        except ValueError:
            operation = "(not a contract script)"
        with self._lock:
            self.calls.append((fqdn.lower(), operation))
        return self._fleet.run_powershell(fqdn, script)

    def count(self, operation: str, fqdn: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for host, op in self.calls
                if op == operation and (fqdn is None or host == fqdn.lower())
            )


class HookRunner(WinRMRunner):
    """The real WinRM runner, with hooks run after a given operation on a given host.

    Used to change the lab at an exact point of a runbook (a host becoming unreachable
    right after its certificate was deleted), which no timing could hit reliably.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config.winrm)
        self.after: dict[tuple[str, str], Callable[[], None]] = {}
        self.calls: list[tuple[str, str]] = []

    def run(self, host: str, script: str, timeout: float | None = None) -> ScriptOutput:
        operation = decode_script(script)[0]
        self.calls.append((host.lower(), operation))
        try:
            return super().run(host, script, timeout)
        finally:
            hook = self.after.pop((host.lower(), operation), None)
            if hook is not None:
                hook()


def new_job(journal: Journal, host: str = "hv01.lab.example", mode: str = "execute") -> int:
    """A remove-register job for ``host``, as the planner would journal it; its id."""
    return journal.create_job(
        host=host,
        role="hyperv_host",
        vmm_server="vmm01.lab.example",
        is_vmm_server=False,
        procedure="remove-register",
        mode=mode,
        source="alertmanager",
    ).id


def alert(
    host: str | None,
    alertname: str = "VMMCertificateExpiringCritical",
    *,
    status: str = "firing",
    fingerprint: str = "0123456789abcdef",
    starts_at: str = "2030-06-01T00:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    """One alert as Alertmanager's webhook carries it."""
    all_labels = {"alertname": alertname, **labels}
    if host is not None:
        all_labels["host"] = host
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "test"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.invalid/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    if status is None:
        status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}/{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "vmm-cert-renewal",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": list(alerts),
    }


def webhook_alert(doc: dict[str, Any]) -> WebhookAlert:
    return WebhookAlert(
        status=doc["status"],
        labels=doc["labels"],
        annotations=doc["annotations"],
        starts_at=doc["startsAt"],
        ends_at=doc["endsAt"],
        generator_url=doc["generatorURL"],
        fingerprint=doc["fingerprint"],
    )


def receiver_config(
    lab: RunningLab | LabChild,
    directory: Path,
    *,
    mode: str = "execute",
    interval: str | None = None,
    winrm_timeout: Any = "5s",  # Any: callers pass keys from a dict of mixed values
    **receiver: Any,
) -> Config:
    """The lab's configuration with a receiver section; ``receiver`` overrides its keys,
    ``interval`` the inventory refresh interval (``collection.interval``), ``winrm_timeout``
    one call's deadline (a VMM server of thousands answers its first TrustedPeople read in
    seconds: the lab signs each certificate when first read)."""
    defaults: dict[str, Any] = {"backoff_initial": "1h", "backoff_max": "32h", "cooldown": "6h"}
    defaults.update(receiver)
    path = write_lab_receiver_config(
        lab,
        directory / "receiver.yml",
        token=TOKEN,
        mode=mode,
        receiver=defaults,
        winrm={"timeout": winrm_timeout},
        collection={"interval": interval} if interval else None,
    )
    return load_config(path)


@dataclass
class Harness:
    """Journal + engine + inventory against a lab, driven step by step by the test."""

    running: RunningLab | LabChild
    counting: CountingFleet | None  # None: the lab runs in its own process
    config: Config
    journal: Journal
    engine: Engine
    inventory: InventoryCache
    clock: FakeClock
    runner: HookRunner
    owner: OwnerLock
    _fingerprints: int = field(default=0)

    @property
    def lab(self) -> RunningLab:
        """The lab running in this process (a ``LabChild`` is reached through ``describe``)."""
        if isinstance(self.running, LabChild):
            raise TypeError("the lab runs in its own process: read it through its control API")
        return self.running

    @property
    def fleet(self) -> CountingFleet:
        """The lab's model, counting the scripts it ran (an in-process lab's only)."""
        if self.counting is None:
            raise TypeError("the lab runs in its own process: read it through its control API")
        return self.counting

    def submit(self, host: str, alertname: str = "VMMCertificateExpiringCritical") -> Decision:
        """What a webhook with one firing alert for ``host`` would do (a new alert each time)."""
        self._fingerprints += 1
        assert self.config.receiver is not None
        return decide(
            webhook_alert(alert(host, alertname, fingerprint=f"{self._fingerprints:016x}")),
            config=self.config.receiver,
            inventory=self.inventory.inventory,
            journal=self.journal,
            now=self.clock(),
        )

    def tick(self) -> None:
        self.engine.tick(wait=True)

    def settle(self, passes: int = 8) -> None:
        """Scheduling passes until nothing more starts (concurrency limits take several)."""
        for _ in range(passes):
            if not self.engine.tick(wait=True):
                return

    def job(self, job_id: int | None) -> Job:
        assert job_id is not None
        job = self.journal.get(job_id)
        assert job is not None
        return job

    def describe(self, host: str) -> dict[str, Any]:
        if isinstance(self.running, LabChild):
            return self.running.describe(host)
        return self.running.model.describe(host)

    def close(self) -> None:
        self.engine.stop()
        self.owner.release()
        self.journal.close()


def scvmm_certs(description: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in description["certificates"] if c.get("scvmm")]


def fleet_of(lab: RunningLab) -> CountingFleet:
    model = lab.model
    if not isinstance(model, CountingFleet):
        raise TypeError("the lab was not started with a CountingFleet")
    return model


def make_harness(
    lab: RunningLab | LabChild,
    directory: Path,
    *,
    mode: str = "execute",
    clock: FakeClock | None = None,
    **receiver: Any,
) -> Harness:
    """A harness on a fresh journal in ``directory`` (created); the caller closes it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = receiver_config(lab, directory, mode=mode, **receiver)
    if config.receiver is None:
        raise ValueError("no receiver section")
    clock = clock or FakeClock()
    journal = Journal(config.receiver.journal, clock=clock)
    owner = OwnerLock(config.receiver.journal)
    runner = HookRunner(config)
    engine = Engine(config, journal, runner, owner=owner, clock=clock)
    inventory = InventoryCache(config, runner)
    inventory.refresh()
    counting = None if isinstance(lab, LabChild) else fleet_of(lab)
    return Harness(lab, counting, config, journal, engine, inventory, clock, runner, owner)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any]:
    """One request; (status, parsed JSON or text) whatever the status."""
    # tests call our own loopback URLs only
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
