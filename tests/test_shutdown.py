"""Graceful shutdown: SIGTERM to ``vmm-cert-exporter serve`` in the middle of a refresh.

The exporter runs as a real subprocess against a lab whose computers answer slowly (the
``latency`` and ``receive_timeout`` faults). The lab counts open WinRM shells, which is how
these tests prove that every call in flight sent Signal + Delete before the process exited,
and it lists which computers hold a shell, which is how they prove no call started after the
signal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from vmm_cert_lab.fleet.interfaces import Faults
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.processes import ExporterCommand, Process, Processes

pytestmark = pytest.mark.e2e
VMM = "vmm01.lab.example"


def _slow_hosts(lab: RunningLab, faults: Faults) -> list[str]:
    """Every computer but the VMM server gets ``faults`` (discovery stays fast)."""
    hosts = [c["fqdn"] for c in lab.model.list_computers() if c["fqdn"] != VMM]
    for fqdn in hosts:
        lab.model.set_faults(fqdn, faults)
    return hosts


def _start(
    processes: Processes, lab: RunningLab, tmp_path: Path, timeout: str, log_format: str
) -> Process:
    config = lab.write_config(tmp_path / "exporter.yml")
    data = yaml.safe_load(config.read_text())
    data["winrm"]["timeout"] = timeout
    data["collection"]["concurrency"] = 8
    config.write_text(yaml.safe_dump(data))
    return processes.exporter(
        "serve", "--config", str(config), f"--log.format={log_format}", listen=True
    )


def _wait_for_shells(lab: RunningLab, proc: subprocess.Popen[str], at_least: int) -> set[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        shells = lab.server.stats()["open_shells"]
        if sum(shells.values()) >= at_least:
            return set(shells)
        time.sleep(0.05)
    raise AssertionError("the refresh never had calls in flight")


def _watch_exit(
    lab: RunningLab,
    proc: subprocess.Popen[str],
    in_flight: set[str],
    limit: float,
    latency: float = 0.0,
) -> tuple[float, set[str]]:
    """Wait for the exit; return its delay and any computer that got a shell after SIGTERM.

    A Create sent just before the signal shows its shell ``latency`` later: shells that
    appear in that window are not counted (a call started after the signal shows later).
    """
    began = time.monotonic()
    newcomers: set[str] = set()
    while proc.poll() is None and time.monotonic() - began < limit + 10:
        shells = set(lab.server.stats()["open_shells"])
        if time.monotonic() - began < latency + 0.5:
            in_flight |= shells
        newcomers |= shells - in_flight
        time.sleep(0.05)
    elapsed = time.monotonic() - began
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return elapsed, newcomers


def _shells_after_exit(lab: RunningLab) -> int:
    # the exporter has exited: whatever it sent has arrived; allow the lab to finish answering
    deadline = time.monotonic() + 2
    while True:
        total = int(lab.server.stats()["open_shells_total"])
        if total == 0 or time.monotonic() > deadline:
            return total
        time.sleep(0.05)


def test_sigterm_lets_in_flight_calls_finish_and_clean_up(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    # 1 s per request: a call (Create, Command, Receive, Signal, Delete) takes about 5 s;
    # the 10 s deadline gives pywinrm a 4 s read timeout, well above the latency
    _slow_hosts(lab, Faults(latency=1.0))
    proc = _start(processes, lab, tmp_path, "10s", "logfmt")
    try:
        in_flight = _wait_for_shells(lab, proc, at_least=8)
        proc.send_signal(signal.SIGTERM)
        elapsed, newcomers = _watch_exit(lab, proc, in_flight, limit=10 + 5, latency=1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert elapsed <= 10 + 5, elapsed
    assert newcomers == set(), "calls started after SIGTERM"
    assert _shells_after_exit(lab) == 0, lab.server.stats()
    assert 'msg="shutting down: no new WinRM calls' in stderr
    assert 'msg="refresh abandoned: shutting down' in stderr
    assert 'msg="refresh done"' not in stderr  # a partial refresh is never published
    assert "msg=stopped" in stderr
    assert "Traceback" not in stderr


def test_sigterm_waits_at_most_the_deadline_then_cleans_up(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    # slow answers and a command that never finishes: the calls in flight run out of their
    # 6 s deadline in Receive, then Signal + Delete (0.5 s each) fit their own allowance
    _slow_hosts(lab, Faults(latency=0.5, receive_timeout=True))
    proc = _start(processes, lab, tmp_path, "6s", "json")
    try:
        in_flight = _wait_for_shells(lab, proc, at_least=8)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        elapsed, newcomers = _watch_exit(lab, proc, in_flight, limit=6 + 5, latency=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert 4 < elapsed <= 6 + 5, elapsed  # it did wait for the deadline, and no longer
    assert newcomers == set()
    assert _shells_after_exit(lab) == 0, lab.server.stats()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("refresh abandoned") for m in messages), messages
    assert messages[-1] == "stopped"
    shutting = next(line for line in lines if line["msg"].startswith("shutting down"))
    assert 6 < shutting["max_wait_seconds"] <= 6 + 5 + 1
    failures = [line for line in lines if line["msg"] == "call failed"]
    assert failures and all(f["reason"] == "timeout" for f in failures)
    assert all({"host", "operation", "reason", "detail"} <= set(f) for f in failures)


def test_a_second_signal_abandons_calls_at_once_and_still_cleans_up(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    # every Receive is held and answered "operation timeout": without the second signal the
    # calls would run to their 60 s deadline
    _slow_hosts(lab, Faults(receive_timeout=True))
    proc = _start(processes, lab, tmp_path, "60s", "logfmt")
    try:
        in_flight = _wait_for_shells(lab, proc, at_least=8)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # the first signal waits for the calls in flight
        proc.send_signal(signal.SIGINT)
        elapsed, newcomers = _watch_exit(lab, proc, in_flight, limit=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert elapsed <= 8, elapsed  # Signal + Delete only, not the 60 s deadline
    assert newcomers == set()
    assert _shells_after_exit(lab) == 0, lab.server.stats()
    assert "second signal: abandoning the WinRM calls in flight" in stderr


def test_ctrl_c_on_check_ends_the_calls_in_flight_and_cleans_up(
    lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    # without the abort, the interpreter would wait for every queued call of the refresh
    _slow_hosts(lab, Faults(receive_timeout=True))
    config = lab.write_config(tmp_path / "exporter.yml")
    data = yaml.safe_load(config.read_text())
    data["winrm"]["timeout"] = "60s"
    data["collection"]["concurrency"] = 8
    config.write_text(yaml.safe_dump(data))
    proc = processes.exporter("check", "--config", str(config))
    try:
        in_flight = _wait_for_shells(lab, proc, at_least=8)
        proc.send_signal(signal.SIGINT)
        elapsed, newcomers = _watch_exit(lab, proc, in_flight, limit=8)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 130 and "interrupted" in stderr
    assert "Traceback" not in stderr
    assert elapsed <= 8, elapsed
    assert newcomers == set()
    assert _shells_after_exit(lab) == 0, lab.server.stats()


def test_sigterm_to_the_receiver_finishes_the_running_renewal_and_journals_it(
    lab: RunningLab, tmp_path: Path, processes: Processes, exporter_command: ExporterCommand
) -> None:
    """The receiver never stops a renewal half-way: SIGTERM lets the running job finish
    (bounded by its WinRM deadlines), journals the outcome, leaves no shell, exits 0."""
    from vmm_cert_lab.receiver_config import write_lab_receiver_config
    from vmm_cert_lab.receiver_testing import alert, auth, http, payload

    host = "hv36.lab.example"  # expires within 7 days
    lab.model.set_faults(host, Faults(latency=0.4))  # each call to it takes about 2 s
    config = write_lab_receiver_config(
        lab,
        tmp_path / "receiver.yml",
        token="t0ken",
        mode="execute",
        winrm={"timeout": "10s"},
    )
    proc = processes.exporter("receiver", "--config", str(config), "--log.format=json", listen=True)
    base = proc.url
    body = json.dumps(payload(alert(host, "VMMCertificateExpiringCritical"))).encode()
    try:
        deadline = time.monotonic() + 60
        while True:  # 503 until the receiver's inventory is loaded
            try:
                status, answer = http("POST", base + "/alertmanager", body, auth("t0ken"))
            except OSError:
                status, answer = 0, None
            if status == 200:
                break
            assert time.monotonic() < deadline and proc.poll() is None, (status, answer)
            time.sleep(0.2)
        while True:  # the renewal is running: the receiver holds a shell on the host
            status, jobs = http("GET", base + "/api/jobs", headers=auth("t0ken"))
            running = [j for j in jobs["jobs"] if j["host"] == host and j["status"] == "running"]
            if running and lab.server.stats()["open_shells"].get(host):
                break
            assert time.monotonic() < deadline and proc.poll() is None, jobs
            time.sleep(0.05)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        elapsed = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert elapsed < 60, elapsed
    assert _shells_after_exit(lab) == 0, lab.server.stats()
    listed = exporter_command.run("jobs", "--config", str(config), "--json", timeout=60)
    assert listed.returncode == 0, listed.stderr
    job = next(j for j in json.loads(listed.stdout)["jobs"] if j["host"] == host)
    assert job["status"] == "succeeded", job  # finished, verified and journaled before exit
    assert [s["status"] for s in job["steps"]].count("succeeded") >= 3, job["steps"]
