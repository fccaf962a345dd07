"""deploy/: the example Prometheus, Alertmanager, receiver and docker-compose configurations.

promtool and amtool check the configurations; a real Alertmanager proves the inhibit rules
and the routes; the compose file is checked for what can be checked without a Docker engine
(every file it mounts exists, and the paths inside the containers line up). The receiver's
configuration passes check-config and starts a receiver against the demo lab, with
stand-ins for the files that exist only in its container.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import dashboard
from vmm_cert_exporter import rules
from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.receiver.service import start_receiver
from vmm_cert_lab.fleet.runner import start_lab
from vmm_cert_lab.processes import ExporterCommand
from vmm_cert_lab.promstack import Promtool, Tool, start_alertmanager
from vmm_cert_lab.receiver_config import lab_run_as_account

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager.yml"
COMPOSE_YML = DEPLOY / "docker-compose.yml"
RECEIVER_YML = DEPLOY / "receiver.yml"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


# ---- prometheus.yml ----------------------------------------------------------------------


def test_promtool_checks_the_prometheus_config_and_its_rules(promtool: Promtool) -> None:
    res = promtool.run("check", "config", "prometheus.yml", cwd=DEPLOY)
    assert res.returncode == 0, res.stdout
    assert "SUCCESS: 1 rule files found" in res.stdout
    shipped = load(ROOT / "alerts" / "vmm-certificates.rules.yml")
    count = sum(len(g["rules"]) for g in shipped["groups"])
    assert f"SUCCESS: {count} rules found" in res.stdout


def test_prometheus_config_scrapes_the_job_the_rules_expect() -> None:
    config = load(PROMETHEUS_YML)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    job = jobs[rules.DEFAULT_JOB]
    assert job["static_configs"][0]["targets"] == ["exporter:9868"]
    assert [(DEPLOY / f).resolve() for f in config["rule_files"]] == [
        ROOT / "alerts" / "vmm-certificates.rules.yml"
    ]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_a_broken_prometheus_config_fails(tmp_path: Path, promtool: Promtool) -> None:
    bad = PROMETHEUS_YML.read_text().replace("scrape_interval: 60s", "scrape_interval: soon", 1)
    (tmp_path / "prometheus.yml").write_text(bad)
    res = promtool.run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert res.returncode != 0


# ---- alertmanager.yml --------------------------------------------------------------------


def test_amtool_checks_the_alertmanager_config(amtool: Tool) -> None:
    res = amtool.run("check-config", "alertmanager.yml", cwd=DEPLOY)
    assert res.returncode == 0, res.stdout
    assert "SUCCESS" in res.stdout


def test_a_broken_alertmanager_config_fails(tmp_path: Path, amtool: Tool) -> None:
    bad = ALERTMANAGER_YML.read_text().replace("receiver: default", "receiver: nobody", 1)
    (tmp_path / "alertmanager.yml").write_text(bad)
    res = amtool.run("check-config", "alertmanager.yml", cwd=tmp_path)
    assert res.returncode != 0


def routes_for(amtool: Tool, **labels: str) -> list[str]:
    """The receivers an alert with ``labels`` goes to (amtool's routing, offline)."""
    res = subprocess.run(
        [
            amtool.path,
            "config",
            "routes",
            "test",
            "--config.file=alertmanager.yml",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        cwd=DEPLOY,
        capture_output=True,  # amtool warns on stderr that --config.file wins over the URL
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().split(",")


@pytest.mark.parametrize("alert", rules.ALERT_NAMES)
def test_routes(alert: str, amtool: Tool) -> None:
    severity = load(ROOT / "alerts" / "vmm-certificates.rules.yml")
    found = {r["alert"]: r["labels"]["severity"] for g in severity["groups"] for r in g["rules"]}[
        alert
    ]
    receivers = routes_for(amtool, alertname=alert, severity=found, host="hv01.lab.example")
    # people by severity; the renewal receiver as well for the alerts a renewal fixes
    expected = ["vmm-cert-renewal", found] if alert in rules.TRIGGER_ALERTS else [found]
    assert receivers == expected


def test_the_renewal_webhook() -> None:
    config = load(ALERTMANAGER_YML)
    receivers = {r["name"]: r for r in config["receivers"]}
    hook = receivers["vmm-cert-renewal"]["webhook_configs"]
    assert len(hook) == 1
    assert hook[0]["url"] == "http://receiver:9869/alertmanager"
    assert hook[0]["send_resolved"] is True
    auth = hook[0]["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"].startswith("/run/secrets/")
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "vmm-cert-renewal")
    (matcher,) = route["matchers"]
    assert matcher.startswith('alertname=~"') and matcher.endswith('"')
    assert matcher[len('alertname=~"') : -1].split("|") == list(rules.TRIGGER_ALERTS)
    assert route["continue"] is True


def test_inhibit_rules_only_name_real_alerts() -> None:
    text = ALERTMANAGER_YML.read_text()
    for rule in load(ALERTMANAGER_YML)["inhibit_rules"]:
        # per host, or per cohort for the one alert that is about a cohort
        cohort = 'alertname="VMMCertificateCohortAtRisk"' in rule["source_matchers"]
        assert rule["equal"] == (["alertname", "cohort"] if cohort else ["host"])
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if not matcher.startswith("alertname"):
                continue
            names = matcher.split("=", 1)[1].lstrip("~").strip('"').split("|")
            assert set(names) <= set(rules.ALERT_NAMES), names
    assert "VMMCertificate" in text


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on the deploy config, with short group timers (inhibition unchanged)."""
    config = load(ALERTMANAGER_YML)
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    for route in config["route"]["routes"]:
        route["group_wait"] = "1s"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
    process = start_alertmanager(tmp_path / "am.yml", tmp_path)
    try:
        yield process.url
    finally:
        process.stop()


@pytest.mark.e2e
def test_a_real_alertmanager_inhibits_per_host(alertmanager: str) -> None:
    severity = {
        "VMMCertificateExpiringSoon": "warning",
        "VMMCertificateExpiringCritical": "critical",
        "VMMCertificateExpired": "critical",
    }
    firing = {
        "a": [
            "VMMCertificateExpiringSoon",
            "VMMCertificateExpiringCritical",
            "VMMCertificateExpired",
        ],
        "b": ["VMMCertificateExpiringSoon", "VMMCertificateExpiringCritical"],
        "c": ["VMMCertificateExpiringSoon"],
        "d": ["VMMCertificateExpiringSoon", "VMMCertificateExpired"],
        "e": ["VMMCertificateExpiringCritical"],  # does not silence another host's alerts
    }
    now = datetime.now(UTC)
    alerts = [
        {
            "labels": {
                "alertname": name,
                "host": f"{host}.lab.example",
                "severity": severity[name],
            },
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for host, names in firing.items()
        for name in names
    ]
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200

    short = {
        "VMMCertificateExpiringSoon": "soon",
        "VMMCertificateExpiringCritical": "critical",
        "VMMCertificateExpired": "expired",
    }
    expected_muted = {("a", "soon"), ("a", "critical"), ("b", "soon"), ("d", "soon")}
    muted: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=5) as resp:
            got = json.load(resp)
        assert len(got) == len(alerts)
        muted = {
            (a["labels"]["host"].split(".")[0], short[a["labels"]["alertname"]])
            for a in got
            if a["status"]["inhibitedBy"]
        }
        if muted == expected_muted:
            break
        time.sleep(0.2)
    assert muted == expected_muted


# ---- docker-compose.yml ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load(COMPOSE_YML)


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of every volume entry of a service."""
    found = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found.append((source, target))
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for source, mount in sorted(mounts(service), key=lambda m: -len(m[1])):
        if source.startswith((".", "/")) and (
            target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents
        ):
            return (DEPLOY / source / target.relative_to(mount)).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted")


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert {"lab", "exporter", "receiver", "prometheus", "alertmanager", "grafana"} <= set(services)


def test_compose_references_existing_files() -> None:
    data = compose()
    checked = 0
    for name, service in data["services"].items():
        for source, _ in mounts(service):
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
                checked += 1
            else:
                assert source in data["volumes"], f"{name}: unknown volume {source}"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
            assert (context / "pyproject.toml").is_file()
    for secret in data["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file()
    assert checked >= 6


def test_compose_paths_line_up_inside_the_containers() -> None:
    services = compose()["services"]
    # Prometheus: its config, and the rules relative to it
    prometheus = services["prometheus"]
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_in_container = PurePosixPath(config_arg.split("=", 1)[1])
    assert host_path(prometheus, str(config_in_container)) == PROMETHEUS_YML
    for rule_file in load(PROMETHEUS_YML)["rule_files"]:
        in_container = PurePosixPath(*_normalise(config_in_container.parent / rule_file).parts)
        assert host_path(prometheus, str(in_container)) == (
            ROOT / "alerts" / "vmm-certificates.rules.yml"
        )
    # Alertmanager: its config, and the secret its webhook reads
    alertmanager = services["alertmanager"]
    config_arg = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    assert host_path(alertmanager, config_arg.split("=", 1)[1]) == ALERTMANAGER_YML
    credentials = load(ALERTMANAGER_YML)["receivers"][-1]["webhook_configs"][0]["http_config"]
    secret = PurePosixPath(credentials["authorization"]["credentials_file"])
    assert secret.parent == PurePosixPath("/run/secrets")
    assert secret.name in alertmanager["secrets"]
    # Grafana: provisioning, the provider's path, the datasource, the home dashboard
    grafana = services["grafana"]
    assert host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yaml") == (
        ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    )
    provider = load(ROOT / "grafana" / "provisioning" / "dashboards" / "vmm-certificates.yaml")
    assert host_path(grafana, "/etc/grafana/provisioning/dashboards/vmm-certificates.yaml")
    path = provider["providers"][0]["options"]["path"]
    assert host_path(grafana, f"{path}/vmm-certificates.json") == (
        ROOT / "grafana" / "dashboards" / "vmm-certificates.json"
    )
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()
    source = load(ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (ds,) = source["datasources"]
    assert ds["uid"] == dashboard.DATASOURCE_UID
    assert ds["url"] == "http://prometheus:9090"
    assert "9090:9090" in prometheus["ports"]


def _normalise(path: PurePosixPath) -> PurePosixPath:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts)


def test_compose_runs_the_lab_on_loopback_and_the_exporter_beside_it() -> None:
    services = compose()["services"]
    lab, exporter = services["lab"], services["exporter"]
    listen = lab["command"][lab["command"].index("--listen") + 1]
    assert listen.startswith("127.0.0.1:")  # the lab refuses anything else
    assert exporter["network_mode"] == "service:lab"
    assert "exporter" in lab["networks"]["default"]["aliases"]  # Prometheus' target
    assert "9868:9868" in lab["ports"]
    # the exporter reads the configuration the lab writes, from the volume they share
    written = lab["command"][lab["command"].index("--write-config") + 1]
    read = exporter["command"][exporter["command"].index("--config") + 1]
    assert written == read
    (lab_volume,) = [s for s, t in mounts(lab) if PurePosixPath(written).is_relative_to(t)]
    (exp_volume,) = [s for s, t in mounts(exporter) if PurePosixPath(read).is_relative_to(t)]
    assert lab_volume == exp_volume
    assert exporter["depends_on"]["lab"]["condition"] == "service_healthy"
    assert exporter["command"][exporter["command"].index("--web.listen-address") + 1] == (
        "0.0.0.0:9868"
    )


# ---- receiver.yml and the receiver service -----------------------------------------------


def test_prometheus_scrapes_the_receiver() -> None:
    jobs = {j["job_name"]: j for j in load(PROMETHEUS_YML)["scrape_configs"]}
    assert jobs["vmm-cert-receiver"]["static_configs"][0]["targets"] == ["receiver:9869"]


def test_compose_runs_the_receiver_beside_the_lab() -> None:
    services = compose()["services"]
    lab, receiver = services["lab"], services["receiver"]
    # the product's image; the lab's is the Dockerfile's lab target, built on top of it
    assert receiver["image"] == services["exporter"]["image"] != lab["image"]
    assert lab["build"]["target"] == "lab" and "target" not in services["exporter"]["build"]
    command = receiver["command"]
    assert command[0] == "receiver"
    assert host_path(receiver, command[command.index("--config") + 1]) == RECEIVER_YML
    # in the lab's network namespace: the lab's WinRM on loopback, the alias for Alertmanager
    assert receiver["network_mode"] == "service:lab"
    assert receiver["depends_on"]["lab"]["condition"] == "service_healthy"
    assert "receiver" in lab["networks"]["default"]["aliases"]
    assert "127.0.0.1:9869:9869" in lab["ports"]
    config = load(RECEIVER_YML)
    listen = lab["command"][lab["command"].index("--listen") + 1]
    assert urlsplit(config["winrm"]["endpoint"]).netloc == listen
    section = config["receiver"]
    assert section["mode"] == "dry-run"
    assert section["listen_address"] == ":9869"  # every interface of the shared namespace
    hooks = {r["name"]: r for r in load(ALERTMANAGER_YML)["receivers"]}
    url = urlsplit(hooks["vmm-cert-renewal"]["webhook_configs"][0]["url"])
    assert (url.hostname, url.port, url.path) == ("receiver", 9869, "/alertmanager")
    # its own health check: the image's probes 9868, the exporter's port in this namespace
    assert "http://127.0.0.1:9869/-/healthy" in " ".join(receiver["healthcheck"]["test"])


def test_the_receiver_shares_the_token_with_alertmanager_and_has_its_own_password() -> None:
    data = compose()
    services = data["services"]
    receiver, alertmanager, exporter = (
        services["receiver"],
        services["alertmanager"],
        services["exporter"],
    )
    config = load(RECEIVER_YML)
    webhook = next(
        r for r in load(ALERTMANAGER_YML)["receivers"] if r["name"] == "vmm-cert-renewal"
    )
    sent = webhook["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
    token = PurePosixPath(config["receiver"]["bearer_token_file"])
    assert token == PurePosixPath(sent)
    assert token.parent == PurePosixPath("/run/secrets")
    assert token.name in receiver["secrets"] and token.name in alertmanager["secrets"]
    password = PurePosixPath(config["winrm"]["password_file"])
    assert password.parent == PurePosixPath("/run/secrets")
    assert password.name in receiver["secrets"]
    assert password.name not in alertmanager["secrets"]
    assert "secrets" not in exporter  # the exporter reads the lab's file, not the receiver's
    # the journal lives on a named volume of its own
    journal = PurePosixPath(config["receiver"]["journal"])
    (volume,) = [s for s, t in mounts(receiver) if PurePosixPath(t) == journal.parent]
    assert volume in data["volumes"]
    assert all(
        volume != s
        for other in services.values()
        if other is not receiver
        for s, _ in mounts(other)
    )


def receiver_config_with_stand_ins(tmp_path: Path) -> Path:
    """deploy/receiver.yml with what exists only in its container made under ``tmp_path``:
    the secrets compose mounts at /run/secrets/NAME (copied from their files) and the
    journal's volume (an empty directory)."""
    data = compose()
    receiver = data["services"]["receiver"]
    text = RECEIVER_YML.read_text()
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir()
    for name in receiver["secrets"]:
        target = secrets_dir / name
        shutil.copyfile(DEPLOY / data["secrets"][name]["file"], target)
        target.chmod(0o600)
        assert f"/run/secrets/{name}" in text, name
        text = text.replace(f"/run/secrets/{name}", str(target))
    for source, mount in mounts(receiver):
        if source in data["volumes"]:
            (tmp_path / source).mkdir()
            assert f"{mount}/" in text, mount
            text = text.replace(f"{mount}/", f"{tmp_path / source}/")
    path = tmp_path / "receiver.yml"
    path.write_text(text)
    written = load(path)
    for value in (
        written["winrm"]["password_file"],
        written["receiver"]["bearer_token_file"],
        written["receiver"]["journal"],
    ):
        assert Path(value).is_relative_to(tmp_path), value
    return path


@pytest.mark.e2e
def test_check_config_accepts_the_receiver_config(
    tmp_path: Path, exporter_command: ExporterCommand
) -> None:
    path = receiver_config_with_stand_ins(tmp_path)
    res = exporter_command.run("check-config", "--config", str(path), cwd=tmp_path)
    printed = res.stdout + res.stderr
    assert res.returncode == 0, printed
    assert "1 VMM servers" in printed and "receiver in dry-run mode" in printed
    receiver = load_config(path).receiver
    assert receiver is not None and not receiver.execute
    assert receiver.bearer_token is not None


@pytest.mark.e2e
def test_check_config_refuses_the_receiver_config_without_its_token(
    tmp_path: Path, exporter_command: ExporterCommand
) -> None:
    path = receiver_config_with_stand_ins(tmp_path)
    (tmp_path / "run-secrets" / "receiver-token").unlink()
    res = exporter_command.run("check-config", "--config", str(path), cwd=tmp_path)
    assert res.returncode == 1
    assert "receiver.bearer_token_file" in res.stdout + res.stderr


def test_the_receiver_config_starts_a_receiver_against_the_demo_lab(tmp_path: Path) -> None:
    path = receiver_config_with_stand_ins(tmp_path)
    config = load(RECEIVER_YML)
    with start_lab() as lab:  # the compose lab's scenario: demo
        # the demo lab's one account, its Run As account and its VMM server
        assert config["winrm"]["username"] == lab.username
        assert (tmp_path / "run-secrets" / "receiver-winrm-password").read_text().strip() == (
            lab.account.password
        )
        assert config["receiver"]["run_as_account"] == lab_run_as_account(lab)
        assert [s["host"] for s in config["vmm_servers"]] == lab.vmm_servers
        # as in the container, but the lab and the receiver on free ports
        text = path.read_text()
        assert config["winrm"]["endpoint"] in text
        path.write_text(text.replace(config["winrm"]["endpoint"], lab.endpoint_template))
        receiver = start_receiver(load_config(path), listen_address="127.0.0.1:0")
        try:
            assert receiver.inventory.loaded.wait(30)
            token = (tmp_path / "run-secrets" / "receiver-token").read_text().strip()
            request = urllib.request.Request(
                f"{receiver.url}/api/status", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                status = json.load(resp)
        finally:
            receiver.stop()
        assert status["mode"] == "dry-run"
        assert status["inventory"]["discovery_errors"] == {}
        assert status["inventory"]["computers"] == len(lab.model.list_computers())
