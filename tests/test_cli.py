"""The exporter's commands as an administrator runs them: serve and check."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vmm_cert_exporter.cli import main
from vmm_cert_lab.fleet.runner import RunningLab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.processes import ExporterCommand, Processes


def _config(lab: RunningLab, path: Path, hosts: list[str] | None = None) -> Path:
    lab.write_config(path)
    if hosts is not None:
        data = yaml.safe_load(path.read_text())
        data["vmm_servers"] = []
        data["hosts"] = [{"host": h} for h in hosts]
        path.write_text(yaml.safe_dump(data))
    return path


def test_check_exit_codes_follow_the_worst_finding(
    demo_lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(_config(demo_lab, tmp_path / "all.yml"))]) == 2
    table = capsys.readouterr().out
    assert "CRITICAL" in table and lab_host("hv37") in table and "expired" in table
    assert (
        main(["check", "--config", str(_config(demo_lab, tmp_path / "ok.yml", [lab_host("hv01")]))])
        == 0
    )
    warn = _config(demo_lab, tmp_path / "warn.yml", [lab_host("hv01"), lab_host("hv31")])
    assert main(["check", "--config", str(warn)]) == 1
    # thresholds move the verdict: 20 days left is critical with --critical-days 21
    assert main(["check", "--config", str(warn), "--critical-days", "21"]) == 2


def test_check_json(
    demo_lab: RunningLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(demo_lab, tmp_path / "c.yml")
    capsys.readouterr()
    assert main(["check", "--config", str(config), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "CRITICAL"
    by_host = {c["host"]: c for c in doc["computers"]}
    assert by_host[lab_host("hv38")]["problems"] == ["no SCVMM certificate"]
    assert by_host[lab_host("hv01")]["status"] == "OK"
    assert by_host[lab_host("hv40")]["status"] == "WARNING"
    assert doc["computers"][0]["status"] == "CRITICAL"  # worst first


@pytest.mark.e2e
def test_serve_refuses_a_bad_config_before_listening(
    tmp_path: Path, exporter_command: ExporterCommand, free_port: Callable[[], int]
) -> None:
    port = free_port()
    bad = tmp_path / "bad.yml"
    bad.write_text("winrm:\n  transport: telnet\n")
    result = exporter_command.run(
        "serve", "--config", str(bad), f"--web.listen-address=127.0.0.1:{port}", timeout=60
    )
    assert result.returncode == 1
    assert str(bad) in result.stderr and "winrm.transport" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nobody listened on it


@pytest.mark.e2e
def test_serve_runs_and_stops_on_sigterm(
    demo_lab: RunningLab, tmp_path: Path, processes: Processes
) -> None:
    config = _config(demo_lab, tmp_path / "c.yml")
    proc = processes.exporter("serve", "--config", str(config), "--log.level=debug", listen=True)
    proc.wait_ready()
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=5) as r:
        assert b"vmm_cert_expiry_seconds{" in r.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    _, stderr = proc.communicate()
    # structured lines, one per refresh, failures naming host, operation and reason
    assert 'msg="refresh done"' in stderr
    assert f"host=hv40.{LAB_DOMAIN}" in stderr and "reason=connect" in stderr
    assert demo_lab.account.password not in stderr


def test_rules_with_another_runbook_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--runbook-base-url", "https://wiki.example/rb/"]) == 0
    out = capsys.readouterr().out
    assert "runbook_url: https://wiki.example/rb/VMMCertificateExpired.md" in out
