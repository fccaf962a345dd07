"""The lab's JSON control API over real HTTP, and the runner/CLI around the server."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from vmm_cert_lab.fleet.interfaces import FleetModel
from vmm_cert_lab.fleet.runner import parse_listen, start_lab
from vmm_cert_lab.fleet.server import LabServer
from vmm_cert_lab.processes import Processes

HOST = "hv0001.lab.example"


def call(lab: LabServer, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{lab.url}/lab{path}", json=body, timeout=5)


def test_health_and_stats(lab: LabServer) -> None:
    assert call(lab, "GET", "/health").json() == {"status": "ok"}
    stats = call(lab, "GET", "/stats").json()
    assert stats["open_shells_total"] == 0 and stats["requests_total"] >= 2
    assert set(stats) >= {"requests_total", "responses", "open_shells", "open_connections"}


def test_clock(lab: LabServer) -> None:
    assert call(lab, "POST", "/clock", {"offset_seconds": 100}).json() == {"offset_seconds": 100}
    assert call(lab, "POST", "/clock", {"advance_seconds": 5}).json() == {"offset_seconds": 105}
    assert call(lab, "GET", "/clock").json() == {"offset_seconds": 105}
    r = call(lab, "POST", "/clock", {})
    assert r.status_code == 400 and "offset_seconds" in r.json()["error"]
    r = call(lab, "POST", "/clock", {"advance_seconds": "soon"})
    assert r.status_code == 400
    r = call(lab, "POST", "/clock", {"advance_seconds": -1})  # the model's ValueError
    assert r.status_code == 400 and r.json() == {"error": "advance_seconds must be >= 0"}
    r = requests.post(f"{lab.url}/lab/clock", data=b"{not json", timeout=5)
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_faults_get_put_patch(lab: LabServer, light_fleet: FleetModel) -> None:
    assert call(lab, "GET", f"/computers/{HOST}/faults").json()["black_hole"] is False
    r = call(lab, "PUT", f"/computers/{HOST}/faults", {"latency": 0.5, "http_401": True})
    assert r.status_code == 200
    r = call(lab, "PATCH", f"/computers/{HOST}/faults", {"latency": 0})
    assert r.json()["http_401"] is True and r.json()["latency"] == 0
    assert light_fleet.faults(HOST).http_401 is True
    r = call(lab, "PUT", f"/computers/{HOST}/faults", {"drip": 1})
    assert r.json()["http_401"] is False  # PUT replaces
    for bad in ({"nonsense": True}, {"black_hole": "yes"}, {"latency": -1}):
        r = call(lab, "PATCH", f"/computers/{HOST}/faults", bad)
        assert r.status_code == 400 and r.json()["error"].startswith(("unknown", "fault")), bad
    r = call(lab, "GET", "/computers/nosuch.lab.example/faults")
    assert r.status_code == 404 and "nosuch" in r.json()["error"]


def test_computers(lab: LabServer) -> None:
    assert {"fqdn": HOST} in call(lab, "GET", "/computers").json()
    assert call(lab, "GET", f"/computers/{HOST}").json()["fqdn"] == HOST
    assert call(lab, "GET", "/computers/nosuch.lab.example").status_code == 404
    r = call(lab, "POST", "/computers", {"fqdn": "new.lab.example"})
    assert r.status_code == 201 and r.json() == {"fqdn": "new.lab.example"}
    assert call(lab, "POST", "/computers", {}).status_code == 400
    assert call(lab, "DELETE", "/computers/new.lab.example").json() == {
        "removed": "new.lab.example"
    }
    assert call(lab, "DELETE", "/computers/new.lab.example").status_code == 404
    assert call(lab, "DELETE", f"/computers/{HOST}/certificates").json() == {"deleted": ["AB" * 20]}
    assert call(lab, "POST", f"/computers/{HOST}/renew").json()["status"] == "Completed"
    assert call(lab, "POST", f"/computers/{HOST}/trusted-mismatch").status_code == 200


def test_unknown_routes_and_methods(lab: LabServer) -> None:
    assert call(lab, "GET", "/nothing").status_code == 404
    assert call(lab, "DELETE", "/health").status_code == 405
    assert call(lab, "GET", f"/computers/{HOST}/nothing").status_code == 404
    assert requests.get(f"{lab.url}/elsewhere", timeout=5).status_code == 404


def test_control_api_on_the_demo_model(tmp_path: Path) -> None:
    with start_lab(state_dir=tmp_path) as running:
        base = running.control_url
        hosts = requests.get(f"{base}/computers", timeout=5).json()
        assert len(hosts) >= 40
        host = "hv01.lab.example"
        before = requests.get(f"{base}/computers/{host}", timeout=5).json()
        deleted = requests.delete(f"{base}/computers/{host}/certificates", timeout=5).json()
        assert deleted["deleted"]
        renewed = requests.post(f"{base}/computers/{host}/renew", timeout=5).json()
        assert renewed["status"] == "Completed", renewed
        after = requests.get(f"{base}/computers/{host}", timeout=5).json()
        assert after != before
        clock = requests.post(f"{base}/clock", json={"advance_seconds": 86400}, timeout=5)
        assert clock.status_code == 200


# --- runner and CLI ------------------------------------------------------------------------


def test_parse_listen_only_loopback() -> None:
    assert parse_listen("127.0.0.1:5985") == ("127.0.0.1", 5985)
    assert parse_listen("127.1.2.3:0") == ("127.1.2.3", 0)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("0.0.0.0:5985", "10.0.0.1:1", "localhost:5985", "127.0.0.1", ":5985"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_write_config_plain_and_tls(tmp_path: Path, light_fleet: FleetModel) -> None:
    with start_lab(fleet=light_fleet, state_dir=tmp_path / "s") as running:
        path = running.write_config(tmp_path / "exporter.yaml")
        cfg = yaml.safe_load(path.read_text())
        w = cfg["winrm"]
        assert w["endpoint"] == running.url + "/wsman/{host}"
        assert w["transport"] == "basic" and w["username"] == "LAB\\svc-vmmcert"
        assert w["allow_unencrypted_basic"] is True and "ca_trust_path" not in w
        assert Path(w["password_file"]).read_text() == "Lab-Passw0rd!"
        assert stat.S_IMODE(os.stat(w["password_file"]).st_mode) == 0o600
        assert cfg["collection"] == {"interval": "30s", "concurrency": 16}
        assert cfg["web"] == {"listen_address": "127.0.0.1:9868"}
    with start_lab(fleet=light_fleet, tls=True, state_dir=tmp_path / "t") as running:
        cfg = yaml.safe_load(running.write_config(tmp_path / "tls.yaml").read_text())
        assert cfg["winrm"]["endpoint"].startswith("https://127.0.0.1:")
        assert cfg["winrm"]["allow_unencrypted_basic"] is False
        assert Path(cfg["winrm"]["ca_trust_path"]).read_text().startswith("-----BEGIN CERT")


def test_demo_config_names_the_vmm_server(tmp_path: Path) -> None:
    with start_lab(state_dir=tmp_path) as running:
        cfg = yaml.safe_load(running.write_config(tmp_path / "c.yaml").read_text())
        assert cfg["vmm_servers"] == [{"host": "vmm01.lab.example", "discover": True}]


def test_cli_refuses_non_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from vmm_cert_lab.fleet.cli import run

    args = argparse.Namespace(
        scenario="demo",
        hosts=None,
        seed=1,
        listen="0.0.0.0:5985",
        tls=False,
        write_config=None,
        log_level="info",
        log_format="logfmt",
    )
    assert run(args) == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.e2e
def test_cli_runs_until_sigterm(tmp_path: Path, processes: Processes) -> None:
    config = tmp_path / "exporter.yaml"
    proc = processes.exporter("lab", "--write-config", str(config))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        control = next(x.split()[-1] for x in lines if x.startswith("control:"))
        assert requests.get(control + "/health", timeout=5).json() == {"status": "ok"}
        assert config.exists()
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
    assert code == 0, proc.stderr.read() if proc.stderr else ""


def test_json_error_shape(lab: LabServer) -> None:
    r = call(lab, "GET", "/computers/nosuch")
    assert r.headers["Content-Type"] == "application/json"
    assert set(json.loads(r.content)) == {"error"}
    started = time.monotonic()
    assert call(lab, "GET", "/health").status_code == 200
    assert time.monotonic() - started < 1


def test_ha_config_names_every_vmm_server_as_configured(tmp_path: Path) -> None:
    with start_lab(scenario="ha", state_dir=tmp_path) as running:
        cfg = yaml.safe_load(running.write_config(tmp_path / "c.yaml").read_text())
        # the HA role names, and the third VMM server by its DNS alias
        assert cfg["vmm_servers"] == [
            {"host": "vmm-ha.lab.example", "discover": True},
            {"host": "vmm-old.lab.example", "discover": True},
            {"host": "scvmm.lab.example", "discover": True},
        ]
        assert cfg["receiver"]["run_as_account"] == "VMM Host Admins"
        assert cfg["receiver"]["mode"] == "dry-run"


def test_language_mode_through_the_control_api(tmp_path: Path) -> None:
    from vmm_cert_lab.fleet.powershell import contract_script

    with start_lab(state_dir=tmp_path) as running:
        url = f"{running.control_url}/computers/hv01.lab.example/faults"
        r = requests.patch(url, json={"language_mode": "ConstrainedLanguage"}, timeout=5)
        assert r.status_code == 200 and r.json()["language_mode"] == "ConstrainedLanguage"
        answer = running.model.run_powershell(
            "hv01.lab.example", contract_script("collect-certificates")
        )
        assert (answer.exit_code, answer.stderr) == (3, b"")
        r = requests.patch(url, json={"language_mode": "Constrained"}, timeout=5)
        assert r.status_code == 400 and "ConstrainedLanguage" in r.json()["error"]
        listing = requests.get(f"{running.control_url}/computers", timeout=5).json()
        vmm = next(c for c in listing if c["fqdn"] == "vmm01.lab.example")
        assert (vmm["vmm_role"], vmm["role_display"]) == (
            "Library, VMMServerRole",
            "Library, VMM Server",
        )


def test_cli_refuses_an_unknown_locale(capsys: pytest.CaptureFixture[str]) -> None:
    from vmm_cert_exporter.cli import main

    assert main(["lab", "--locale", "fr-FR"]) == 2
    assert "--locale: expected a locale, one of en-US, ja-JP" in capsys.readouterr().err


@pytest.mark.e2e
def test_cli_serves_the_ha_scenario_in_japanese(tmp_path: Path, processes: Processes) -> None:
    config = tmp_path / "exporter.yaml"
    proc = processes.exporter(
        "lab", "--scenario", "ha", "--locale", "ja-JP", "--write-config", str(config)
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        control = next(x.split()[-1] for x in lines if x.startswith("control:"))
        listing = requests.get(control + "/computers", timeout=5).json()
        mixed = next(c for c in listing if c["fqdn"] == "HV-Mixed01.lab.example")
        assert (mixed["state"], mixed["state_display"]) == ("Responding", "稼働中")
        hosts = [s["host"] for s in yaml.safe_load(config.read_text())["vmm_servers"]]
        assert hosts == ["vmm-ha.lab.example", "vmm-old.lab.example", "scvmm.lab.example"]
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
