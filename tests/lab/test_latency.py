"""Windows-like timing (``lab --latency windows``) through real pywinrm and the exporter's
remoting: a shell costs 0.8 s, every other request 0.1 s, and each client waits only its own.

Timing assertions are lower bounds (a sleep is never shorter) or generous ratios: the
machine is shared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import winrm
import yaml
from winrm.protocol import Protocol

from vmm_cert_exporter.cli import main
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.powershell import render_script
from vmm_cert_exporter.remoting import WinRMRunner
from vmm_cert_lab.fleet.latency import NONE, WINDOWS, latency_profile
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.fleet.server import LabServer

HOST = "hv0001.lab.example"
HOSTS = 300  # more than the 256 concurrent clients the benchmark drives
EARLY = 0.01  # a timed wait may wake this much early on a busy machine


def _protocol(lab: LabServer, fqdn: str) -> Protocol:
    account = lab.model.accounts()[0]
    return Protocol(
        lab.endpoint(fqdn),
        transport="basic",
        username=f"{account.domain}\\{account.username}",
        password=account.password,
        read_timeout_sec=30,
        operation_timeout_sec=20,
        server_cert_validation="ignore",  # plain HTTP: no CA bundle to look up
    )


def _run_ps(lab: LabServer, fqdn: str) -> float:
    """One pywinrm ``run_ps`` (Create, Command, Receive, Signal, Delete); its wall time."""
    session = winrm.Session("127.0.0.1", auth=("unused", "unused"))
    session.protocol = _protocol(lab, fqdn)  # Session alone drops /wsman/<fqdn>
    started = time.monotonic()
    assert session.run_ps("Get-Date").status_code == 0
    return time.monotonic() - started


@pytest.fixture
def fleet(make_fleet: Callable[[int], Any]) -> Any:
    return make_fleet(HOSTS)


@pytest.fixture
def windows_lab(fleet: Any, make_server: Callable[..., LabServer]) -> LabServer:
    return make_server(fleet, latency=WINDOWS)


def _requests(lab: LabServer) -> int:
    return int(lab.stats()["requests_total"])


def test_profiles_and_the_default(light_fleet: Any) -> None:
    assert latency_profile("Windows") is WINDOWS
    assert (WINDOWS.shell_create, WINDOWS.request) == (0.8, 0.1)
    with pytest.raises(ValueError, match="none, windows"):
        latency_profile("slow")
    server = LabServer(light_fleet)
    try:
        assert server.latency is NONE  # today's speed stays the default
    finally:
        server.stop()


def test_cli_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--latency", "slow"]) == 2
    assert "known: none, windows" in capsys.readouterr().err


def test_run_ps_pays_a_shell_and_every_request(windows_lab: LabServer) -> None:
    before = _requests(windows_lab)
    elapsed = _run_ps(windows_lab, HOST)
    sent = _requests(windows_lab) - before
    assert sent == 5  # Create, Command, Receive, Signal, Delete
    assert elapsed >= WINDOWS.shell_create + 4 * WINDOWS.request - EARLY


def test_a_receive_fills_the_clients_envelope(windows_lab: LabServer) -> None:
    """pywinrm takes 150 KiB envelopes: 250,000 bytes of output come in 3 Receives, not the
    31 of the lab's 8 KiB chunks (each of which would cost another 0.1 s)."""
    session = winrm.Session("127.0.0.1", auth=("unused", "unused"))
    session.protocol = _protocol(windows_lab, HOST)
    before = _requests(windows_lab)
    result = session.run_ps("big:250000")
    assert result.status_code == 0 and len(result.std_out) == 250_000
    assert _requests(windows_lab) - before == 4 + 3  # Create, Command, Signal, Delete


def test_the_exporters_call_pays_what_it_sends(fleet: Any, tmp_path: Path) -> None:
    with start_lab(fleet=fleet, latency=WINDOWS, tls_listener=False, state_dir=tmp_path) as lab:
        path = lab.write_config(tmp_path / "exporter.yml")
        config = yaml.safe_load(path.read_text())
        config["hosts"] = [{"host": HOST}]  # the light fleet has no VMM server to discover
        path.write_text(yaml.safe_dump(config))
        runner = WinRMRunner(load_config(path).winrm)
        before = _requests(lab.server)
        started = time.monotonic()
        output = runner.run(HOST, render_script("collect-certificates"))
        elapsed = time.monotonic() - started
        sent = _requests(lab.server) - before
    assert output.exit_code == 0
    assert sent >= 5  # one shell, then Command, Receive(s), Signal, Delete
    assert elapsed >= WINDOWS.shell_create + (sent - 1) * WINDOWS.request - EARLY


def test_concurrent_clients_overlap(windows_lab: LabServer) -> None:
    one = _run_ps(windows_lab, HOST)
    hosts = [f"hv{i:04d}.lab.example" for i in range(1, 21)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        each = list(pool.map(lambda h: _run_ps(windows_lab, h), hosts))
    together = time.monotonic() - started
    assert min(each) >= WINDOWS.shell_create + 4 * WINDOWS.request - EARLY
    assert together < 5 * one  # serialised, 20 calls would take 20 times one


def test_hundreds_of_clients_each_wait_only_their_own(windows_lab: LabServer) -> None:
    """A thread per connection and a deep accept queue: 300 shells created at once."""
    barrier = threading.Barrier(HOSTS)

    def create(i: int) -> float:
        protocol = _protocol(windows_lab, f"hv{i:04d}.lab.example")
        barrier.wait()
        started = time.monotonic()
        protocol.open_shell()
        return time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=HOSTS) as pool:
        each = list(pool.map(create, range(1, HOSTS + 1)))
    together = time.monotonic() - started
    assert min(each) >= WINDOWS.shell_create - EARLY
    assert windows_lab.stats()["open_shells_total"] == HOSTS
    # one after another they would take 240 s; at once, the delay plus the machine's work
    assert together < 10 * WINDOWS.shell_create


def test_stop_cuts_a_pending_delay_short(windows_lab: LabServer) -> None:
    protocol = _protocol(windows_lab, HOST)
    failed: list[BaseException] = []

    def create() -> None:
        try:
            protocol.open_shell()
        except requests.exceptions.RequestException as exc:
            failed.append(exc)

    caller = threading.Thread(target=create)
    caller.start()
    time.sleep(0.2)  # the Create is waiting out its 0.8 s
    started = time.monotonic()
    windows_lab.stop()
    caller.join(timeout=10)
    assert time.monotonic() - started < WINDOWS.shell_create
    assert failed and windows_lab.stats()["open_shells_total"] == 0
