"""End to end: lab → exporter → real Prometheus (shipped rules) → real Alertmanager → webhook.

The shipped rules and the shipped Alertmanager routes and inhibitions are used as they are;
only timings shrink (``for:`` durations, scrape and group intervals) so the run takes well
under two minutes. The dashboard's expressions are run against the Prometheus of the closed
loop (tests/test_closed_loop.py), where the renewal receiver's metrics exist too.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmm_cert_exporter.config import load_config
from vmm_cert_exporter.rules import FOR_DURATIONS
from vmm_cert_exporter.serve import Exporter, start_exporter
from vmm_cert_lab.demo import prometheus_config
from vmm_cert_lab.fleet.runner import RunningLab, start_lab
from vmm_cert_lab.fleet.scenario import LAB_DOMAIN, lab_host
from vmm_cert_lab.processes import Process, wait_until
from vmm_cert_lab.promstack import start_alertmanager, start_prometheus

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "e2e-bearer-token"


@dataclass
class Capture:
    """A webhook receiver that records what Alertmanager posts (and checks its bearer auth)."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    unauthorised: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, status: str) -> dict[str, set[str]]:
        """alertname -> hosts, over every notification with alerts of ``status``."""
        out: dict[str, set[str]] = {}
        with self.lock:
            for note in self.notifications:
                for alert in note["alerts"]:
                    if alert["status"] == status:
                        labels = alert["labels"]
                        out.setdefault(labels["alertname"], set()).add(labels.get("host", ""))
        return out


def _serve_capture(capture: Capture) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                with capture.lock:
                    capture.unauthorised += 1
                self.send_response(401)
            else:
                with capture.lock:
                    capture.notifications.append(json.loads(body))
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _alertmanager_config(work: Path, webhook_url: str) -> Path:
    """The shipped alertmanager.yml with every receiver pointed at the capture webhook."""
    data = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    token = work / "token"
    token.write_text(TOKEN)

    def fast(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "1s")):
            if key in route or route is data["route"]:
                route[key] = value
        for child in route.get("routes", []):
            fast(child)

    fast(data["route"])
    data["route"]["repeat_interval"] = "1h"
    for receiver in data["receivers"]:
        receiver.pop("webhook_configs", None)
        receiver["webhook_configs"] = [
            {
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {
                    "authorization": {"type": "Bearer", "credentials_file": str(token)}
                },
            }
        ]
    path = work / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Stack:
    lab: RunningLab
    exporter: Exporter
    prometheus: Process
    alertmanager: Process
    capture: Capture


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("alerting")
    capture = Capture()
    webhook = _serve_capture(capture)
    with start_lab(scenario="demo", state_dir=work / "lab") as lab:
        config_path = lab.write_config(work / "exporter.yml")
        data = yaml.safe_load(config_path.read_text())
        data["collection"]["interval"] = "10s"  # the shortest the exporter accepts
        config_path.write_text(yaml.safe_dump(data))
        exporter = start_exporter(load_config(config_path), "127.0.0.1:0")
        processes: list[Process] = []
        try:
            assert exporter.refresher.wait_first(timeout=60)
            am_config = _alertmanager_config(
                work, f"http://127.0.0.1:{webhook.server_address[1]}/hook"
            )
            alertmanager = start_alertmanager(am_config, work)
            processes.append(alertmanager)
            # every alert after 3s of truth, except ExporterDown: Prometheus needs ~5-7s to
            # discover its first target, during which up is absent
            fast = {name: "3s" for name in FOR_DURATIONS}
            fast["VMMCertificateExporterDown"] = "1m"
            prom_cfg = prometheus_config(
                work,
                exporter.url.removeprefix("http://"),
                alertmanager.url.removeprefix("http://"),
                for_durations=fast,
                scrape_interval="1s",
            )
            prometheus = start_prometheus(prom_cfg, work)
            processes.append(prometheus)
            yield Stack(lab, exporter, prometheus, alertmanager, capture)
        finally:
            for process in reversed(processes):
                process.stop()
            exporter.stop()
            webhook.shutdown()


EXPECTED_FIRING = {
    "VMMCertificateExpired": {lab_host("hv37")},
    "VMMCertificateExpiringCritical": {lab_host("hv36")},
    # hv36 is inhibited here by ExpiringCritical (the shipped inhibit_rules)
    "VMMCertificateExpiringSoon": {*(lab_host(f"hv{n}") for n in range(31, 36)), lab_host("vmm01")},
    "VMMCertificateMissing": {lab_host("hv38")},
    "VMMCertificateNotTrusted": {lab_host("hv39")},
    "VMMCertificateDuplicate": {lab_host("hv41")},
    "VMMCertificateCollectionFailing": {lab_host("hv40")},
    # not VMMCertificateExporterStale: a refresh finishes every 10 s (it needs 30 s without)
}


def test_alerts_fire_for_exactly_the_expected_hosts_then_resolve(stack: Stack) -> None:
    capture = stack.capture
    wait_until(
        lambda: all(
            capture.alerts("firing").get(name, set()) >= hosts
            for name, hosts in EXPECTED_FIRING.items()
        ),
        lambda: f"the expected alerts; got {capture.alerts('firing')}",
        60,
        interval=0.5,
    )
    time.sleep(3)  # let anything unexpected arrive too
    assert capture.alerts("firing") == EXPECTED_FIRING
    assert capture.unauthorised == 0
    note = capture.notifications[0]
    assert note["version"] == "4"
    alert = note["alerts"][0]
    assert alert["annotations"]["runbook_url"].endswith(alert["labels"]["alertname"] + ".md")
    assert alert["labels"]["severity"] in ("warning", "critical")

    # renew hv36 through the lab's control API: its alert must resolve by itself
    request = urllib.request.Request(
        f"{stack.lab.control_url}/computers/hv36.{LAB_DOMAIN}/renew", method="POST", data=b"{}"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    wait_until(
        lambda: (
            lab_host("hv36")
            in capture.alerts("resolved").get("VMMCertificateExpiringCritical", set())
        ),
        "the resolved notification for hv36",
        45,
        interval=0.5,
    )
    assert "VMMCertificateExporterDown" not in capture.alerts("firing")
